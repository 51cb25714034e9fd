"""The ``agpo`` command line: the one place that composes the API, the operator's renderer and
the trainer's local launcher (each imported only by the command that needs it)."""
