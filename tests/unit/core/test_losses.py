"""Losses, advantages, aggregation and shaping against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr_temp import losses
from rlvr_temp.losses import ClipSettings


def test_grpo_advantages_hand_computed():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1])
    adv = losses.get_advantage("grpo")(r, g, eps=0.0)
    std = math.sqrt(((0.5**2) * 4) / 3)  # unbiased std of [1, 0, 0, 1]
    expected = [0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std, 0.0, 0.0]
    assert torch.allclose(adv, torch.tensor(expected), atol=1e-6)


def test_drgrpo_advantages_no_std():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    g = torch.tensor([7, 7, 7, 7])
    adv = losses.get_advantage("drgrpo")(r, g)
    assert torch.allclose(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_informative_groups_filter():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    assert losses.informative_groups(r, g).tolist() == [False, False, True, True, False, False]


def test_overlong_penalty_ramp():
    lengths = torch.tensor([10, 12, 14, 16, 20])
    p = losses.overlong_penalty(lengths, max_len=16, buffer=4, penalty=1.0)
    assert torch.allclose(p, torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0]))


def test_aggregation_modes():
    v = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert losses.aggregate(v, m, "token-mean").item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert losses.aggregate(v, m, "seq-mean-token-mean").item() == pytest.approx((2.0 + 4.0) / 2)
    assert losses.aggregate(v, m, "seq-mean-token-sum-norm", norm_len=4).item() == pytest.approx((6 / 4 + 4 / 4) / 2)
    with pytest.raises(ValueError, match="norm_len"):
        losses.aggregate(v, m, "seq-mean-token-sum-norm")  # Dr.GRPO's normaliser is a constant: never implied
    assert losses.aggregate(v, m, "seq-mean-token-sum-norm", norm_len=2).item() == pytest.approx((3 + 2) / 2)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        losses.aggregate(v, m, "nope")


def test_clip_higher_hand_computed():
    # ratios exp(0.5)=1.6487 and exp(-0.5)=0.6065; advantages +1 and -1
    logp = torch.tensor([[0.5, -0.5, 0.0]])
    old = torch.zeros(1, 3)
    mask = torch.tensor([[1, 1, 0]])
    adv = torch.tensor([[1.0, -1.0, 5.0]])
    loss, stats = losses.get_policy_loss("dapo")(logp, old, adv, mask, clip=ClipSettings(0.2, 0.28))
    # token 0: A>0, ratio 1.65 > 1.28 -> clipped: -1.28; token 1: A<0, ratio 0.61 < 0.8 -> max(0.61, 0.8) = 0.8
    assert loss.item() == pytest.approx((-1.28 + 0.8) / 2, abs=1e-6)
    assert stats["actor/clip_frac"] == pytest.approx(1.0)


def test_unclipped_inside_range_and_gradient():
    logp = torch.tensor([[0.1, -0.1]], requires_grad=True)
    old = torch.zeros(1, 2)
    adv = torch.tensor([2.0])
    loss, stats = losses.get_policy_loss("grpo")(logp, old, adv, torch.ones(1, 2), clip=ClipSettings(0.2, 0.2))
    expected = -(2 * math.exp(0.1) + 2 * math.exp(-0.1)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-math.exp(0.1), -math.exp(-0.1)]]), atol=1e-6)
    assert stats["actor/clip_frac"] == 0.0


def test_dual_clip_bounds_negative_advantage():
    logp = torch.tensor([[3.0]])  # ratio e^3 ~ 20
    old = torch.zeros(1, 1)
    adv = torch.tensor([-1.0])
    loss, _ = losses.get_policy_loss("dapo")(logp, old, adv, torch.ones(1, 1), clip=ClipSettings(0.2, 0.28, 3.0))
    assert loss.item() == pytest.approx(3.0)


def test_kl_term_and_zero_when_equal():
    lp = torch.tensor([[-1.0, -2.0]])
    assert torch.allclose(losses.low_var_kl(lp, lp), torch.zeros(1, 2))
    kl = losses.low_var_kl(lp, lp - 0.5)
    assert torch.allclose(kl, torch.full((1, 2), math.exp(-0.5) + 0.5 - 1), atol=1e-6)
    base, _ = losses.policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 2), agg="token-mean", clip=ClipSettings())
    with_kl, stats = losses.policy_loss(
        lp,
        lp,
        torch.zeros(1),
        torch.ones(1, 2),
        agg="token-mean",
        clip=ClipSettings(),
        ref_logp=lp - 0.5,
        kl_coef=0.1,
    )
    assert with_kl.item() == pytest.approx(base.item() + 0.1 * (math.exp(-0.5) - 0.5), abs=1e-6)
    assert stats["actor/kl"] == pytest.approx(math.exp(-0.5) - 0.5, abs=1e-6)


def test_archer_uses_per_token_clip():
    # 5 tokens, entropies 0..4: the 80th percentile is 3.2, so tokens 0-3 are "low" (clip 0.2), token 4 high (0.5)
    logp = torch.full((1, 5), 0.4)  # ratio e^0.4 = 1.49
    old = torch.zeros(1, 5)
    ent = torch.arange(5.0).unsqueeze(0)
    loss, _ = losses.policy_loss(
        logp,
        old,
        torch.ones(1),
        torch.ones(1, 5),
        agg="token-mean",
        clip=ClipSettings(),
        archer_entropy=ent,
        ref_logp=logp,
    )
    expected = (4 * -1.2 + -math.exp(0.4)) / 5
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_registries_reject_unknown_names():
    with pytest.raises(ValueError, match="known: drgrpo, grpo"):
        losses.get_advantage("ppo")
    with pytest.raises(ValueError, match="unknown policy loss"):
        losses.get_policy_loss("reinforce")
    assert set(losses.POLICY_LOSSES) == {"grpo", "dapo", "drgrpo"}
