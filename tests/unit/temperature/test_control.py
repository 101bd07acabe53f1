"""temperature.control: the PI controller's step response, bounds, rate limit, anti-windup and exact resume; the
config's checks; the knobs reaching the strategy's requests."""

from __future__ import annotations

import io
import math

import pytest
import torch

from rlvr_temp.config.recipe import ConfigError
from rlvr_temp.config.sampling import TemperatureConfig
from rlvr_temp.config.schema import load_config
from rlvr_temp.temperature import make_strategy
from rlvr_temp.temperature.control import (
    CONTROLLERS,
    PIController,
    apply_knob,
    knob_bounds,
    make_controller,
    measure,
)

DEMO = "recipes/demo"


def controlled(**control) -> TemperatureConfig:
    mode = control.pop("mode", "fixed")
    return TemperatureConfig(mode=mode, control={"target": "entropy", **control})


def plant(gain: float = 0.1, offset: float = 0.0):
    """A noiseless process: the measured target is ``gain * knob + offset`` (entropy rising with temperature)."""
    return lambda u: gain * u + offset


def test_first_update_is_the_pi_law_by_hand():
    c = make_controller(controlled(setpoint=0.2, kp=0.5, ki=0.25, max_change=1.0))
    assert isinstance(c, PIController) and c.knob == 1.0 and (c.lo, c.hi) == (0.3, 2.0)
    e = (0.2 - 0.16) / 0.2  # relative error 0.2
    assert c.update(0.16) == pytest.approx(1.0 + 0.5 * e + 0.25 * e, abs=1e-12)
    m = c.metrics()
    assert m["control/error"] == pytest.approx(e) and m["control/p"] == pytest.approx(0.5 * e)
    assert m["control/i"] == pytest.approx(0.25 * e) and m["control/target"] == 0.2 and m["control/saturated"] == 0
    # a second error of -0.1: the integral holds 0.1, the proportional term the new error
    assert c.update(0.22) == pytest.approx(1.0 + 0.5 * -0.1 + 0.25 * (e - 0.1), abs=1e-12)


def test_step_response_settles_on_the_setpoint():
    """A setpoint step on a static plant: the integral removes the error; no overshoot beyond the rate limit."""
    c = make_controller(controlled(setpoint=0.13, kp=0.2, ki=0.5, max_change=0.05))
    y, knobs = plant(0.1), []
    for _ in range(60):
        knobs.append(c.update(y(c.knob)))
    assert y(c.knob) == pytest.approx(0.13, rel=1e-3)
    assert max(knobs) <= 1.3 + 0.05 + 1e-9  # at most one rate-limited step past the knob that holds it
    assert all(abs(b - a) <= 0.05 + 1e-12 for a, b in zip([1.0, *knobs], knobs))


def test_falling_plant_is_tracked_like_a_drifting_entropy():
    """The entropy falls as training sharpens the policy (gain drifting down): the knob rises to hold the target."""
    c = make_controller(controlled(setpoint=0.1, kp=0.2, ki=0.5))
    measured = []
    for k in range(60):
        y = plant(0.1 * (1 - 0.005 * k))(c.knob)
        measured.append(y)
        c.update(y)
    assert abs(sum(measured[-20:]) / 20 / 0.1 - 1) < 0.02 and c.knob > 1.1


def test_bounds_hold_and_the_integral_does_not_wind_up():
    """An unreachable setpoint: the knob sits at its bound, the integral stops growing there, and the knob leaves the
    bound on the first step whose error has the other sign (no windup to unwind)."""
    c = make_controller(controlled(setpoint=0.5, kp=0.2, ki=0.5, max=1.5, max_change=0.05))
    y = plant(0.1)
    for _ in range(100):
        c.update(y(c.knob))
        assert 0.3 <= c.knob <= 1.5
    assert c.knob == 1.5 and c.metrics()["control/saturated"] == 1.0
    frozen = c.integral
    for _ in range(20):
        c.update(y(c.knob))
    assert c.integral == frozen  # saturated in the error's direction: nothing integrated
    # the process changes so that the target is now exceeded: the very next knob is below the bound
    c.update(0.6)
    assert c.knob < 1.5


def test_rate_limit_and_lower_bound():
    c = make_controller(controlled(setpoint=0.1, kp=5.0, ki=0.0, max_change=0.03))
    assert c.update(1.0) == pytest.approx(0.97)  # entropy 10x the target: the rate limit, not -45
    for _ in range(100):
        c.update(1.0)
    assert c.knob == 0.3


