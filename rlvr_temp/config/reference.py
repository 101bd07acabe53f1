"""The configuration reference (docs/configuration.md), generated from the recipe schema in
:mod:`rlvr_temp.config.schema` by `rlvr-temp config-docs` / `make docs`; a test keeps the page in sync."""

from __future__ import annotations

import json

from pydantic import BaseModel

from rlvr_temp.config.schema import RunConfig


def _describe(model: type[BaseModel], prefix: str, lines: list[str]) -> None:
    rows: list[str] = []
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            nested.append((f"{prefix}{name}", ann))
            continue
        default = field.get_default(call_default_factory=True)
        type_name = str(ann).replace("typing.", "").replace("<class '", "").replace("'>", "")
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | `{type_name}` | `{json.dumps(default)}` | {desc} |")
    if rows:
        lines += [
            f"## `{prefix.rstrip('.') or 'root'}`",
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
        ]
        lines += [*rows, ""]
    for name, sub in nested:
        _describe(sub, f"{name}.", lines)


def config_reference() -> str:
    """Markdown reference of every field, generated from the schema (docs/configuration.md)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `rlvr_temp/config/schema.py` by `rlvr-temp config-docs` (a test keeps it in sync).",
        "Recipes are YAML files with these sections; `base: parent.yaml` inherits, and command-line",
        "`key.path=value` overrides apply last. Unknown keys, wrong types and out-of-range values are errors.",
        "",
    ]
    _describe(RunConfig, "", lines)
    return "\n".join(lines).rstrip() + "\n"
