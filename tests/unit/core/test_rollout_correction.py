"""Importance correction of the rollout/learner mismatch (``losses.rollout_correction``): TIS / MIS at token and
sequence level against weights computed by hand from log-probs at per-token temperatures, their effect on the
policy loss, the ``auto`` rule, and how their statistics combine over micro-batches."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from rlvr_temp import losses
from rlvr_temp.config.schema import RunConfig
from rlvr_temp.losses import ClipSettings, merge_stats, resolve_correction, rollout_correction
from rlvr_temp.temperature import token_logprobs

# two responses of 3 and 2 tokens over a vocabulary of 3; response 1's third column is padding
IDS = [[0, 2, 1], [1, 0]]
TEMPS = [[0.7, 1.0, 1.5], [1.2, 0.9]]  # the per-token temperatures the tokens were drawn at
ROLLOUT_LOGITS = [[[1.0, 0.2, -0.5], [0.3, 0.1, 0.4], [-0.2, 0.6, 0.0]], [[0.5, 0.5, -1.0], [0.0, 1.0, 0.2]]]
OLD_LOGITS = [[[1.6, 0.2, -0.5], [0.3, 0.1, 0.1], [-0.2, 0.6, 1.5]], [[0.5, 1.1, -1.0], [0.8, 1.0, 0.2]]]
C = 1.25  # threshold; MIS's default lower bound is 1 / C = 0.8


def _hand_logp(logits: list[float], token: int, t: float) -> float:
    """``log_softmax(logits / t)[token]`` in plain Python."""
    z = [x / t for x in logits]
    top = max(z)
    return z[token] - (top + math.log(sum(math.exp(v - top) for v in z)))


def _hand_log_ratios() -> list[list[float]]:
    """Per token: learner-old minus rollout log-prob, both at the token's temperature."""
    return [
        [
            _hand_logp(OLD_LOGITS[i][t], IDS[i][t], TEMPS[i][t])
            - _hand_logp(ROLLOUT_LOGITS[i][t], IDS[i][t], TEMPS[i][t])
            for t in range(len(IDS[i]))
        ]
        for i in range(len(IDS))
    ]


def _padded(rows: list[list], fill) -> list[list]:
    return [r + [fill] * (3 - len(r)) for r in rows]


def _tensors(old_pad: float = float("nan"), rollout_pad: float = 123.0):
    """(old, rollout, mask) ``[2, 3]`` from :func:`token_logprobs` at the per-token temperatures; padding holds
    ``old_pad`` / ``rollout_pad`` (garbage: it must not matter)."""
    ids = torch.tensor(_padded(IDS, 0))
    temps = torch.tensor(_padded(TEMPS, 1.0))
    mask = torch.tensor(_padded([[1.0] * len(r) for r in IDS], 0.0))
    zeros = [[0.0, 0.0, 0.0]]
    old = token_logprobs(torch.tensor([OLD_LOGITS[0], OLD_LOGITS[1] + zeros]), ids, temps)
    rollout = token_logprobs(torch.tensor([ROLLOUT_LOGITS[0], ROLLOUT_LOGITS[1] + zeros]), ids, temps)
    old[1, 2], rollout[1, 2] = old_pad, rollout_pad
    return old, rollout, mask


def _flat(rows: list[list[float]]) -> list[float]:
    return [x for r in rows for x in r]


def test_the_case_exercises_every_branch():
    ratios = [math.exp(d) for d in _flat(_hand_log_ratios())]
    assert [r > C for r in ratios] == [False, False, False, True, True]
    assert [r < 1 / C for r in ratios] == [False, False, True, False, False]


def test_token_tis_hand_computed():
    old, rollout, mask = _tensors()
    w, stats = rollout_correction(old, rollout, mask, mode="tis", level="token", threshold=C)
    ratios = [[math.exp(d) for d in row] for row in _hand_log_ratios()]
    expected = _padded([[min(r, C) for r in row] for row in ratios], 0.0)
    assert torch.allclose(w, torch.tensor(expected), atol=1e-6, rtol=0)
    flat = _flat(ratios)
    assert stats["correction/ratio_mean"] == pytest.approx(sum(flat) / 5, abs=1e-6)
    assert stats["correction/ratio_max"] == pytest.approx(max(flat), abs=1e-6)
    assert stats["correction/clipped_frac"] == pytest.approx(2 / 5)
    assert stats["correction/weight_mean"] == pytest.approx(sum(min(r, C) for r in flat) / 5, abs=1e-6)
    assert "correction/masked_frac" not in stats
    assert not w.requires_grad


