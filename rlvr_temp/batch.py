"""The records passed between the phases of a step: :class:`Rollout` (one response, from a rollout worker),
:class:`TrainBatch` (what the learner receives) and :class:`MicroBatch` (its padded tensors).

:class:`TrainBatch` holds one entry per response, unpadded (ragged lists, cheap to send through Ray):
prompt and response token ids, the per-token temperatures, entropies and log-probs the rollout recorded, each
response's rollout-level temperature and its advantage. Padding happens once, per micro-batch, in :func:`collate`:
a micro-batch is padded to its own longest prompt and response, not the whole batch's.

:func:`select_groups` is DAPO's dynamic sampling (Yu et al., arXiv 2503.14476; docs/loop.md): keep the groups whose
rewards differ, generate more (bounded) to fill the batch, drop the surplus.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from rlvr_temp import losses
from rlvr_temp.reward.answers import last_boxed, shape_reward
from rlvr_temp.utils import atomic_write


@dataclass
class Rollout:
    """One response. Per-token lists all have ``len(token_ids)`` entries."""

    prompt_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    token_temperatures: list[float]
    token_entropies: list[float]
    token_logprobs: list[float]
    finish_reason: str
    temperature: float  # the response's rollout-level temperature
    text: str = ""
    reward: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Groups = list[list[Rollout]]


def write_rollout_dump(path: str | Path, groups: Sequence[Sequence[Rollout]], step: int) -> Path:
    """One jsonl line per response (researchers inspect these); written atomically."""
    with atomic_write(path) as f:
        for group in groups:
            for r in group:
                f.write(json.dumps({"step": step, **r.to_json()}) + "\n")
    return Path(path)


@dataclass
class TrainBatch:
    """Scored responses, one entry per response (all per-token lists have the response's length)."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    token_temperatures: list[list[float]]
    rollout_logprobs: list[list[float]]
    token_entropies: list[list[float]]
    response_temperatures: list[float]
    advantages: list[float]

    def __post_init__(self) -> None:
        n = len(self.response_ids)
        for f in fields(self):
            if len(getattr(self, f.name)) != n:
                raise ValueError(f"TrainBatch.{f.name} has {len(getattr(self, f.name))} entries for {n} responses")

    def __len__(self) -> int:
        return len(self.response_ids)

    def response_lengths(self) -> list[int]:
        return [len(r) for r in self.response_ids]

    @classmethod
    def from_groups(cls, groups: Groups, advantage: str) -> TrainBatch:
        """Flatten scored groups and compute each response's advantage within its group (``losses.ADVANTAGES``)."""
        flat = [r for g in groups for r in g]
        rewards = torch.tensor([float(r.reward or 0.0) for r in flat], dtype=torch.float64)
        group_ids = torch.tensor([i for i, g in enumerate(groups) for _ in g], dtype=torch.long)
        adv = losses.get_advantage(advantage)(rewards, group_ids)
        return cls(
            prompt_ids=[r.prompt_token_ids for r in flat],
            response_ids=[r.token_ids for r in flat],
            token_temperatures=[r.token_temperatures for r in flat],
            rollout_logprobs=[r.token_logprobs for r in flat],
            token_entropies=[r.token_entropies for r in flat],
            response_temperatures=[float(r.temperature) for r in flat],
            advantages=adv.float().tolist(),
        )


@dataclass
class MicroBatch:
    """Padded tensors of some responses of a :class:`TrainBatch` (``B`` rows, ``P`` prompt and ``L`` response
    columns). Prompts are left-padded and responses right-padded, so every response starts at column ``P``;
    position ids follow the attention mask, as vLLM numbers positions."""

    input_ids: torch.Tensor  # [B, P + L]
    attention_mask: torch.Tensor  # [B, P + L]
    position_ids: torch.Tensor  # [B, P + L]
    response_ids: torch.Tensor  # [B, L]
    mask: torch.Tensor  # [B, L] float, 1 = real response token
    temperatures: torch.Tensor  # [B, L] recorded per-token temperatures (1 at padding)
    rollout_logprobs: torch.Tensor  # [B, L]
    entropies: torch.Tensor  # [B, L] rollout entropies (NaN, e.g. greedy rows, as 0)
    response_temperatures: torch.Tensor  # [B]
    advantages: torch.Tensor  # [B]
    prompt_len: int
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # [B, L] learner-side per-token values

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())

    def to(self, device: torch.device | str) -> MicroBatch:
        """Move every tensor to ``device`` (in place; returns self)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                setattr(self, f.name, value.to(device))
        self.extra = {k: v.to(device) for k, v in self.extra.items()}
        return self


def _pad(rows: Sequence[Sequence[float]] | Sequence[torch.Tensor], width: int, fill: float) -> torch.Tensor:
    out = torch.full((len(rows), width), fill, dtype=torch.float32)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.as_tensor(r, dtype=torch.float32)
    return out


def collate(
    batch: TrainBatch,
    index: Sequence[int],
    pad_id: int,
    device: torch.device | str = "cpu",
    extra: dict[str, list[torch.Tensor]] | None = None,
) -> MicroBatch:
    """Pad the responses ``index`` of ``batch`` into a :class:`MicroBatch` on ``device``. ``extra`` holds per-response
    learner-side values (e.g. old log-probs, one 1-D tensor per response of the whole batch), padded with 0."""
    index = list(index)
    prompts = [batch.prompt_ids[i] for i in index]
    responses = [batch.response_ids[i] for i in index]
    n = len(index)
    p_len = max((len(p) for p in prompts), default=0)
    r_len = max(1, max((len(r) for r in responses), default=1))
    ids = torch.full((n, p_len + r_len), pad_id, dtype=torch.long)
    attn = torch.zeros((n, p_len + r_len), dtype=torch.long)
    for row, (p, r) in enumerate(zip(prompts, responses)):
        ids[row, p_len - len(p) : p_len] = torch.tensor(p, dtype=torch.long)
        ids[row, p_len : p_len + len(r)] = torch.tensor(r, dtype=torch.long)
        attn[row, p_len - len(p) : p_len + len(r)] = 1
    mb = MicroBatch(
        input_ids=ids,
        attention_mask=attn,
        position_ids=(attn.cumsum(-1) - 1).clamp(min=0),
        response_ids=ids[:, p_len:],
        mask=_pad([[1.0] * len(r) for r in responses], r_len, 0.0),
        temperatures=_pad([batch.token_temperatures[i] for i in index], r_len, 1.0),
        rollout_logprobs=_pad([batch.rollout_logprobs[i] for i in index], r_len, 0.0),
        entropies=torch.nan_to_num(_pad([batch.token_entropies[i] for i in index], r_len, 0.0)),
        response_temperatures=torch.tensor([batch.response_temperatures[i] for i in index], dtype=torch.float32),
        advantages=torch.tensor([batch.advantages[i] for i in index], dtype=torch.float32),
        prompt_len=p_len,
        extra={k: _pad([v[i] for i in index], r_len, 0.0) for k, v in (extra or {}).items()},
    )
    return mb.to(device)


def micro_batches(index: Sequence[int], size: int) -> list[list[int]]:
    """Consecutive chunks of ``index`` of at most ``size`` responses."""
    index = list(index)
    return [index[i : i + size] for i in range(0, len(index), size)]


#: What one more micro-batch costs, in padded tokens, when :func:`token_budget_batches` splits: a forward and backward
#: pass has a fixed cost (kernel launches, Python, smaller matrix products), so splitting only to save a few padding
#: tokens does not pay. Measured on the 2-core CPU of docs/benchmarks.md: 64 was the fastest of 0 / 32 / 64 / 128.
MICRO_BATCH_COST_TOKENS = 64


def token_budget_batches(
    batch: TrainBatch, index: Sequence[int], max_tokens: int, with_prompts: bool = True
) -> list[list[int]]:
    """Micro-batches of ``index`` whose padded size (rows x (longest prompt + longest response)) stays within
    ``max_tokens`` (verl's dynamic batch size). Responses are sorted by length and cut into consecutive runs that
    minimise the padded tokens plus :data:`MICRO_BATCH_COST_TOKENS` per micro-batch (dynamic programming over the
    cut points: a greedy fill pads 13-23% on real GRPO batches, this 5-7%). A response longer than the budget gets a
    micro-batch alone. ``with_prompts=False`` counts response tokens only (the prompts run apart: ``prompt_share``).
    """
    plen = [len(p) if with_prompts else 0 for p in batch.prompt_ids]
    order = sorted(index, key=lambda i: (plen[i] + len(batch.response_ids[i]), i))
    n = len(order)
    # best[j]: the cheapest cut of order[:j]; start[j]: where its last micro-batch starts
    best = [0.0] + [float("inf")] * n
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        p = r = 0
        for i in range(j, 0, -1):  # the last micro-batch is order[i-1 : j], grown leftwards
            p, r = max(p, plen[order[i - 1]]), max(r, len(batch.response_ids[order[i - 1]]))
            padded = (j - i + 1) * (p + r)
            if padded > max_tokens and i < j:
                break
            cost = best[i - 1] + padded + MICRO_BATCH_COST_TOKENS
            if cost < best[j]:
                best[j], start[j] = cost, i - 1
    out: list[list[int]] = []
    j = n
    while j > 0:
        out.append(order[start[j] : j])
        j = start[j]
    return out[::-1]


# ------------------------------------------------------------------------------------------------- rewards
def set_rewards(flat: list[Rollout], correct: list[float], reward: Any, overlong: Any, max_len: int) -> None:
    """Each response's shaped reward from its verified correctness (``reward`` section: binary / signed, format
    penalty) plus DAPO's overlong penalty (``algorithm.overlong``, when enabled); ``extra["correct"]`` keeps the
    verifier's score."""
    lengths = torch.tensor([float(len(r.token_ids)) for r in flat])
    penalty = losses.overlong_penalty(lengths, max_len, overlong.buffer, overlong.penalty).tolist()
    for r, c, pen in zip(flat, correct, penalty):
        r.extra["correct"] = c
        has_boxed = last_boxed(r.text) is not None
        r.reward = shape_reward(c, mode=reward.mode, has_boxed=has_boxed, format_penalty=reward.format_penalty)
        r.reward += pen if overlong.enabled else 0.0


