"""The AGPOJob API: typed models, CRD generation and validation.

Imports neither torch nor kopf, so the CLI, the operator and the trainer can all use it.
"""

from agpo_api.models import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    AGPOJob,
    AGPOJobSpec,
    AGPOJobStatus,
    Condition,
)
from agpo_api.validation import (
    InvalidJobError,
    Problem,
    load_job,
    load_jobs,
    parse_job,
    validate_files,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "AGPOJob",
    "AGPOJobSpec",
    "AGPOJobStatus",
    "Condition",
    "InvalidJobError",
    "Problem",
    "load_job",
    "load_jobs",
    "parse_job",
    "validate_files",
]
