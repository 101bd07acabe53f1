"""Reading recipe YAML: ``base:`` inheritance, dotted command-line overrides (OmegaConf's syntax), one-line
messages for schema errors, and where a run directory goes. Runs in the driver, where recipes load. Independent of
any schema: :mod:`rlvr_temp.config.schema` and the TGR recipe kind use it.

Run directories: ``trainer.run_dir`` is made absolute once, when the config is validated. A relative one joins
``$RLVR_TEMP_RUN_ROOT`` when that is set, else the working directory of the command that validates the config (the
driver, at launch). Inside a Ray job (``ray job submit --working-dir``) the working directory is a temporary copy
that Ray deletes later, so there a relative path without ``$RLVR_TEMP_RUN_ROOT`` is refused. Nothing here creates,
moves or checks directories.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, ValidationError


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigError(ValueError):
    """A recipe or override is invalid. The message is one line naming the file and the key path."""


def read_yaml(path: Path, chain: tuple[Path, ...]) -> Any:
    """Load one recipe file and its `base:` parents (merged parents first)."""
    if path in chain:
        raise ConfigError(f"{path}: base: inheritance cycle ({' -> '.join(str(p) for p in (*chain, path))})")
    if not path.is_file():
        where = f"{chain[-1]}: base: " if chain else ""
        raise ConfigError(f"{where}{path}: recipe file not found")
    try:
        node = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException) as exc:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
    if not OmegaConf.is_dict(node):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(node).__name__}")
    bases = node.pop("base", None)
    if bases is None:
        return node
    if isinstance(bases, str):
        bases = [bases]
    elif OmegaConf.is_list(bases):
        bases = list(bases)
    else:
        raise ConfigError(f"{path}: base: expected a path or a list of paths")
    merged = OmegaConf.create({})
    for base in bases:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base: expected a path, got {base!r}")
        parent = read_yaml((path.parent / base).resolve(), (*chain, path))
        merged = OmegaConf.merge(merged, parent)
    return OmegaConf.merge(merged, node)


def apply_overrides(node: Any, overrides: list[str]) -> Any:
    for item in overrides:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"override {item!r}: expected KEY.PATH=VALUE")
        try:
            node = OmegaConf.merge(node, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"override {item!r}: {' '.join(str(exc).split())}") from None
    return node


def format_validation(exc: ValidationError, origin: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
        msg = f"{msg} (got {err['input']!r})"
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{origin}: {loc}: {msg}{more}"


# ------------------------------------------------------------------------------------------------- run directories
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