def test_token_mis_hand_computed():
    old, rollout, mask = _tensors()
    w, stats = rollout_correction(old, rollout, mask, mode="mis", level="token", threshold=C)
    ratios = [[math.exp(d) for d in row] for row in _hand_log_ratios()]
    expected = _padded([[float(1 / C <= r <= C) for r in row] for row in ratios], 0.0)
    assert expected == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    assert torch.equal(w, torch.tensor(expected))
    assert stats["correction/masked_frac"] == pytest.approx(3 / 5)
    assert stats["correction/weight_mean"] == pytest.approx(2 / 5)
    assert stats["correction/ratio_max"] == pytest.approx(max(_flat(ratios)), abs=1e-6)
    assert "correction/clipped_frac" not in stats


def test_sequence_level_hand_computed():
    """One ratio per response, exp(sum of its log-ratios), for all its tokens; ratio statistics over responses."""
    old, rollout, mask = _tensors()
    seq = [math.exp(sum(row)) for row in _hand_log_ratios()]  # ~0.659 and ~2.458
    w, stats = rollout_correction(old, rollout, mask, mode="tis", level="sequence", threshold=C)
    expected = [[min(seq[0], C)] * 3, [min(seq[1], C)] * 2 + [0.0]]
    assert torch.allclose(w, torch.tensor(expected), atol=1e-6, rtol=0)
    assert stats["correction/ratio_mean"] == pytest.approx((seq[0] + seq[1]) / 2, abs=1e-6)
    assert stats["correction/ratio_max"] == pytest.approx(seq[1], abs=1e-6)
    assert stats["correction/clipped_frac"] == pytest.approx(2 / 5)  # response 1's two tokens
    assert stats["correction/weight_mean"] == pytest.approx((3 * seq[0] + 2 * C) / 5, abs=1e-6)
    # MIS masks whole responses: with lower 0.5 response 0 (ratio ~0.66) stays, response 1 (~2.46) goes
    w, stats = rollout_correction(old, rollout, mask, mode="mis", level="sequence", threshold=C, lower=0.5)
    assert torch.equal(w, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert stats["correction/masked_frac"] == pytest.approx(2 / 5)
    # with the default lower bound 1 / C = 0.8, response 0 is masked too
    w, stats = rollout_correction(old, rollout, mask, mode="mis", level="sequence", threshold=C)
    assert not w.any() and stats["correction/masked_frac"] == 1.0


@pytest.mark.parametrize("mode", ["tis", "mis"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_padding_gets_weight_zero_and_does_not_touch_the_stats(mode: str, level: str):
    kw = {"mode": mode, "level": level, "threshold": C}
    w_garbage, s_garbage = rollout_correction(*_tensors(float("nan"), 123.0), **kw)
    w_clean, s_clean = rollout_correction(*_tensors(0.0, 0.0), **kw)
    assert torch.equal(w_garbage, w_clean) and w_clean[1, 2] == 0
    assert s_garbage == s_clean
    # response 1 alone, unpadded: the same weights for its tokens
    old, rollout, mask = _tensors()
    w_alone, _ = rollout_correction(old[1:, :2], rollout[1:, :2], mask[1:, :2], **kw)
    assert torch.equal(w_alone, w_clean[1:, :2])


def test_identical_logprobs_give_weight_one_and_the_same_loss_bitwise():
    old, _, mask = _tensors(0.0, 0.0)
    logp = old + torch.tensor([[0.05, -0.1, 0.02], [0.1, -0.03, 0.0]])
    adv = torch.tensor([1.0, -0.5])
    for mode in ("tis", "mis"):
        for level in ("token", "sequence"):
            w, stats = rollout_correction(old, old.clone(), mask, mode=mode, level=level, threshold=C)
            assert torch.equal(w, mask)
            assert stats["correction/ratio_mean"] == 1.0 and stats["correction/weight_mean"] == 1.0
            for agg in losses.AGG_MODES:
                kw = {"agg": agg, "clip": ClipSettings(0.2, 0.28), "norm_len": 3}
                plain, _ = losses.policy_loss(logp, old, adv, mask, **kw)
                weighted, _ = losses.policy_loss(logp, old, adv, mask, is_weights=w, **kw)
                assert torch.equal(plain, weighted)


def test_weights_multiply_the_policy_gradient_term_only():
    """token-mean of ``w * (-A * ratio) + kl_coef * k3``: the KL term is not weighted, the normaliser unchanged."""
    old, rollout, mask = _tensors(0.0, 0.0)
    w, _ = rollout_correction(old, rollout, mask, mode="tis", level="token", threshold=C)
    delta = [[0.05, -0.1, 0.02], [0.1, -0.03]]  # ratios inside the clip range
    ref_shift = [[-0.1, 0.2, 0.05], [0.3, -0.2]]
    logp = (old + torch.tensor(_padded(delta, 0.0))).requires_grad_()
    ref = old + torch.tensor(_padded(ref_shift, 0.0))
    adv = [1.0, -0.5]
    loss, _ = losses.policy_loss(
        logp,
        old,
        torch.tensor(adv),
        mask,
        agg="token-mean",
        clip=ClipSettings(0.2, 0.28),
        ref_logp=ref,
        kl_coef=0.5,
        is_weights=w,
    )
    weights = [[min(math.exp(d), C) for d in row] for row in _hand_log_ratios()]
    total = 0.0
    for i, row in enumerate(delta):
        for t, d in enumerate(row):
            k3 = math.exp(ref_shift[i][t] - d) - (ref_shift[i][t] - d) - 1
            total += weights[i][t] * (-adv[i] * math.exp(d)) + 0.5 * k3
    assert loss.item() == pytest.approx(total / 5, abs=1e-6)
    # the gradient of the policy-gradient part carries the weight (the weights themselves get none)
    loss.backward()
    k3_grad = [[-math.exp(ref_shift[i][t] - d) + 1 for t, d in enumerate(row)] for i, row in enumerate(delta)]
    expected = [
        [(weights[i][t] * (-adv[i] * math.exp(d)) + 0.5 * k3_grad[i][t]) / 5 for t, d in enumerate(row)]
        for i, row in enumerate(delta)
    ]
    assert torch.allclose(logp.grad, torch.tensor(_padded(expected, 0.0)), atol=1e-6, rtol=0)


def test_unknown_mode_or_level_is_refused():
    old, rollout, mask = _tensors(0.0, 0.0)
    with pytest.raises(ValueError, match="rollout correction"):
        rollout_correction(old, rollout, mask, mode="auto", level="token", threshold=C)
    with pytest.raises(ValueError, match="rollout correction"):
        rollout_correction(old, rollout, mask, mode="tis", level="response", threshold=C)


def _cfg(**sections: dict) -> RunConfig:
    return RunConfig.model_validate(sections)


def test_auto_resolution():
    assert resolve_correction(_cfg()) == "none"  # float32, synchronous
    assert resolve_correction(_cfg(trainer={"off_policy_steps": 1})) == "tis"
    assert resolve_correction(_cfg(model={"dtype": "bfloat16"})) == "tis"
    assert resolve_correction(_cfg(model={"dtype": "float16"})) == "tis"
    # an explicit mode wins either way
    bf16 = {"dtype": "bfloat16"}
    assert resolve_correction(_cfg(model=bf16, algorithm={"rollout_correction": {"mode": "none"}})) == "none"
    assert resolve_correction(_cfg(algorithm={"rollout_correction": {"mode": "mis"}})) == "mis"


def test_config_bounds():
    rc = _cfg().algorithm.rollout_correction
    assert (rc.mode, rc.level, rc.threshold, rc.lower) == ("auto", "token", 2.0, None)
    with pytest.raises(ValidationError):
        _cfg(algorithm={"rollout_correction": {"threshold": 1.0}})
    with pytest.raises(ValidationError):
        _cfg(algorithm={"rollout_correction": {"threshold": 2.0, "lower": 2.5}})
    with pytest.raises(ValidationError):
        _cfg(algorithm={"rollout_correction": {"mode": "sometimes"}})


def test_merge_stats_takes_maxima_sums_the_loss_and_weights_the_rest():
    total: dict[str, float] = {}
    merge_stats(total, {"actor/loss": 0.5, "correction/ratio_max": 3.0, "correction/weight_mean": 0.9}, 0.25)
    merge_stats(total, {"actor/loss": 0.25, "correction/ratio_max": 2.0, "correction/weight_mean": 0.5}, 0.75)
    assert total == {
        "actor/loss": 0.75,
        "correction/ratio_max": 3.0,
        "correction/weight_mean": pytest.approx(0.9 * 0.25 + 0.5 * 0.75),
    }
