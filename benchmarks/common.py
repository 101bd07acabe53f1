"""What every benchmark script does at its end: write its results as JSON where ``--json`` says (run_all reads it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path | None, res: Any) -> int:
    """``res`` as indented JSON at ``path`` (folders made; nothing when ``path`` is None); the script's exit code."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2))
    return 0
