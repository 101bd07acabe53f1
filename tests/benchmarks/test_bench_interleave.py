"""benchmarks/interleave.py: processes get one step at a time, in alternating order, and their results come back."""

from __future__ import annotations

import sys
from itertools import pairwise
from pathlib import Path

import pytest

from benchmarks.interleave import run_interleaved

# run from the repository root (run_interleaved's working directory), where `benchmarks` is a package
CHILD = """
import json, sys, time
from pathlib import Path
from benchmarks.interleave import Baton
folder, name, steps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
baton, spans = Baton(folder, name), []
for _ in range(steps):
    baton.wait_turn()
    t0 = time.monotonic(); time.sleep(0.05); spans.append((t0, time.monotonic()))
    baton.done()
(folder / f"{name}.json").write_text(json.dumps(spans))
"""


def test_steps_take_turns(tmp_path: Path) -> None:
    code = CHILD
    cmds = {n: [sys.executable, "-c", code, str(tmp_path), n, "3"] for n in ("a", "b")}
    out = run_interleaved(cmds, tmp_path, 3)
    spans = sorted((t0, t1, name) for name, s in out.items() for t0, t1 in s)
    assert [name for *_, name in spans] == ["a", "b", "b", "a", "a", "b"]  # order reversed every step
    assert all(prev[1] <= nxt[0] for prev, nxt in pairwise(spans))  # never two steps at once


def test_a_failing_process_stops_the_conductor(tmp_path: Path) -> None:
    cmds = {"ok": [sys.executable, "-c", CHILD, str(tmp_path), "ok", "2"]}
    cmds["bad"] = [sys.executable, "-c", "raise SystemExit(3)"]
    with pytest.raises(RuntimeError, match="gave up waiting"):
        run_interleaved(cmds, tmp_path, 2)
