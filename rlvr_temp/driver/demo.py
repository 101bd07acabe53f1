"""`rlvr-temp demo` / `make demo`: build the tiny model if missing, train the five demo arms (fixed, token,
mixture, token+mixture, learned) on the synthetic arithmetic task, then plot and tabulate them side by side."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import ray

from rlvr_temp.config.schema import load_config
from rlvr_temp.data.tiny_model import ensure_tiny_model
from rlvr_temp.driver.launch import init_ray, resolve_model, start_workers
from rlvr_temp.driver.trainer import Trainer
from rlvr_temp.evaluation.compare import compare_runs
from rlvr_temp.temperature import make_strategy

ARMS = ("fixed", "token", "mixture", "token_mixture", "learned")
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
    run_dirs = []
    t0 = time.perf_counter()
    configs = {}
    for arm in arms:
        overrides = [f"trainer.run_dir={out / arm}", "trainer.resume=never", *(extra_overrides or [])]
        if steps is not None:
            overrides.append(f"trainer.total_steps={steps}")
        configs[arm] = load_config(RECIPES / f"{arm}.yaml", overrides)
    try:
        # One engine serves every arm (the arms share model and engine settings). It is built for the arm whose
        # strategy needs the most of it (the `learned` arm's TTM head, which the other arms' requests do not use).
        # Each arm gets a fresh learner; its first sync resets the engine's weights, and its windows are reset.
        first = next(iter(configs.values()))
        init_ray(first)
        strategies = [make_strategy(c.temperature) for c in configs.values()]
        engine_cfg = next((c for c, s in zip(configs.values(), strategies) if s.engine_settings()), first)
        workers = start_workers(engine_cfg, resolve_model(first.model.path), make_strategy(engine_cfg.temperature))
        for arm, cfg in configs.items():
            if Path(cfg.trainer.run_dir).exists():
                shutil.rmtree(cfg.trainer.run_dir)
            print(f"== arm {arm}: {cfg.trainer.total_steps} steps, temperature.mode={cfg.temperature.mode}")
            trainer = Trainer(cfg, workers=workers)
            try:
                run_dirs.append(trainer.run())
            finally:
                trainer.close()
    finally:
        if ray.is_initialized():
            ray.shutdown()
    paths = compare_runs(run_dirs, out, smooth=3)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    print(f"plot:  {paths['plot']}")
    print(f"table: {paths['table']}")
    print(paths["table"].read_text())
    return paths
