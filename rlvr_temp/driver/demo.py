"""`rlvr-temp demo` / `make demo`: build the tiny model if missing, train the six demo arms (fixed, token,
mixture, token+mixture, learned, controlled: a fixed temperature moved by a controller that holds the rollout
entropy) on the synthetic arithmetic task, then plot and tabulate them side by side.

Runs in the driver. The arms train one after another on one shared set of rollout workers, as a local sweep's runs
do (:func:`rlvr_temp.driver.local_runs.train_in_turn`): the engine is built for the arm whose strategy needs the most
of it (the `learned` arm's TTM head, which the other arms' requests do not use); each arm gets a fresh learner, its
first sync resets the engine's weights, and its windows are reset.

Left out: seeds (one run per arm; ``rlvr-temp sweep recipes/demo/*.yaml --seeds N`` runs several) and resuming (an
arm's earlier run directory is replaced).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rlvr_temp.config.schema import load_config
from rlvr_temp.data.tiny_model import ensure_tiny_model
from rlvr_temp.driver.local_runs import EXIT_INTERRUPTED, SweepRun, train_in_turn
from rlvr_temp.evaluation.compare import compare_runs

ARMS = ("fixed", "token", "mixture", "token_mixture", "learned", "controlled")
RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "demo"


def run_demo(
    out_dir: str | Path = "runs/demo",
    steps: int | None = None,
    arms: tuple[str, ...] = ARMS,
    extra_overrides: list[str] | None = None,
) -> dict[str, Path]:
    """Train each arm into ``out_dir/<arm>`` (resuming none: previous runs there are replaced), then compare."""
    if not RECIPES.is_dir():
        raise FileNotFoundError(f"demo recipes not found at {RECIPES} (run the demo from a clone of the repository)")
    out = Path(out_dir)
    print(f"tiny model: {ensure_tiny_model()}")
    t0 = time.perf_counter()
    runs = []
    for arm in arms:
        overrides = [f"trainer.run_dir={out / arm}", "trainer.resume=never", *(extra_overrides or [])]
        if steps is not None:
            overrides.append(f"trainer.total_steps={steps}")
        recipe = RECIPES / f"{arm}.yaml"
        cfg = load_config(recipe, overrides)
        runs.append(SweepRun(str(recipe), arm, cfg.trainer.seed, cfg.trainer.run_dir, cfg.hash(), cfg=cfg))

    started: dict[str, float] = {}

    def before(run: SweepRun) -> None:
        if Path(run.run_dir).exists():
            shutil.rmtree(run.run_dir)
        started[run.arm] = time.perf_counter()
        print(f"== arm {run.arm}: {run.cfg.trainer.total_steps} steps, temperature.mode={run.cfg.temperature.mode}")

    def after(run: SweepRun, error: Exception | None) -> None:
        if error is None:  # benchmarks/bench_demo.py splits the demo's time at these lines
            print(f"== arm {run.arm} done in {time.perf_counter() - started[run.arm]:.0f} s")

    if train_in_turn(runs, before, after, keep_going=False) == EXIT_INTERRUPTED:
        raise KeyboardInterrupt  # an arm stopped on a signal after its checkpoint: `rlvr-temp` exits 130
    paths = compare_runs([Path(r.run_dir) for r in runs], out, smooth=3)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    print(f"plot:  {paths['plot']}")
    print(f"table: {paths['table']}")
    print(paths["table"].read_text())
    return paths
