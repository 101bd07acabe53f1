"""The log-prob of every sampled token, recorded by the temperature processor instead of vLLM's logprobs output.

A logits processor sees a step's logits before vLLM samples from them; the token drawn shows up one step later,
appended to the request's output list (vLLM's live ``output_tok_ids``, which the processor keeps). So each step's
tempered log-softmax rows wait here until the tokens they sampled are known, then one gather keeps one float per
token. The values are ``log_softmax(logits / T_t)`` at the sampled token, as vLLM's ``processed_logprobs`` would
report them, since the processor's output is what vLLM samples from.

Why not ``SamplingParams(logprobs=0)``: vLLM then ranks every sampled token, builds a ``Logprob`` object per token,
detokenizes it and ships it through the engine core on every step. On the 2-core CPU benchmark that made
generation about 7% slower than without logprobs (docs/benchmarks.md). Left out: speculative decoding (several
tokens per step: the project does not configure it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class _Pending:
    uids: Sequence[str]
    positions: list[int]  # each row's output position this step: the index its sampled token will have
    outputs: list[list[int]]  # vLLM's live output lists of those rows
    logp: torch.Tensor  # [rows, vocab] float32, the tempered log-softmax the tokens are drawn from


class SampledLogprobs:
    """Per-request log-probs of sampled tokens, by output position."""

    def __init__(self) -> None:
        self.pending: list[_Pending] = []
        self.done: list[tuple[Sequence[str], list[int], list[float]]] = []

    def add(self, uids: Sequence[str], outputs: list[list[int]], scaled: torch.Tensor) -> None:
        """One step: ``scaled`` holds the rows' final logits (what vLLM samples from), ``outputs`` their live
        output lists; earlier steps whose tokens have arrived are settled first."""
        self.settle()
        logp = scaled.log_softmax(dim=-1, dtype=torch.float32)  # a new tensor: vLLM may modify `scaled` later
        self.pending.append(_Pending(uids, [len(out) for out in outputs], outputs, logp))

    def settle(self, final: bool = False) -> None:
        """Gather the log-probs of the steps whose sampled tokens vLLM has appended (all of them if ``final``;
        a token that never arrived, as after an aborted request, is NaN)."""
        keep = []
        for step in self.pending:
            tokens = [out[p] if len(out) > p else -1 for out, p in zip(step.outputs, step.positions)]
            if not final and min(tokens, default=0) < 0:
                keep.append(step)  # not yet appended (asynchronous scheduling): next time
                continue
            idx = torch.tensor(tokens, dtype=torch.long, device=step.logp.device)
            picked = step.logp.gather(1, idx.clamp(min=0).unsqueeze(1)).squeeze(1)
            picked = torch.where(idx >= 0, picked, torch.full_like(picked, float("nan")))
            self.done.append((step.uids, step.positions, picked.cpu().tolist()))
        self.pending = keep

    def drain(self) -> dict[str, list[float]]:
        """Every request's log-probs by output position since the last call; then forget them."""
        self.settle(final=True)
        out: dict[str, dict[int, float]] = {}
        for uids, positions, values in self.done:
            for uid, p, v in zip(uids, positions, values):
                out.setdefault(uid, {})[p] = v
        self.done.clear()
        return {uid: [m[p] for p in sorted(m)] for uid, m in out.items()}

    def clear(self) -> None:
        self.pending.clear()
        self.done.clear()
