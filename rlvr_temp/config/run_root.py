"""Where a run directory goes: ``trainer.run_dir`` made absolute once, when the config is validated.

A relative ``trainer.run_dir`` joins ``$RLVR_TEMP_RUN_ROOT`` when that is set, else the working directory of the
command that validates the config (the driver, at launch). Inside a Ray job (``ray job submit --working-dir``) the
working directory is a temporary copy that Ray deletes later, so there a relative path without
``$RLVR_TEMP_RUN_ROOT`` is refused. Nothing here creates, moves or checks directories.
"""

from __future__ import annotations

import os
from pathlib import Path

#: relative ``trainer.run_dir`` paths are resolved against this directory when set (else the working directory)
RUN_ROOT_ENV = "RLVR_TEMP_RUN_ROOT"
#: set by Ray in the environment of a job's driver (not of its tasks and actors)
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def resolve_run_dir(path: str) -> str:
    """``path`` as an absolute, normalised run directory (``~`` expanded); ValueError for a relative one in a Ray job
    without ``$RLVR_TEMP_RUN_ROOT``."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return os.path.normpath(p)
    if os.environ.get(RUN_ROOT_ENV):
        return os.path.abspath(Path(os.environ[RUN_ROOT_ENV]).expanduser() / p)
    if os.environ.get(RAY_JOB_ENV):
        raise ValueError(
            f"relative run directory {path!r} in a Ray job would land in the job's temporary copy of its working "
            f"directory: set {RUN_ROOT_ENV} to a directory on shared storage (ray job submit --runtime-env-json "
            f'\'{{"env_vars": {{"{RUN_ROOT_ENV}": "/shared/rlvr"}}}}\') or give an absolute trainer.run_dir'
        )
    return os.path.abspath(p)
