"""Shared-prompt forward: each prompt of a mini-batch runs through the policy once, not once per response.

A GRPO group is ``group_size`` responses to one prompt, and a plain forward recomputes that prompt for every one of
them: with prompts of ``P`` tokens and responses of mean length ``R``, ``P / (P + R)`` of the update. Here:

1. :class:`SharedPrompts` (its constructor) runs the distinct prompts of some responses once, left-padded, with
   gradients, keeping every layer's keys / values and the logits at each prompt's last position (they predict the
   first response token). The learner sees *leaf copies* of those tensors.
2. :meth:`SharedPrompts.response_logits` runs a micro-batch of responses only, attending to their prompt's cached
   keys / values (rows gathered from the leaves, so each micro-batch's backward adds its part of their gradient).
3. :meth:`SharedPrompts.backward` runs the prompt graph's backward once with those summed gradients.

The gradient is the plain forward's (the sum over responses is the same sum, in another order): in float32 it agrees
to 1e-5 of its norm (``tests/unit/learner/test_prompt_share.py``). Left out: prompts longer than the token budget are
not split, and the TTM head (which reads the hidden state at the last prompt position), FSDP2 and gradient
checkpointing (which drops the cache) use the plain forward (``Learner._shares_prompts``). The same idea as Prefix
Grouper (Liu et al. 2025, arXiv:2506.05433), here through the model's own key/value cache, not a new attention
kernel. Documented in docs/loop.md, "Shared prompts".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from rlvr_temp.batch import MicroBatch, TrainBatch


def shareable(model: torch.nn.Module) -> bool:
    """Whether the model's layers all use full attention (a sliding-window layer's cache is not rebuilt here)."""
    config = model.config.get_text_config(decoder=True)
    return all(t == "full_attention" for t in (getattr(config, "layer_types", None) or ["full_attention"]))


def prompt_chunks(batch: TrainBatch, index: Sequence[int], max_tokens: int) -> list[list[int]]:
    """``index`` regrouped so that responses to one prompt are together, in chunks whose distinct prompts, padded
    to the chunk's longest, hold at most ``max_tokens`` tokens (a prompt longer than that is a chunk alone).
    Each chunk's prompts are kept in memory, with their graph, while its responses run."""
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i in index:
        by_prompt.setdefault(tuple(batch.prompt_ids[i]), []).append(i)
    out: list[list[int]] = []
    cur: list[int] = []
    n = width = 0
    for prompt, members in by_prompt.items():
        w = max(width, len(prompt))
        if cur and (n + 1) * w > max_tokens:
            out.append(cur)
            cur, n, w = [], 0, len(prompt)
        cur += members
        n, width = n + 1, w
    return [*out, cur] if cur else out


class SharedPrompts:
    """The cached prompts of one chunk of responses (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, batch: TrainBatch, index: Sequence[int], pad_id: int, device) -> None:
        prompts = list(dict.fromkeys(tuple(batch.prompt_ids[i]) for i in index))
        self.row = {p: r for r, p in enumerate(prompts)}
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p) :] = 1
        self.mask = mask.to(device)
        out = model(
            input_ids=ids.to(device),
            attention_mask=self.mask,
            position_ids=(self.mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
            logits_to_keep=1,  # only the last position's logits are needed: they predict each first response token
        )
        cache = out.past_key_values
        if any(type(layer).__name__ != "DynamicLayer" for layer in cache.layers):
            raise NotImplementedError("shared prompts need full attention in every layer (no sliding window)")
        # the graph's outputs, and leaf copies the responses read: their .grad collects every response's share
        self.roots = [t for layer in cache.layers for t in (layer.keys, layer.values)] + [out.logits[:, -1, :]]
        self.leaves = [t.detach().requires_grad_(torch.is_grad_enabled()) for t in self.roots]

    def rows(self, batch: TrainBatch, idx: Sequence[int]) -> torch.Tensor:
        """Each response's row in the cache."""
        return torch.tensor([self.row[tuple(batch.prompt_ids[i])] for i in idx], device=self.mask.device)

    def response_logits(self, model: torch.nn.Module, mb: MicroBatch, rows: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, L, V]`` predicting the micro-batch's ``L`` response columns, from the cached prompts."""
        first = self.leaves[-1][rows].unsqueeze(1)  # predicts response token 0
        r_len = mb.response_ids.shape[1]
        if r_len == 1:
            return first
        p = mb.prompt_len
        kv = self.leaves[:-1]
        cache = DynamicCache(ddp_cache_data=[(kv[j][rows], kv[j + 1][rows]) for j in range(0, len(kv), 2)])
        # response token j predicts token j + 1, so the last column is never an input; the mask covers the cached
        # prompt (left-padded to the chunk's longest) and then the response columns fed
        out = model(
            input_ids=mb.response_ids[:, :-1],
            attention_mask=torch.cat([self.mask[rows], mb.attention_mask[:, p : p + r_len - 1]], dim=1),
            position_ids=mb.position_ids[:, p : p + r_len - 1],
            past_key_values=cache,
            use_cache=True,
        )
        return torch.cat([first, out.logits], dim=1)

    def backward(self) -> None:
        """Back-propagate the summed response gradients through the prompts' forward (once)."""
        pairs = [(r, leaf.grad) for r, leaf in zip(self.roots, self.leaves) if leaf.grad is not None]
        if pairs:
            torch.autograd.backward([r for r, _ in pairs], [g for _, g in pairs])
        self.roots, self.leaves = [], []
