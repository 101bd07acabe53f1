"""One forward pass of the learner's policy over a micro-batch: the responses' log-probs at the temperatures the
rollout sampled with (on-policy, docs/temperature.md), their entropies, and the TTM head's temperatures in the
``learned`` mode. Runs in a learner rank; :class:`rlvr_temp.learner.learner.Learner` calls it for its no-grad
log-prob passes and for every update micro-batch.

The temperature strategy (``rlvr_temp.temperature.strategy``) says at which temperatures log-probs are taken:
the rollout's per-token temperatures (data, no gradient), or the head's output kept in the graph so that the
policy gradient trains the head. Prompts either run in this forward, or come from a
:class:`rlvr_temp.learner.prompt_share.SharedPrompts` cache (each prompt once per chunk of responses).
"""

from __future__ import annotations

import torch

from rlvr_temp.batch import MicroBatch
from rlvr_temp.temperature import TemperatureStrategy, TokenTemperatureHead, token_entropies, token_logprobs


def policy_logprobs(
    model: torch.nn.Module,
    mb: MicroBatch,
    base_t: float,
    strategy: TemperatureStrategy,
    ttm_head: TokenTemperatureHead | None,
    *,
    with_entropy: bool = False,
    shared: tuple | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(log-probs, entropies or None, TTM head output or None) of the micro-batch's responses, ``[B, L]``;
    ``shared``: ``(SharedPrompts, rows)`` to read the prompts from their cache instead of running them."""
    p, r_len = mb.prompt_len, mb.response_ids.shape[1]
    if shared is not None:  # never with the TTM head (Learner._shares_prompts)
        cache, rows = shared
        logits, out, use_head = cache.response_logits(model, mb, rows), None, False
    else:
        use_head = ttm_head is not None and strategy.uses_head
        out = model(
            input_ids=mb.input_ids,
            attention_mask=mb.attention_mask,
            position_ids=mb.position_ids,
            use_cache=False,
            output_hidden_states=use_head,
            # logits at position j predict token j + 1: the L response tokens come from the last L + 1 columns
            # but one (P-1 .. P+L-2); the LM head runs on those only, not on the prompt
            logits_to_keep=r_len + 1,
        )
        logits = out.logits[:, :r_len, :]
    head_t = None
    if use_head and out is not None:
        # learned mode: the sampling temperature is the head's output on the final hidden states, kept in the
        # graph, so the policy gradient trains the head
        head_t = ttm_head.token_temperature(out.hidden_states[-1][:, p - 1 : p - 1 + r_len, :])
        temps: torch.Tensor | float = strategy.head_temperatures(head_t, mb.response_temperatures)
        # a plain log_softmax, not token_logprobs (which treats temperatures as data): the gradient must
        # reach the head through the temperatures
        scaled = torch.log_softmax(logits.float() / temps.unsqueeze(-1), dim=-1)
        logp = scaled.gather(-1, mb.response_ids.unsqueeze(-1)).squeeze(-1)
        temps = temps.detach()
    else:
        temps = strategy.learner_temperatures(mb.temperatures, base_t)
        logp = token_logprobs(logits, mb.response_ids, temps)
    # the entropy bonus needs the gradient of the entropy with respect to the logits: not detached
    ent = token_entropies(logits, temps) if with_entropy else None
    return logp, ent, head_t
