"""benchmarks/bench_offpolicy.py: the two arms' configs differ only in ``trainer.off_policy_steps`` (the same work:
split layout, no dynamic sampling), and the report's medians and ratio come out right from synthetic metrics rows.
Nothing is trained here."""

from __future__ import annotations

from typing import Any

from benchmarks import bench_offpolicy, run_all


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_the_arms_differ_only_in_off_policy_steps(tmp_path):
    cfgs = {arm: bench_offpolicy.arm_config(arm, 6, tmp_path / "run") for arm in bench_offpolicy.ARMS}
    sync, off = (_flat(cfgs[a].to_dict()) for a in ("synchronous", "off-policy"))
    assert sync.keys() == off.keys()
    assert {k for k in sync if sync[k] != off[k]} == {"trainer.off_policy_steps"}
    assert (sync["trainer.off_policy_steps"], off["trainer.off_policy_steps"]) == (0, 1)
    for cfg in cfgs.values():  # what makes the work equal, and the overlap possible
        assert cfg.resources.layout == "split" and not cfg.algorithm.dynamic_sampling
        assert cfg.trainer.total_steps == 6 and cfg.eval.every == 0


def _run(arm: str, steps: list[float], learn: float, ahead: float | None, length: float) -> dict[str, Any]:
    rows = []
    for i, t in enumerate(steps):
        row = {"time/step": t, "time/generate": 0.5, "time/learn": learn, "time/sync": 0.1}
        row |= {"response/length_mean": length, "train/groups_generated": 16.0, "reward/mean": 0.5}
        row["train/staleness"] = float(arm == "off-policy" and i > 0)
        if ahead is not None and i < len(steps) - 1:
            row["time/collect_ahead"] = ahead
        rows.append(row)
    return {"arm": arm, "startup_s": 30.0, "group_size": 8, "correction": "tis", "overlapped": True, "rows": rows}


def test_report_formats_the_ratio_from_metrics_rows():
    # step 0 (warm) and the last step are left out of the medians: 9.0 and 0.1 would move them
    runs = [
        _run("synchronous", [9.0, 2.0, 2.2, 2.0, 0.1], 1.0, None, 20.0),
        _run("off-policy", [9.0, 1.6, 1.6, 1.8, 0.1], 1.2, 0.9, 20.0),
        _run("off-policy", [9.0, 1.6, 1.6, 1.6, 0.1], 1.2, 0.9, 22.0),
        _run("synchronous", [9.0, 2.0, 2.0, 2.0, 0.1], 1.0, None, 22.0),
    ]
    res = {"recipe": "recipes/demo/fixed.yaml", "steps": 5, "repeats": 2, "order": [r["arm"] for r in runs]}
    res["runs"] = runs
    s = bench_offpolicy.summarize(res)
    assert s["synchronous"]["step_s"] == 2.0 and s["off-policy"]["step_s"] == 1.6
    assert s["synchronous"]["steady_steps"] == 6 and s["synchronous"]["runs"] == 2
    assert s["synchronous"]["responses"] == s["off-policy"]["responses"] == 128
    assert s["synchronous"]["tokens"] == s["off-policy"]["tokens"] == 128 * 21.0
    assert abs(bench_offpolicy.step_ratio(res) - 0.8) < 1e-12
    table = bench_offpolicy.to_markdown(res)
    assert "| time per step: median of the steady steps (s) | 2.00 | 1.60 | 0.80× |" in table
    assert "| generated tokens per step (responses × mean length) | 2688 | 2688 | 1.00× |" in table
    assert "| 0.90 | — |" in table  # collect_ahead: the off-policy arm only
    section = run_all._script_section(
        bench_offpolicy, {"data": res, "wall_s": 200.0, "load_1min_start": 0.5, "load_1min_end": 1.5}
    )
    text = "\n".join(section)
    assert section[0] == bench_offpolicy.HEADING and "**0.80×** (faster)" in text
    assert "waited 0.30 s a step" in text and "compete for the same 2 CPU cores" in text and "_Ran 200 s" in text
    assert run_all._script_section(bench_offpolicy, None) == []
    failed = run_all._script_section(bench_offpolicy, {"rc": 1, "error": "boom", "wall_s": 1.0})
    assert "**bench_offpolicy failed** (exit code 1):" in failed