# ------------------------------------------------------------------------------------------------- dynamic sampling
def informative(groups: Groups) -> list[bool]:
    """Per group: True when its rewards are not all equal (``losses.informative_groups``, DAPO's filter)."""
    if not groups:
        return []
    rewards = torch.tensor([float(r.reward or 0.0) for g in groups for r in g], dtype=torch.float64)
    group_ids = torch.tensor([i for i, g in enumerate(groups) for _ in g], dtype=torch.long)
    keep = losses.informative_groups(rewards, group_ids)
    first = torch.tensor([0, *[len(g) for g in groups[:-1]]]).cumsum(0)
    return [bool(keep[int(i)]) for i in first]


def select_groups(
    next_round: Callable[[int], Groups], batch_size: int, dynamic: bool, max_refill_rounds: int
) -> tuple[Groups, Groups, int]:
    """Collect one step's groups: ``next_round(k)`` generates and scores round ``k``'s groups.

    Without ``dynamic`` sampling one round is used as it is. With it, rounds are added (at most
    ``1 + max_refill_rounds``) until ``batch_size`` informative groups are kept; the surplus is dropped (no buffer
    between steps, as in verl's DAPO recipe). Returns (kept groups, every generated group, rounds used); kept
    may be empty (the step's update is then skipped).
    """
    kept: Groups = []
    seen: Groups = []
    rounds = 0
    for k in range(1 + (max_refill_rounds if dynamic else 0)):
        groups = next_round(k)
        rounds += 1
        seen += groups
        if not dynamic:
            return groups, seen, rounds
        kept += [g for g, keep in zip(groups, informative(groups)) if keep]
        if len(kept) >= batch_size:
            break
    return kept[:batch_size], seen, rounds
