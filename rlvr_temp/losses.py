"""Advantage estimators, policy losses, loss aggregation and reward shaping — pure torch, registry-based.

Registries (verl style) map a recipe name to a function, so a new estimator or loss is one decorated function:

* ``ADVANTAGES``: ``grpo`` (Shao et al. 2024, arXiv 2402.03300): ``(r - mean) / (std + eps)`` within a prompt's
  group (all of its rollout temperatures together, docs/temperature.md); ``drgrpo`` (Liu et al. 2025, arXiv 2503.20783):
  ``r - mean``.
* ``POLICY_LOSSES``: ``grpo`` (PPO clip, ``seq-mean-token-mean``), ``dapo`` (Yu et al. 2025,
  arXiv 2503.14476: clip-higher, ``token-mean``), ``drgrpo`` (``seq-mean-token-sum-norm``). Each takes the
  per-token log-probs under the current and the old policy, per-token advantages and a response mask, and returns
  the loss and its statistics. Optional dual-clip (Ye et al. 2020) and the Archer dual-token constraint
  (arXiv 2507.15778: per response, tokens under the 80th entropy percentile get a tighter clip and a KL term).
* Rollout correction (verl's ``rollout_is`` / ``rollout_rs``, TRL's ``vllm_importance_sampling_correction``):
  :func:`rollout_correction` turns the learner's old and the rollout engine's log-probs into truncated (TIS) or
  masked (MIS) importance weights, per token or per response, which :func:`policy_loss` multiplies into its
  policy-gradient term (``is_weights``); :func:`resolve_correction` resolves ``algorithm.rollout_correction.mode``
  ``auto``. :func:`merge_stats` folds micro-batch statistics (``*_max`` keys by max).

All tensors are ``[batch, response_len]`` with a 0/1 ``mask`` of real response tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rlvr_temp import utils

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")

ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {}
POLICY_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, dict[str, float]]]] = {}
DEFAULT_AGG = {"grpo": "seq-mean-token-mean", "dapo": "token-mean", "drgrpo": "seq-mean-token-sum-norm"}


def register(table: dict, name: str) -> Callable:
    """Decorator adding an advantage estimator or a policy loss to its registry under ``name``."""
    return utils.register(table, name, "loss" if table is POLICY_LOSSES else "advantage estimator")


# --------------------------------------------------------------------------------------------------- advantages
def _group_stats(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-response mean and (unbiased, as torch.std) std of its group's rewards."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    count = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, inverse, torch.ones_like(rewards))
    total = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, inverse, rewards)
    mean = total / count
    sq = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, inverse, (rewards - mean[inverse]) ** 2)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    return mean[inverse], std[inverse]


@register(ADVANTAGES, "grpo")
def grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``A_i = (r_i - mean(r_group)) / (std(r_group) + eps)`` (one scalar per response)."""
    mean, std = _group_stats(rewards.double(), group_ids)
    centred = rewards.double() - mean
    adv = torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))  # equal rewards: 0, never NaN
    return adv.to(rewards.dtype)


@register(ADVANTAGES, "drgrpo")
def drgrpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``A_i = r_i - mean(r_group)`` (Dr.GRPO: no std division)."""
    mean, _ = _group_stats(rewards.double(), group_ids)
    return (rewards.double() - mean).to(rewards.dtype)


def informative_groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """DAPO dynamic-sampling filter: True for responses whose group's rewards are not all equal."""
    _, std = _group_stats(rewards.double(), group_ids)
    return std > 0


