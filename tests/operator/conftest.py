"""The operator test harness; defined in operator_support so tests can import its helpers."""

from operator_support import *  # noqa: F403
