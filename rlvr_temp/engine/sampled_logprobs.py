"""The log-prob of every sampled token, recorded by the temperature processor instead of vLLM's logprobs output.

A logits processor sees a step's logits before vLLM samples from them; the token drawn shows up one step later,
appended to the request's output list (vLLM's live ``output_tok_ids``, which the processor keeps). So each step's
tempered log-softmax rows wait here until the tokens they sampled are known, then one gather keeps one float per
token. The values are ``log_softmax(logits / T_t)`` at the sampled token, as vLLM's ``processed_logprobs`` would
report them, since the processor's output is what vLLM samples from.

Bounded by the rows in flight, never by the steps: only the last step's ``[rows, vocab]`` log-softmax is kept. At
the next step every one of its rows is settled: gathered at its token if vLLM has appended it; dropped if the same
request records the same position again (a chunked prefill's discarded sample); otherwise recorded as NaN at once.
With vLLM's synchronous scheduling (what the rollout worker runs) a sampled token is in its list before the next
step, so NaN only marks a token that never arrived (an aborted request). Under async scheduling vLLM appends a
placeholder ``-1`` and fills it in only if the request is scheduled again, so the last token of a length-capped
response and the token before a preemption would be NaN (and an EOS-finished request's surplus step, past its end,
is recorded too): the worker refuses a response with a NaN log-prob (GPU review B4). Values stay on the device
until :meth:`SampledLogprobs.drain`, which copies them to the host at once; a step's token ids go to the device by
a pinned, non-blocking copy, so no step waits for the GPU.

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
    """Per-request log-probs of sampled tokens, by output position (``pin_memory``: copy token ids to the device
    from pinned memory, without blocking)."""

    def __init__(self, pin_memory: bool = False) -> None:
        self._pin = pin_memory
        self.pending: list[_Pending] = []  # the last step, until the next one settles it (a list: at most one)
        self.done: list[tuple[Sequence[str], list[int], torch.Tensor]] = []  # uids, positions, values (device)

    def add(self, uids: Sequence[str], outputs: list[list[int]], scaled: torch.Tensor) -> None:
        """One step: ``scaled`` holds the rows' final logits (what vLLM samples from), ``outputs`` their live
        output lists; the previous step is settled first (see the module docstring)."""
        positions = [len(out) for out in outputs]
        self.settle(again=set(zip(uids, positions)))
        logp = scaled.log_softmax(dim=-1, dtype=torch.float32)  # a new tensor: vLLM may modify `scaled` later
        self.pending.append(_Pending(uids, positions, outputs, logp))

    def held_rows(self) -> int:
        """Full-vocabulary rows held (at most one step's)."""
        return sum(p.logp.shape[0] for p in self.pending)

    def settle(self, again: set[tuple[str, int]] | None = None) -> None:
        """Settle the held step: gather its rows' log-probs at their tokens, NaN where a token has not arrived,
        except rows whose (uid, position) is in ``again`` (recorded again this step: dropped)."""
        again = again or set()
        for step in self.pending:
            rows, uids, positions, tokens = [], [], [], []
            for i, (uid, p, out) in enumerate(zip(step.uids, step.positions, step.outputs)):
                tok = out[p] if len(out) > p else -1
                if tok < 0 and (uid, p) in again:
                    continue  # sampled, then discarded by vLLM (chunked prefill): this step records it anew
                rows.append(i)
                uids.append(uid)
                positions.append(p)
                tokens.append(tok)
            if not rows:
                continue
            logp = step.logp
            if len(rows) != logp.shape[0]:
                logp = logp.index_select(0, self._to(rows, logp.device))
            idx = self._to(tokens, logp.device)
            picked = logp.gather(1, idx.clamp(min=0).unsqueeze(1)).squeeze(1)
            picked = torch.where(idx >= 0, picked, torch.full_like(picked, float("nan")))
            self.done.append((uids, positions, picked))
        self.pending = []

    def _to(self, values: list[int], device: torch.device) -> torch.Tensor:
        t = torch.tensor(values, dtype=torch.long)
        if device.type == "cpu":
            return t
        if self._pin:
            return t.pin_memory().to(device, non_blocking=True)
        return t.to(device)

    def drain(self) -> dict[str, list[float]]:
        """Every request's log-probs by output position since the last call (one device-to-host copy); then forget
        them. A later record of a position replaces an earlier one."""
        self.settle()
        if not self.done:
            return {}
        values = torch.cat([d[2] for d in self.done]).cpu().tolist()
        out: dict[str, dict[int, float]] = {}
        i = 0
        for uids, positions, _ in self.done:
            for uid, p in zip(uids, positions):
                out.setdefault(uid, {})[p] = values[i]
                i += 1
        self.done.clear()
        return {uid: [m[p] for p in sorted(m)] for uid, m in out.items()}

    def clear(self) -> None:
        self.pending.clear()
        self.done.clear()
