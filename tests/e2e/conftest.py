"""Fixtures that start real processes; defined in e2e_support so tests can import helpers."""

from e2e_support import *  # noqa: F403
