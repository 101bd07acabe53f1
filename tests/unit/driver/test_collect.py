"""driver/collect.py without actors: when off-policy pipelining runs, and the step's sampling settings under a
temperature controller."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from rlvr_temp.config.schema import load_config
from rlvr_temp.driver.collect import overlaps, sampling
from rlvr_temp.temperature import make_strategy
from rlvr_temp.temperature.control import make_controller


@pytest.mark.parametrize(
    "steps, layout, expected, warned",
    [
        (0, "split", False, False),
        (1, "split", True, False),
        (1, "colocated", False, True),
        (0, "colocated", False, False),
    ],
)
def test_off_policy_only_in_the_split_layout(caplog, steps, layout, expected, warned):
    cfg = load_config("recipes/demo/fixed.yaml", [f"trainer.off_policy_steps={steps}", f"resources.layout={layout}"])
    with caplog.at_level(logging.WARNING, logger="rlvr_temp.driver.collect"):
        assert overlaps(cfg) is expected
    lines = [r.getMessage() for r in caplog.records]
    assert (len(lines) == 1 and "runs synchronously" in lines[0] and "\n" not in lines[0]) is warned
    assert warned or not lines


def _trainer(recipe: str, *overrides: str) -> SimpleNamespace:
    cfg = load_config(recipe, list(overrides))
    return SimpleNamespace(
        cfg=cfg, strategy=make_strategy(cfg.temperature), controller=make_controller(cfg.temperature)
    )


def test_sampling_uses_the_schedule_or_the_controllers_knob():
    plain = _trainer("recipes/demo/fixed.yaml", "temperature.schedule.kind=linear", "temperature.schedule.end=1.4")
    assert sampling(plain, 0) == (1.0, plain.strategy) and sampling(plain, 300)[0] == pytest.approx(1.4)
    base = _trainer("recipes/demo/fixed.yaml", "temperature.control.target=entropy")
    base.controller.knob = 1.27
    assert sampling(base, 5) == (1.27, base.strategy)  # the knob is the step's base temperature
    hot = _trainer("recipes/demo/token.yaml", "temperature.control.target=entropy", "temperature.control.knob=t_high")
    hot.controller.knob = 1.9
    t, strategy = sampling(hot, 0)
    assert t == hot.cfg.temperature.base and strategy.request_spec(t)["token_rule"]["t_high"] == 1.9
    assert hot.cfg.temperature.token.t_high != 1.9  # the run's config is not changed
