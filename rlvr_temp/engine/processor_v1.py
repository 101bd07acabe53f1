"""The rlvr_temp logits processor for vLLM's Model Runner V1: the V1 interface around the shared core.

Registered as ``LLM(logits_processors=[TemperatureProcessor], logprobs_mode="processed_logprobs")`` (by its
qualified name, ``rlvr_temp.engine.extension.PROCESSOR_V1``). What it applies and records, and how, is
:mod:`rlvr_temp.engine.processor`'s (request format: :mod:`rlvr_temp.temperature.request`). What V1 adds:

* It is argmax-invariant, so vLLM applies it after penalties and after its own temperature division, which the
  rollout worker neutralises by sending every request with ``temperature=1.0``.
* Rows are tracked through V1's ``BatchUpdate`` (added, removed, moved and swapped rows of the persistent batch);
  a one-way move onto a row whose request finished releases that request's per-sequence window.
* Temperatures are computed as V2 computes them, on the logits' device, with the same ``global`` device window on
  CUDA (:class:`~rlvr_temp.temperature.window.DeviceEntropyWindow`): the per-step path never waits for the GPU
  (scope ``sequence`` excepted); records stay on the device until ``drain`` (one copy per ``generate``).
* Each request's live output-id list gives the output positions and, one step later, the sampled tokens, whose
  log-probs are recorded (:mod:`rlvr_temp.engine.sampled_logprobs`), so the rollout need not ask vLLM for them.
  This needs vLLM's synchronous scheduling, under which a sampled token is in its list before the next step: the
  rollout worker turns async scheduling off (under it a token of a request that is not scheduled again -- the last
  of a length-capped response, the one before a preemption -- is never filled in; it is recorded as NaN, and the
  worker refuses such a response).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from rlvr_temp.engine import processor as core
from rlvr_temp.temperature.request import parse_request


class TemperatureProcessor(core.ProcessorCore, LogitsProcessor):
    """Per-token temperatures (entropy rule) and per-request temperatures, recorded for the learner."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        # host tables (plan, sampled tokens) go to a CUDA device by pinned, non-blocking copies
        self._init_core(device, pin_memory=device.type == "cuda")

    def is_argmax_invariant(self) -> bool:
        return True  # dividing by T > 0 keeps the argmax: vLLM applies us after its temperature step

    # ------------------------------------------------------------------------------------------ batch state
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._drop(index)
        for index, params, _prompt_ids, output_ids in batch_update.added:
            self._drop(index)
            spec = parse_request(params.extra_args) if params is not None else None
            if spec is not None:
                self.entries[index] = self._entry(spec, output_ids)
        for a, b, direction in batch_update.moved:
            ra = self.entries.pop(a, None)
            if direction == MoveDirectionality.SWAP:
                rb = self.entries.pop(b, None)
                if rb is not None:
                    self.entries[a] = rb
            else:
                # a one-way move lands on a row whose request has finished (vLLM condenses the batch without
                # listing that removal): release its window, or per-sequence windows would leak
                self._drop(b)
            if ra is not None:
                self.entries[b] = ra
        self._gen += 1

    def _drop(self, index: int) -> None:
        entry = self._pop(index)
        if entry is not None:
            self._release_window(entry)

    # ------------------------------------------------------------------------------------------ sampling
    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.entries:
            return logits
        key = (self._gen,)
        if self._plan is None or self._plan.key != key:
            rows = np.array(sorted(self.entries), dtype=np.int64)
            self._plan = self._build_plan(key, rows, rows)
        plan = self._plan
        scaled = self._apply_plan(logits, plan, [len(out) for out in plan.outputs])
        self.sampled.add(plan.uids, plan.outputs, scaled)
        return logits


def instances() -> list[TemperatureProcessor]:
    """The live V1 processors of engines in this process (one per engine)."""
    return core.instances(TemperatureProcessor)