# --------------------------------------------------------------------------------------------------- shaping
def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO soft overlong punishment: 0 up to ``max_len - buffer``, then linear down to ``-penalty`` at
    ``max_len`` (and beyond)."""
    start = max_len - buffer
    over = (lengths.double() - start).clamp(min=0) / buffer
    return (-penalty * over.clamp(max=1.0)).to(torch.float32)


# --------------------------------------------------------------------------------------------------- aggregation
def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    norm_len: float | None = None,
) -> torch.Tensor:
    """Reduce ``[B, L]`` per-token values to a scalar, with each mode's normaliser explicit.

    * ``token-mean`` (DAPO): ``sum(values * mask) / num_tokens``;
    * ``seq-mean-token-mean`` (GRPO): ``sum_i(mean of response i's tokens) / num_seqs``;
    * ``seq-mean-token-sum-norm`` (Dr.GRPO): ``sum_i(sum of response i's tokens / norm_len) / num_seqs`` with a
      constant ``norm_len`` (the Dr.GRPO paper, TRL and verl use the maximum response length).

    ``num_tokens`` / ``num_seqs`` default to this batch's own counts. Under gradient accumulation the learner passes
    the whole mini-batch's, so that the micro-batch losses *sum* to the mini-batch loss: the accumulated gradient
    is then exactly the mini-batch gradient, whatever the split (docs/loop.md, "Loss normalisers").
    """
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        denom = num_tokens if num_tokens is not None else mask.sum().clamp(min=1)
        return (values * mask).sum() / denom
    seqs = num_seqs if num_seqs is not None else values.shape[0]
    if mode == "seq-mean-token-mean":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.sum() / max(seqs, 1)
    if mode == "seq-mean-token-sum-norm":
        if norm_len is None:
            raise ValueError("seq-mean-token-sum-norm needs norm_len (the maximum response length)")
        return ((values * mask).sum(-1) / norm_len).sum() / max(seqs, 1)
    raise ValueError(f"unknown loss aggregation {mode!r}; known: {', '.join(AGG_MODES)}")


def low_var_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token, clamped to [-10, 10] as in verl."""
    log_ratio = (ref_logp - logp).clamp(-20, 20)
    return (torch.exp(log_ratio) - log_ratio - 1).clamp(-10, 10)


# --------------------------------------------------------------------------------------------------- correction
def resolve_correction(cfg: Any) -> str:
    """``algorithm.rollout_correction.mode`` of the run config ``cfg`` resolved to ``none`` / ``tis`` / ``mis``:
    ``auto`` is ``tis`` when the rollouts are off-policy (``trainer.off_policy_steps >= 1``) or the model does not
    run in ``float32`` (the engine's bf16/fp16 kernels and the learner's differ), otherwise ``none``."""
    mode = cfg.algorithm.rollout_correction.mode
    if mode != "auto":
        return mode
    return "tis" if cfg.trainer.off_policy_steps >= 1 or cfg.model.dtype != "float32" else "none"


def rollout_correction(
    old_logp: torch.Tensor,
    rollout_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    mode: str,
    level: str,
    threshold: float,
    lower: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Importance weights correcting for the rollout engine's policy differing from the learner's old one.

    Both log-probs are ``[B, L]`` at the per-token temperatures the tokens were sampled at, so the ratio is the
    target-over-behaviour ratio of the distributions actually sampled. ``token`` level: ``d_t = old - rollout``;
    ``sequence`` level: ``D_i = sum_t mask * d_t``, one ratio per response for all its tokens; log-ratios are
    clamped to [-20, 20] before ``exp``. ``tis``: ``w = min(ratio, threshold)``; ``mis``: ``w = 1`` where
    ``lower <= ratio <= threshold`` (``lower`` defaults to ``1 / threshold``), else 0 (the token, or the whole
    response). Returns the weights (detached, 0 at padding) and ``correction/*`` statistics: ``ratio_mean`` /
    ``ratio_max`` over the real tokens' ratios (``sequence``: over the responses' ratios), ``weight_mean`` and
    ``clipped_frac`` (tis: tokens whose weight was truncated) or ``masked_frac`` (mis: tokens of weight 0) per token.
    """
    if mode not in ("tis", "mis") or level not in ("token", "sequence"):
        raise ValueError(f"unknown rollout correction {mode!r} at level {level!r}: tis / mis, token / sequence")
    with torch.no_grad():
        real = mask > 0
        d = torch.where(real, old_logp.float() - rollout_logp.float(), 0.0)
        if level == "sequence":
            seq_ratio = torch.exp(d.sum(-1).clamp(-20, 20))
            ratio = seq_ratio.unsqueeze(-1).expand_as(d)
            shown = seq_ratio[real.any(-1)]  # the responses' ratios (rows with a real token)
        else:
            ratio = torch.exp(d.clamp(-20, 20))
            shown = ratio[real]
        if mode == "tis":
            w, cut = ratio.clamp(max=threshold), ratio > threshold
        else:
            low = 1.0 / threshold if lower is None else lower
            cut = (ratio < low) | (ratio > threshold)
            w = (~cut).float()
        w = torch.where(real, w, 0.0)
        n = real.sum().clamp(min=1)
        stats = {
            "correction/ratio_mean": float(shown.mean()) if shown.numel() else 1.0,
            "correction/ratio_max": float(shown.max()) if shown.numel() else 1.0,
            "correction/weight_mean": float(w.sum() / n),
            f"correction/{'clipped' if mode == 'tis' else 'masked'}_frac": float((cut & real).sum() / n),
        }
    return w, stats


def merge_stats(total: dict[str, float], stats: dict[str, float], weight: float = 1.0) -> dict[str, float]:
    """Fold one part's ``stats`` into ``total`` (in place; returned): keys ending in ``_max`` by max,
    ``actor/loss`` (already its part of a sum) summed, the others summed times ``weight`` (the part's token share)."""
    for k, v in stats.items():
        if k.endswith("_max"):
            total[k] = max(total.get(k, v), v)
        else:
            total[k] = total.get(k, 0.0) + (v if k == "actor/loss" else v * weight)
    return total


# --------------------------------------------------------------------------------------------------- losses
@dataclass
class ClipSettings:
    eps_low: float = 0.2
    eps_high: float = 0.28
    dual_clip_c: float | None = None


def _ppo_token_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, eps_low, eps_high, dual_clip_c
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token clipped surrogate; ``eps_low``/``eps_high`` may be tensors (Archer)."""
    ratio = torch.exp((logp - old_logp).clamp(-20, 20))
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    is_clipped = (clipped > unclipped).float()
    if dual_clip_c is not None:
        lower = -adv * dual_clip_c
        loss = torch.where(adv < 0, torch.minimum(loss, lower), loss)
    return loss, ratio, is_clipped


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    agg: str,
    clip: ClipSettings,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    archer_entropy: torch.Tensor | None = None,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    norm_len: float | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy-gradient loss with optional KL, entropy bonus and Archer's dual-token constraint.

    ``advantages`` is ``[B]`` (one per response) or ``[B, L]``. ``archer_entropy`` (the rollout's per-token
    entropies) switches Archer on: tokens under their response's 80th entropy percentile get clip 0.2 and KL
    weight 0.001 (ref log-probs required), the others clip 0.5 and no KL. ``num_tokens`` / ``num_seqs`` /
    ``norm_len`` are :func:`aggregate`'s normalisers. ``is_weights`` (``[B, L]``, :func:`rollout_correction`)
    multiply the per-token policy-gradient term only, not the KL or entropy terms (as verl); the normalisers stay
    the same (a masked token still counts), so gradient accumulation stays exact.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(logp)
    mask_f = mask.to(logp.dtype)
    eps_low, eps_high = clip.eps_low, clip.eps_high
    kl_weight: torch.Tensor | float = kl_coef
    if archer_entropy is not None:
        ent = archer_entropy.masked_fill(mask == 0, float("nan"))
        q80 = torch.nanquantile(ent.float(), 0.8, dim=-1, keepdim=True)
        low = (archer_entropy < q80) & (mask > 0)
        eps_low = torch.where(low, 0.2, 0.5)
        eps_high = eps_low
        kl_weight = torch.where(low, 0.001, 0.0) + kl_coef
    loss_tok, ratio, is_clipped = _ppo_token_loss(logp, old_logp, advantages, eps_low, eps_high, clip.dual_clip_c)
    if is_weights is not None:
        loss_tok = loss_tok * is_weights.detach().to(loss_tok.dtype)
    stats: dict[str, float] = {}
    if ref_logp is not None and (archer_entropy is not None or kl_coef > 0):
        kl = low_var_kl(logp, ref_logp)
        loss_tok = loss_tok + kl_weight * kl
        stats["actor/kl"] = float(aggregate(kl.detach(), mask, "token-mean"))
    if entropy is not None and entropy_coef > 0:
        loss_tok = loss_tok - entropy_coef * entropy
    loss = aggregate(loss_tok, mask, agg, num_tokens=num_tokens, num_seqs=num_seqs, norm_len=norm_len)
    with torch.no_grad():
        n = mask_f.sum().clamp(min=1)
        stats["actor/clip_frac"] = float((is_clipped * mask_f).sum() / n)
        stats["actor/ratio_mean"] = float((ratio * mask_f).sum() / n)
        stats["actor/ratio_max"] = float(ratio.masked_fill(mask == 0, 0).max()) if mask.any() else 1.0
        stats["actor/approx_kl_old"] = float(((old_logp - logp) * mask_f).sum() / n)
    return loss, stats


def _make(name: str) -> Callable[..., tuple[torch.Tensor, dict[str, float]]]:
    def fn(logp, old_logp, advantages, mask, *, agg: str | None = None, **kw):
        return policy_loss(logp, old_logp, advantages, mask, agg=agg or DEFAULT_AGG[name], **kw)

    fn.__name__ = f"{name}_loss"
    fn.__doc__ = f"Clipped policy loss with the {name} default aggregation ({DEFAULT_AGG[name]})."
    return fn


for _name in DEFAULT_AGG:
    register(POLICY_LOSSES, _name)(_make(_name))


def get_advantage(name: str) -> Callable[..., torch.Tensor]:
    if name not in ADVANTAGES:
        raise ValueError(f"unknown advantage estimator {name!r}; known: {', '.join(sorted(ADVANTAGES))}")
    return ADVANTAGES[name]


def get_policy_loss(name: str) -> Callable[..., tuple[torch.Tensor, dict[str, float]]]:
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; known: {', '.join(sorted(POLICY_LOSSES))}")
    return POLICY_LOSSES[name]
