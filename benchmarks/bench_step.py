"""Where one demo GRPO step's time goes: generate, verify, learn, weight sync, whole step; and start-up.

For each recipe (default: ``recipes/demo/fixed.yaml`` and ``recipes/demo/token.yaml``), in a fresh Ray cluster
started by the trainer, this script builds :class:`rlvr_temp.driver.trainer.Trainer` (timed: the start-up a user
waits for -- config, tokenizer, verifier pool, Ray, one rollout actor with its vLLM engine, the learner actor
with its NF4 model, the first weight sync), then calls ``train_step()`` ``--steps`` times and reports the median
of each phase's ``time/*`` metric over steps 1..N-1 (step 0 is a warm-up). Runs go to a temporary folder, with
``logging.progress=false logging.tensorboard=false``; the cluster is shut down after each recipe.

    python -m benchmarks.bench_step                  # about 2-3 minutes on a 2-core CPU
    python -m benchmarks.bench_step --quick          # 3 steps per recipe
    python -m benchmarks.bench_step --recipes recipes/demo/mixture.yaml --steps 6
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_json

ROOT = Path(__file__).resolve().parents[1]

PHASES = ("generate", "verify", "learn", "sync", "step")
DEFAULT_RECIPES = ("recipes/demo/fixed.yaml", "recipes/demo/token.yaml")


def bench_recipe(recipe: str, steps: int, model: str | None = None) -> dict[str, Any]:
    """Start-up time and per-phase medians of one recipe (steps 1..steps-1)."""
    import ray

    from rlvr_temp.config.schema import load_config
    from rlvr_temp.driver.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="rlvr_bench_step_") as tmp:
        overrides = [
            f"trainer.total_steps={steps}",
            "logging.progress=false",
            "logging.tensorboard=false",
            f"trainer.run_dir={tmp}/run",
        ]
        if model:
            overrides.append(f"model.path={model}")
        cfg = load_config(ROOT / recipe, overrides)
        t0 = time.perf_counter()
        trainer = Trainer(cfg)
        startup = time.perf_counter() - t0
        metrics: list[dict[str, float]] = []
        try:
            for _ in range(steps):
                metrics.append(trainer.train_step())
        finally:
            trainer.close()
            ray.shutdown()
    timed = metrics[1:] if len(metrics) > 1 else metrics
    phases = {}
    for phase in PHASES:
        values = [m[f"time/{phase}"] for m in timed if f"time/{phase}" in m]
        phases[phase] = statistics.median(values) if values else float("nan")
    return {
        "recipe": recipe,
        "mode": cfg.temperature.mode,
        "startup_s": startup,
        "steps": steps,
        "timed_steps": len(timed),
        "phases_s": phases,
        "per_step": [{k: v for k, v in m.items() if k.startswith("time/")} for m in metrics],
        "groups_generated": statistics.median(m.get("train/groups_generated", float("nan")) for m in timed),
        "response_length_mean": statistics.median(m.get("response/length_mean", float("nan")) for m in timed),
        "skipped_updates": sum(int(m.get("train/skipped", 0)) for m in timed),
    }


def to_markdown(res: dict[str, Any]) -> str:
    rows = res["rows"]
    base = rows[0]
    head = "| phase | " + " | ".join(f"`{Path(r['recipe']).name}` (mode {r['mode']}) s" for r in rows)
    head += "".join(f" | {Path(r['recipe']).stem} / {Path(base['recipe']).stem}" for r in rows[1:]) + " |"
    sep = "|---|" + "---:|" * (2 * len(rows) - 1)
    lines = [head, sep]
    for phase in PHASES:
        cells = [f"{r['phases_s'][phase]:.3f}" for r in rows]
        cells += [f"{r['phases_s'][phase] / base['phases_s'][phase]:.2f}" for r in rows[1:]]
        lines.append(f"| {phase} (median of steps 1–{base['steps'] - 1}) | " + " | ".join(cells) + " |")
    cells = [f"{r['startup_s']:.1f}" for r in rows] + [f"{r['startup_s'] / base['startup_s']:.2f}" for r in rows[1:]]
    lines.append("| start-up (Trainer construction) | " + " | ".join(cells) + " |")
    cells = [f"{r['groups_generated']:.0f}" for r in rows] + ["" for _ in rows[1:]]
    lines.append("| groups generated per step (dynamic sampling) | " + " | ".join(cells) + " |")
    cells = [f"{r['response_length_mean']:.1f}" for r in rows] + ["" for _ in rows[1:]]
    lines.append("| mean response length (tokens) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES), help="recipe files (from the repo)")
    parser.add_argument("--steps", type=int, default=None, help="train steps per recipe (default 4; --quick 3)")
    parser.add_argument("--model", default=None, help="override model.path (default: the recipes' own, `tiny`)")
    parser.add_argument("--quick", action="store_true", help="3 steps per recipe")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    steps = args.steps or (3 if args.quick else 4)
    if steps < 2:
        parser.error("--steps must be >= 2 (step 0 is a warm-up)")
    res = {"steps": steps, "rows": [bench_recipe(r, steps, args.model) for r in args.recipes]}
    print(to_markdown(res))
    return write_json(args.json, res)


if __name__ == "__main__":
    raise SystemExit(main())
