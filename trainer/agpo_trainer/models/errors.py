"""The one error a model source raises for a user's mistake (kept apart so that every model
module can raise it without importing the others)."""

from __future__ import annotations


class ModelError(ValueError):
    """The model cannot be loaded (no such directory, not fetchable, a missing extra, a GGUF
    file transformers cannot convert); the message is one line that names the field and what
    to do."""
