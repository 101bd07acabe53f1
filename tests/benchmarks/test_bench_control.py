"""benchmarks/bench_control.py without training: the arms differ only in temperature.control, and the acceptance
figures come out of metrics rows as the issue defines them."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import bench_control
from rlvr_temp.config.schema import load_config


def test_arms_differ_only_in_the_control_section(tmp_path):
    cfgs = {
        arm: load_config("recipes/demo/fixed.yaml", bench_control.overrides(arm, tmp_path / "run", 40)).to_dict()
        for arm in bench_control.ARMS
    }
    for arm, cfg in cfgs.items():
        assert cfg["trainer"]["total_steps"] == 40 and cfg["eval"]["every"] == 0
        a, b = dict(cfg), dict(cfgs["fixed"])
        ta, tb = dict(a.pop("temperature")), dict(b.pop("temperature"))
        ta.pop("control"), tb.pop("control")
        assert (a, ta) == (b, tb), arm
    assert cfgs["entropy"]["temperature"]["control"]["setpoint"] is None
    assert cfgs["informative"]["temperature"]["control"]["target"] == "informative_groups"


def _rows(entropies, shares, knobs=None, target=None):
    rows = []
    for k, (h, s) in enumerate(zip(entropies, shares)):
        row = {"step": k, "rollout/entropy_mean": h, "train/informative_share": s}
        if knobs is not None:
            row |= {"control/knob": knobs[k], "control/target": target}
        rows.append(row)
    return rows


def test_summary_figures_by_hand():
    n = 40
    fixed = _rows([0.1] + [0.08] * (n - 1), [0.7] * n)  # drifts by -20%
    entropy = _rows([0.1] + [0.095] * (n - 1), [0.7] * n, [1.0 + 0.01 * k for k in range(n)], 0.1)
    informative = _rows([0.1] * n, [0.75] * n, [1.0] * n, 0.8)
    res = bench_control.summarize({"fixed": fixed, "entropy": entropy, "informative": informative})
    assert res["fixed"]["rel"] == pytest.approx(-0.2) and res["entropy"]["rel"] == pytest.approx(-0.05)
    assert res["informative"]["abs"] == pytest.approx(-0.05) and res["pass"]
    assert res["entropy"]["knob_last"] == pytest.approx(1.39)
    text = "\n".join(bench_control.markdown_section(res | {"steps": n}, "context"))
    assert "-20.0%" in text and "-5.0%" in text and "holds" in text and "does **not**" not in text
    drifting = _rows([0.1] + [0.08] * (n - 1), [0.7] * n, [1.0] * n, 0.1)  # a controller that did not hold
    worse = bench_control.summarize({"fixed": fixed, "entropy": drifting, "informative": informative})
    assert not worse["pass"]


def test_the_section_names_its_script():
    assert Path(bench_control.__file__).name in bench_control.HEADING
