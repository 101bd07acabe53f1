"""`rlvr-temp demo` / `make demo`: build the tiny model if missing, train the four demo arms (fixed, token,
mixture, token+mixture) on the synthetic arithmetic task, then plot and tabulate them side by side."""

from __future__ import annotations

import time
from pathlib import Path

from rlvr_temp.compare import compare_runs
from rlvr_temp.config import load_config

ARMS = ("fixed", "token", "mixture", "token_mixture", "learned")
RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "demo"


def run_demo(out_dir: str | Path = "runs/demo", steps: int | None = None, arms: tuple[str, ...] = ARMS,
             extra_overrides: list[str] | None = None) -> dict[str, Path]:  # fmt: skip
    """Train each arm into ``out_dir/<arm>`` (resuming none: previous runs there are replaced), then compare."""
    import shutil

    import ray

    from rlvr_temp.tiny_model import ensure_tiny_model
    from rlvr_temp.trainer import train

    if not RECIPES.is_dir():
        raise FileNotFoundError(f"demo recipes not found at {RECIPES} (run the demo from a clone of the repository)")
    out = Path(out_dir)
    print(f"tiny model: {ensure_tiny_model()}")
    run_dirs = []
    t0 = time.perf_counter()
    try:
        for arm in arms:
            run_dir = out / arm
            if run_dir.exists():
                shutil.rmtree(run_dir)
            overrides = [f"trainer.run_dir={run_dir}", "trainer.resume=never", *(extra_overrides or [])]
            if steps is not None:
                overrides.append(f"trainer.total_steps={steps}")
            cfg = load_config(RECIPES / f"{arm}.yaml", overrides)
            print(f"== arm {arm}: {cfg.trainer.total_steps} steps, temperature.mode={cfg.temperature.mode}")
            run_dirs.append(train(cfg))
    finally:
        if ray.is_initialized():
            ray.shutdown()
    paths = compare_runs(run_dirs, out, smooth=3)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    print(f"plot:  {paths['plot']}")
    print(f"table: {paths['table']}")
    print(paths["table"].read_text())
    return paths
