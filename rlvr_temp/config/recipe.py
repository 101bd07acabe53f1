"""Reading recipe YAML: ``base:`` inheritance, dotted command-line overrides (OmegaConf's syntax), and one-line
messages for schema errors. Independent of any schema: :mod:`rlvr_temp.config.schema` and the TGR recipe kind use it."""

from __future__ import annotations

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
