"""Cost of the entropy window per decode step: rlvr_temp's exact windows vs re-sorting the window every step.

The token rule of Wu et al. (arXiv 2510.08892) needs, at every decode step, the threshold
``sorted(Q)[int((1 - p) * (len(Q) - 1))]`` of a window of the last 100,000 entropies (scope ``global``). The
authors re-sort the window at every step. This script pushes one step of entropies for a batch of 256
sequences and takes the threshold, at steady state (window full), and compares:

* ``rlvr_temp``: :class:`rlvr_temp.temperature.GlobalEntropyWindow` (ring buffer + sorted band, exact);
* ``sorted(Q)``: the authors' approach, a ``deque(maxlen=100_000)`` sorted with Python's ``sorted`` each step;
* ``np.sort``: a stronger sort-per-step baseline, a numpy ring buffer sorted with ``np.sort`` each step.

Rows: a stationary entropy trace and a drifting one (the distribution scale doubles over the run, which moves
the quantile and makes the band rebuild), and the per-sequence scope (256 sequences, each window holding
``--seq-fill`` entropies) against sorting every sequence's window each step. Every threshold of the references
is checked to equal rlvr_temp's exactly. Times are medians (over blocks of 100 steps for rlvr_temp's global
window, over single steps otherwise), single-threaded torch (as in a vLLM CPU worker bound to one core).

    python -m benchmarks.bench_window            # about 10 s on a 2-core CPU
    python -m benchmarks.bench_window --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import json
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from rlvr_temp.temperature import GlobalEntropyWindow, SequenceEntropyWindows, quantile_index

_BLOCK = 100  # steps per timed block; the reported figure is the median block (robust to a busy machine)


def _trace(rng: np.random.Generator, steps: int, batch: int, drift: bool) -> torch.Tensor:
    scale = np.linspace(1.0, 2.0, steps)[:, None] if drift else 1.0
    return torch.from_numpy((rng.gamma(2.0, size=(steps, batch)) * scale).astype(np.float32))


def bench_global(
    capacity: int, batch: int, steps: int, ref_steps: int, hot_fraction: float, drift: bool, seed: int
) -> dict:
    """µs per step (push ``batch`` values + threshold) at a full window, ours and 2 sort-per-step refs."""
    rng = np.random.default_rng(seed)
    fill = -(-capacity // batch)  # steps to fill the window
    data = _trace(rng, fill + steps, batch, drift)
    ours = GlobalEntropyWindow(capacity, hot_fraction)
    dq: deque = deque(maxlen=capacity)
    ring = np.zeros(capacity, dtype=np.float64)
    head = 0
    for i in range(fill):
        ours.push(data[i])
        ours.threshold()
        dq.extend(data[i].tolist())
        vals = data[i].double().numpy()
        idx = (head + np.arange(batch)) % capacity
        ring[idx] = vals
        head = (head + batch) % capacity
    rebuilds0 = ours.rebuilds
    k = quantile_index(capacity, hot_fraction)

    thresholds: list[float] = []
    block_times = []
    for start in range(fill, fill + steps, _BLOCK):
        stop = min(start + _BLOCK, fill + steps)
        t0 = time.perf_counter()
        for i in range(start, stop):
            ours.push(data[i])
            thresholds.append(ours.threshold())
        block_times.append((time.perf_counter() - t0) / (stop - start))
    t_ours = float(np.median(block_times))

    n_ref = min(ref_steps, steps)
    ref_py, times_py = [], []
    for i in range(fill, fill + n_ref):
        t0 = time.perf_counter()
        dq.extend(data[i].tolist())
        ref_py.append(sorted(dq)[k])
        times_py.append(time.perf_counter() - t0)
    t_py = float(np.median(times_py))

    ref_np, times_np = [], []
    for i in range(fill, fill + n_ref):
        t0 = time.perf_counter()
        vals = data[i].double().numpy()
        idx = (head + np.arange(batch)) % capacity
        ring[idx] = vals
        head = (head + batch) % capacity
        ref_np.append(float(np.sort(ring)[k]))
        times_np.append(time.perf_counter() - t0)
    t_np = float(np.median(times_np))

    exact = thresholds[:n_ref] == ref_py == ref_np
    return {
        "case": f"global, {batch} seqs, capacity {capacity:,}" + (", drifting" if drift else ", stationary"),
        "ours_us": t_ours * 1e6,
        "sorted_us": t_py * 1e6,
        "npsort_us": t_np * 1e6,
        "exact": exact,
        "rebuilds": ours.rebuilds - rebuilds0,
        "steps": steps,
    }


def bench_sequence(capacity: int, batch: int, fill: int, steps: int, ref_steps: int, seed: int) -> dict:
    """Per-sequence scope: ``batch`` sequences whose windows already hold ``fill`` entropies."""
    rng = np.random.default_rng(seed)
    data = _trace(rng, fill + steps, batch, drift=False)
    ids = list(range(batch))
    ours = SequenceEntropyWindows(capacity, 0.2, device="cpu")
    refs = [deque(maxlen=capacity) for _ in ids]
    for i in range(fill):
        ours.push(ids, data[i])
        for q, v in zip(refs, data[i].tolist(), strict=True):
            q.append(v)
    out = []
    times = []
    for i in range(fill, fill + steps):
        t0 = time.perf_counter()
        ours.push(ids, data[i])
        out.append(ours.thresholds(ids))
        times.append(time.perf_counter() - t0)
    t_ours = float(np.median(times))
    n_ref = min(ref_steps, steps)
    ref, times_py = [], []
    for i in range(fill, fill + n_ref):
        t0 = time.perf_counter()
        row = []
        for q, v in zip(refs, data[i].tolist(), strict=True):
            q.append(v)
            row.append(sorted(q)[quantile_index(len(q), 0.2)])
        ref.append(row)
        times_py.append(time.perf_counter() - t0)
    t_py = float(np.median(times_py))
    exact = all(o.tolist() == r for o, r in zip(out[:n_ref], ref, strict=True))
    return {
        "case": f"sequence, {batch} seqs, {fill:,}+ tokens each, capacity {capacity:,}",
        "ours_us": t_ours * 1e6,
        "sorted_us": t_py * 1e6,
        "npsort_us": float("nan"),
        "exact": exact,
        "rebuilds": 0,
        "steps": steps,
    }


def run(quick: bool = False, batch: int = 256, capacity: int = 100_000, seq_fill: int = 1024) -> list[dict]:
    """All benchmark rows (see the module docstring)."""
    torch.set_num_threads(1)
    steps, ref_steps = (300, 10) if quick else (3000, 60)
    rows = [
        bench_global(capacity, batch, steps, ref_steps, 0.2, drift=False, seed=0),
        bench_global(capacity, batch, steps, ref_steps, 0.2, drift=True, seed=1),
    ]
    seq_steps, seq_ref = (50, 3) if quick else (300, 10)
    rows.append(bench_sequence(2 * seq_fill, batch, seq_fill, seq_steps, seq_ref, seed=2))
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = [
        "| case | rlvr_temp µs/step | sorted(Q) µs/step | np.sort µs/step | speed-up vs sorted(Q) | exact |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        npsort = "–" if np.isnan(r["npsort_us"]) else f"{r['npsort_us']:,.0f}"
        lines.append(
            f"| {r['case']} | {r['ours_us']:,.1f} | {r['sorted_us']:,.0f} | {npsort} | "
            f"{r['sorted_us'] / r['ours_us']:,.0f}x | {'yes' if r['exact'] else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a few seconds)")
    parser.add_argument("--batch", type=int, default=256, help="sequences per decode step")
    parser.add_argument("--capacity", type=int, default=100_000, help="global window size (paper: 100,000)")
    parser.add_argument("--seq-fill", type=int, default=1024, help="entropies in each sequence window")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = run(args.quick, args.batch, args.capacity, args.seq_fill)
    print(to_markdown(rows))
    for r in rows:
        if r["rebuilds"]:
            print(f"\n{r['case']}: band rebuilt {r['rebuilds']} times in {r['steps']} steps")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["exact"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
