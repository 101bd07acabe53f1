"""Compare runs side by side: PNG plots of their metrics against step and a markdown table.

Works on finished runs and on runs still in progress (it reads ``metrics.jsonl`` as it is), on runs of
different lengths, and names each run by ``trainer.name``, else by the config keys in which it differs from
the others, else by its directory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from rlvr_temp.metrics import read_metrics
from rlvr_temp.utils import flatten

DEFAULT_METRICS = (
    "reward/mean",
    "acc/mean",
    "rollout/hot_token_share",
    "rollout/entropy_mean",
    "response/length_mean",
    "logprob/mismatch_mean",
)
_SAFE_DIFF_SKIP = ("trainer.run_dir", "trainer.name", "trainer.resume", "logging.", "checkpoint.")


def load_run(path: str | Path) -> dict[str, Any]:
    """A run's metrics rows and resolved config. Raises ``FileNotFoundError`` with a clear message."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run directory")
    rows = read_metrics(path)
    if not rows:
        raise FileNotFoundError(f"{path}: metrics.jsonl is empty (no step finished yet)")
    cfg_file = path / "config.yaml"
    cfg = yaml.safe_load(cfg_file.read_text()) if cfg_file.is_file() else {}
    return {"path": path, "rows": rows, "config": flatten(cfg or {})}


def config_differences(runs: list[dict[str, Any]]) -> list[str]:
    """Config keys whose values differ between the runs (run directory and logging excluded)."""
    keys = sorted(set().union(*(r["config"] for r in runs)))
    diff = []
    for k in keys:
        if k.startswith(_SAFE_DIFF_SKIP):
            continue
        values = {repr(r["config"].get(k)) for r in runs}
        if len(values) > 1:
            diff.append(k)
    return diff


def run_labels(runs: list[dict[str, Any]]) -> list[str]:
    diff = config_differences(runs)
    labels = []
    for r in runs:
        name = r["config"].get("trainer.name")
        if not name and diff and len(runs) > 1:
            name = ", ".join(f"{k.split('.')[-1]}={r['config'].get(k)}" for k in diff[:3])
        labels.append(name or r["path"].name)
    return labels


def _series(rows: list[dict[str, Any]], metric: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in rows:
        v = row.get(metric)
        if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
            xs.append(int(row["step"]))
            ys.append(float(v))
    return xs, ys


def _smooth(ys: list[float], window: int) -> list[float]:
    if window <= 1:
        return ys
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def compare_runs(
    run_dirs: list[str | Path],
    out_dir: str | Path,
    *,
    metrics: list[str] | None = None,
    smooth: int = 1,
    last_k: int = 5,
) -> dict[str, Path]:
    """Write ``compare.png`` (one panel per metric) and ``summary.md``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load_run(p) for p in run_dirs]
    labels = run_labels(runs)
    wanted = list(metrics or DEFAULT_METRICS)
    keys = {k for r in runs for row in r["rows"] for k in row}
    if not metrics:  # periodic evaluation curves, when the runs have them
        wanted += sorted(k for k in keys if k.startswith("eval/") and ("/avg@" in k or "/pass@1" in k))
    per_t = sorted(k for k in keys if k.startswith("acc/T="))
    present = [m for m in wanted if any(_series(r["rows"], m)[0] for r in runs)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    panels = present + (["acc per rollout temperature"] if per_t else [])
    ncols = min(3, len(panels)) or 1
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False)
    for ax, metric in zip(axes.flat, panels):
        if metric == "acc per rollout temperature":
            temps = [float(k.split("=", 1)[1]) for k in per_t]
            lo, hi = min(temps), max(temps)
            styles = ["-", "--", ":", "-."]
            for r_i, (run, label) in enumerate(zip(runs, labels)):
                for k, t in zip(per_t, temps):
                    xs, ys = _series(run["rows"], k)
                    if xs:
                        colour = plt.cm.coolwarm(0.5 if hi == lo else (t - lo) / (hi - lo))
                        style = styles[r_i % len(styles)]
                        ax.plot(xs, _smooth(ys, smooth), label=f"{label} {k[4:]}", lw=1.2, color=colour, ls=style)
        else:
            for run, label in zip(runs, labels):
                xs, ys = _series(run["rows"], metric)
                if xs:
                    ax.plot(xs, _smooth(ys, smooth), label=label, lw=1.6)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    png = out / "compare.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)

    heads = " | ".join(f"{m} first {last_k} | {m} last {last_k} | {m} best" for m in present[:3])
    lines = ["# Run comparison", "", f"| run | steps | wall time (s) | {heads} |"]
    lines.append("|" + "---|" * (3 + 3 * len(present[:3])))
    for run, label in zip(runs, labels):
        rows = run["rows"]
        wall = sum(float(r.get("time/step", 0.0)) for r in rows)
        cells = [label, str(len(rows)), f"{wall:.0f}"]
        for m in present[:3]:
            _, ys = _series(rows, m)
            if ys:
                first, last = sum(ys[:last_k]) / len(ys[:last_k]), sum(ys[-last_k:]) / len(ys[-last_k:])
                best = max(ys) if "mismatch" not in m else min(ys)
                cells += [f"{first:.3f}", f"{last:.3f}", f"{best:.3f}"]
            else:
                cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    diff = config_differences(runs)
    lines += ["", "Config differences: " + (", ".join(f"`{k}`" for k in diff) if diff else "none"), ""]
    for k in diff:
        lines.append(f"- `{k}`: " + ", ".join(f"{lab}={run['config'].get(k)!r}" for run, lab in zip(runs, labels)))
    md = out / "summary.md"
    md.write_text("\n".join(lines) + "\n")
    return {"plot": png, "table": md}
