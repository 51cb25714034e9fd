"""Fixtures for every test; the shared helpers live in agpo_testlib (importable by name,
unlike conftest modules, several of which exist in this tree)."""

from agpo_testlib import *  # noqa: F403