def test_decreasing_target_inverts_the_action():
    c = make_controller(controlled(setpoint=0.1, kp=0.5, ki=0.0, increasing=False, max_change=1.0))
    assert c.update(0.05) < 1.0  # measured below target, target falls with the knob: lower the knob


def test_setpoint_none_holds_the_first_measurement_and_nan_holds_the_knob():
    c = make_controller(controlled(kp=0.5, ki=0.5))
    assert c.update(0.108) == 1.0 and c.setpoint == 0.108  # the first step only sets the target
    assert c.update(0.054) > 1.0
    knob, integral = c.knob, c.integral
    assert c.update(float("nan")) == knob and c.integral == integral
    assert math.isnan(c.metrics()["control/measured"])


def test_warmup_steps_measure_without_acting():
    c = make_controller(controlled(setpoint=0.2, warmup_steps=3))
    assert [c.update(0.1) for _ in range(3)] == [1.0, 1.0, 1.0]
    assert c.update(0.1) > 1.0


def test_exact_resume_through_a_checkpoint():
    """State saved mid-run and loaded into a fresh controller (through torch.save, as in checkpoints): the
    continuation is bitwise the uninterrupted run's."""
    cfg = controlled(kp=0.3, ki=0.4)
    gen = torch.Generator().manual_seed(0)
    seq = (0.1 + 0.02 * torch.randn(40, generator=gen, dtype=torch.float64)).tolist()
    full = make_controller(cfg)
    straight = [full.update(y) for y in seq]
    first = make_controller(cfg)
    for y in seq[:17]:
        first.update(y)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = make_controller(cfg)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    assert [resumed.update(y) for y in seq[17:]] == straight[17:]
    assert resumed.state_dict() == full.state_dict()


def test_no_target_no_controller_and_the_registry():
    assert make_controller(TemperatureConfig()) is None
    assert "pi" in CONTROLLERS
    with pytest.raises(ValueError, match="unknown temperature controller 'bang'"):
        TemperatureConfig(control={"target": "entropy", "controller": "bang"})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["temperature.control.knob=t_high"], "control.knob t_high needs temperature.mode"),
        (["temperature.control.target=hot_entropy"], "hot_entropy needs a token mode"),
        (["temperature.schedule.kind=linear", "temperature.schedule.end=1.4"], "replaces the schedule"),
        (["temperature.control.max=0.9"], "lies outside"),
        (["temperature.control.min=1.2", "temperature.control.max=1.1"], "must be <="),
        (["temperature.control.setpoint=0"], "greater than 0"),
    ],
)
def test_config_errors_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(f"{DEMO}/fixed.yaml", ["temperature.control.target=entropy", *overrides])
    assert "\n" not in str(err.value)


def test_knobs_reach_the_requests():
    """t_high, hot_fraction and the mixture spread land in the strategy the next step samples with."""
    tok = load_config(f"{DEMO}/token_mixture.yaml", ["temperature.control.target=entropy"]).temperature
    s = make_strategy(apply_knob(tok, "t_high", 1.9))
    assert s.request_spec(1.0)["token_rule"]["t_high"] == 1.9 and s.hot_bounds(tok.base)[1] == 1.9
    s = make_strategy(apply_knob(tok, "hot_fraction", 0.35))
    assert s.request_spec(1.0)["token_rule"]["hot_fraction"] == 0.35
    wide = make_strategy(apply_knob(tok, "mixture_spread", 0.2)).group_temperatures(1.0, 8)
    narrow = make_strategy(tok).group_temperatures(1.0, 8)
    assert max(wide) - min(wide) == pytest.approx(2 * (max(narrow) - min(narrow)))
    assert apply_knob(tok, "base", 1.3) is tok  # the base goes to the step as its base temperature
    assert knob_bounds(tok.model_copy(update={"control": tok.control.model_copy(update={"knob": "t_high"})}))[0] == (
        tok.token.t_low
    )


def test_measure_reads_the_targets_metric():
    m = {"rollout/entropy_mean": 0.1, "train/informative_share": 0.5}
    assert measure("entropy", m) == 0.1 and measure("informative_groups", m) == 0.5
    assert math.isnan(measure("hot_entropy", m))
