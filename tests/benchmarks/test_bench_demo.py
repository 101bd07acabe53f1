"""benchmarks/bench_demo.py splits the demo's wall time at its ``== arm`` lines with the arms' metrics."""

from __future__ import annotations

import json

from benchmarks import bench_demo


def _write_run(run, steps: list[float], evals: list[float], rewards: list[float]) -> None:
    run.mkdir(parents=True)
    rows = [{"step": i, "time/step": s, "reward/mean": r} for i, (s, r) in enumerate(zip(steps, rewards))]
    rows += [{"step": len(steps), "time/eval": e} for e in evals]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_breakdown_splits_the_wall_time_by_arm(tmp_path):
    _write_run(tmp_path / "fixed", [2.0] * 6, [3.0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.9])
    _write_run(tmp_path / "token", [1.0] * 5, [], [0.5] * 5)
    lines = [
        (1.0, "tiny model: /x"),
        (4.0, "== arm fixed: 6 steps, temperature.mode=fixed"),
        (40.0, "== arm fixed done in 36 s"),
        (41.0, "== arm token: 5 steps, temperature.mode=token"),
        (51.0, "== arm token done in 10 s"),
        (60.0, "demo finished in 60 s"),
    ]
    res = bench_demo.breakdown(lines, 62.0, tmp_path)
    assert res["before_first_arm_s"] == 4.0
    assert res["compare_s"] == 62.0 - 51.0
    fixed, token = res["arms"]["fixed"], res["arms"]["token"]
    assert (fixed["wall_s"], fixed["steps_s"], fixed["eval_s"], fixed["rest_s"]) == (36.0, 12.0, 3.0, 21.0)
    assert (token["wall_s"], token["steps_s"], token["eval_s"], token["rest_s"]) == (10.0, 5.0, 0.0, 5.0)
    assert fixed["n_steps"] == 6 and fixed["step_median_s"] == 2.0
    assert abs(fixed["reward_first5"] - 0.3) < 1e-12 and abs(fixed["reward_last5"] - 0.46) < 1e-12

    res |= {"wall_s": 62.0, "steps": None, "model_build_s": 0.0, "load_mean": 1.0, "load_max": 2.0}
    table = bench_demo.to_markdown(res)
    assert "| arm `fixed` (6 steps, median 2.00 s/step) — with Ray and the shared vLLM engine's start | 36.0 |" in table
    assert "| **total** | **62.0** |" in table and "0.30 → 0.46" in table
