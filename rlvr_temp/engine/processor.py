"""The core of the rlvr_temp logits processors: what the vLLM Model Runner V1 and V2 adapters do alike.

:class:`ProcessorCore` applies and records every generated token's sampling temperature. The adapters
(:mod:`rlvr_temp.engine.processor_v1`, :mod:`rlvr_temp.engine.processor_v2`) say which logits rows are ours this
step, at which output positions, and how a token rule's rows get their temperatures; the core does the rest.
Requests carry ``temperature=1.0`` for vLLM (checked by :meth:`ProcessorCore.validate_params`) and their settings
in ``extra_args`` (:mod:`rlvr_temp.temperature.request`); requests without them pass through untouched.

Method, per decode step, for the participating rows of the batch at once (no per-row tensor work):

1. logits are sanitised (NaN/inf clamped, the TGR seed's ClampLogits),
2. the entropy at temperature 1 is computed (docs/temperature.md, "The token rule"),
3. rows without a token rule get ``T = T_req``; rows with one get ``T_t`` from the rule's entropy window, which
   is keyed by ``(scope, window, warmup_tokens)`` alone and shared by all rows (scope ``global``) or kept per
   response (``sequence``, released when the response finishes); a request's ``hot_fraction`` sets its window's
   rank as the request joins the batch, the contents stay (:meth:`ProcessorCore._set_hot_fraction`); ``learned``
   rows get the TTM head's output mapped into their range, plus ``T_req - base``. ``global`` windows live on the
   logits' device on CUDA (:class:`~rlvr_temp.temperature.window.DeviceEntropyWindow`, the rule's exact threshold,
   written back into the rule by :meth:`ProcessorCore.state_dict`); elsewhere, and for scope ``sequence``, the
   rule's own windows are stepped (which make small blocking copies on CUDA),
4. the rows are divided by their ``T`` (clamped ``>= MIN_TEMPERATURE``): vLLM samples from
   ``log_softmax(logits / T_t)``, exactly what the learner recomputes on-policy; the spec's top-p / top-k then
   truncate the tempered distribution,
5. ``(T, H)`` are appended to a step log, on the device; :meth:`ProcessorCore.drain` turns it into per-request
   lists by output position, with one device-to-host copy per ``generate``. Sampled tokens' log-probs
   (:mod:`rlvr_temp.engine.sampled_logprobs`, also kept on the device until drain) are recorded by the adapters that
   can see the sampled tokens (V1); :meth:`ProcessorCore.drain_logprobs` is empty for the others.

Per decode step with an unchanged batch layout, the V1 and V2 adapters alike never make the host wait for the
device (tests/unit/engine: ``test_per_step_path_never_reads_tensors_on_the_host`` for V2,
``test_v1_decode_step_never_waits_for_the_device_and_keeps_its_values`` for V1), except for scope ``sequence``.

The per-batch-layout state (:class:`Plan`: which rows, the groups of rows that share one token rule, the learned
rows, the truncated rows) is rebuilt only when the layout changes. Left out: speculative decoding (one logits row
per request is assumed).
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from rlvr_temp.engine import ttm as ttm_vllm
from rlvr_temp.engine.sampled_logprobs import SampledLogprobs
from rlvr_temp.temperature import TokenTemperatureRule, sanitize_logits, to_sampling_range, truncate_logits
from rlvr_temp.temperature.logits import entropy_of_sanitized
from rlvr_temp.temperature.request import (
    MIN_TEMPERATURE,
    RequestSettings,
    load_rules,
    parse_request,
    rule_temperatures,
    rules_state,
)
from rlvr_temp.temperature.window import DeviceEntropyWindow

_INSTANCES: weakref.WeakSet[ProcessorCore] = weakref.WeakSet()


@dataclass
class Entry(RequestSettings):
    """A participating request as a processor holds it: a V1 batch row, a V2 slot."""

    outputs: list[int] | None = None  # V1: vLLM's live list of the request's generated tokens


@dataclass
class Group:
    """The plan's rows that share one token rule's entropy window."""

    key: tuple
    uids: list[str]
    pos: torch.Tensor | None  # their positions in the plan; None: every row of the plan, in order
    # per-row temperatures of cold / hot tokens (the rule's own, or the rows' where their rule temperatures differ
    # from the window's rule's)
    cold: torch.Tensor | None = None
    hot: torch.Tensor | None = None


@dataclass
class Learned:
    """The plan's ``learned`` rows."""

    pos: torch.Tensor  # their positions in the plan
    rows: torch.Tensor  # their logits rows: the rows of the TTM head's output
    top: int  # the largest of those rows
    shift: torch.Tensor  # T_req - base
    ranges: list[tuple[tuple[float, float, float, float], torch.Tensor]]  # (t_low, t_high, t_min, t_max), indices


@dataclass
class Plan:
    """Per batch layout (which logits rows are ours, in order), rebuilt when the layout changes."""

    key: tuple  # the layout it was built for
    rows: np.ndarray  # our logits rows, ascending
    uids: tuple[str, ...]
    span: tuple[int, int] | None  # (start, stop) when the rows are consecutive: a view of the logits
    index: torch.Tensor | None  # the rows on the logits' device, otherwise
    t_req: torch.Tensor
    outputs: list[list[int]] = field(default_factory=list)  # V1: the rows' live output lists
    groups: list[Group] = field(default_factory=list)
    learned: Learned | None = None
    truncate: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # plan positions, top_p, top_k


class ProcessorCore:
    """Per-token and per-request temperatures, applied and recorded: the part the V1 and V2 processors share.

    An adapter calls :meth:`_init_core`, keeps :attr:`entries` (index -> :class:`Entry`; bump ``_gen`` on every
    change), builds its :class:`Plan` with :meth:`_build_plan`, runs :meth:`_apply_plan` and implements
    :meth:`_group_temperatures`.
    """

    #: how rlvr_temp.engine.extension finds this processor among the engine's
    RLVR_TEMP_PROCESSOR = True
    #: whether temperatures are computed on the host (the rules' CPU windows, the head's output copied back) or on
    #: the logits' device (no wait for the GPU: both adapters)
    HOST_TEMPERATURES: ClassVar[bool] = False

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        spec = parse_request(sampling_params.extra_args)
        if spec is not None and abs(sampling_params.temperature - 1.0) > 1e-6:
            raise ValueError(
                "requests handled by the rlvr_temp processor must use SamplingParams(temperature=1.0); "
                "put the rollout temperature in extra_args['rlvr_temp']['temperature']"
            )

    def _init_core(self, device: torch.device, pin_memory: bool) -> None:
        self.device = device
        self._pin = pin_memory  # host-to-device copies from pinned memory, without blocking
        self.entries: dict[int, Entry] = {}
        self.rules: dict[tuple, TokenTemperatureRule] = {}
        self.log: list[tuple[tuple[str, ...], list[int], torch.Tensor, torch.Tensor]] = []  # uids, positions, T, H
        self.sampled = SampledLogprobs(pin_memory)
        self._plan: Plan | None = None
        self._gen = 0  # bumped by every change of entries or rules (invalidates the plan)
        #: keep ``global`` windows on the device (CUDA); otherwise the rule's own CPU window is stepped
        self.device_windows = device.type == "cuda"
        self._dev: dict[tuple, DeviceEntropyWindow] = {}
        _INSTANCES.add(self)

    # ------------------------------------------------------------------------------------------ requests
    def _entry(self, spec: dict[str, Any], outputs: list[int] | None = None) -> Entry:
        """The entry of a parsed spec; its rule's window is made on first use of its window key, and takes the
        request's hot fraction (:meth:`_set_hot_fraction`)."""
        entry = Entry.of(spec)
        entry.outputs = outputs
        if entry.key is not None:
            if entry.key not in self.rules:
                self.rules[entry.key] = TokenTemperatureRule(**entry.rule)  # type: ignore[arg-type]
            else:
                self._set_hot_fraction(entry.key, entry.hot_fraction)  # type: ignore[arg-type]
        return entry

    def _set_hot_fraction(self, key: tuple, p: float) -> None:
        """Give the window ``key`` (its rule, its device copy) the hot fraction ``p`` of a request joining the batch;
        the window's contents stay. One rank per window: where live requests of the window ask for another, the
        last added wins for all its rows (warned; a controller changes it only between steps)."""
        rule = self.rules[key]
        if rule.hot_fraction == p:
            return
        if any(e.key == key and e.hot_fraction != p for e in self.entries.values()):
            warnings.warn(
                f"rlvr_temp: requests of one batch ask the entropy window {key} for hot fractions "
                f"{rule.hot_fraction} and {p}: {p} (the last added) now applies to all its rows",
                RuntimeWarning,
                stacklevel=2,
            )
        rule.set_hot_fraction(p)
        win = self._dev.get(key)
        if win is not None:
            win.set_hot_fraction(p)

    def _pop(self, index: int) -> Entry | None:
        return self.entries.pop(index, None)

    def _release_window(self, entry: Entry) -> None:
        """Free a gone entry's per-sequence window, unless its request lives on at another index."""
        rule = self.rules.get(entry.key) if entry.key is not None else None  # None after a reset
        if rule is not None and all(e.uid != entry.uid for e in self.entries.values()):
            rule.release(entry.uid)

    def release(self, uids: list[str]) -> None:
        """Forget finished requests: their entries and per-sequence windows (the worker calls this once a
        ``generate`` call has returned, when every one of its requests is finished)."""
        gone = set(uids)
        for index in [i for i, e in self.entries.items() if e.uid in gone]:
            self._pop(index)
        for rule in self.rules.values():
            rule.release(list(uids))
        self._gen += 1

    def open_windows(self) -> int:
        """Per-sequence windows currently held (for tests and leak checks)."""
        return sum(len(r.window) for r in self.rules.values() if r.scope == "sequence")

    # ------------------------------------------------------------------------------------------ layout
    def _tensor(self, values: Any, dtype: torch.dtype = torch.long, on_device: bool = False) -> torch.Tensor:
        """Host values where they are used: on the logits' device (``on_device``) or where temperatures are
        computed. With ``pin_memory``, by a pinned, non-blocking copy (no wait for the GPU)."""
        t = torch.as_tensor(values, dtype=dtype)
        if self.HOST_TEMPERATURES and not on_device:
            return t
        if self._pin:
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _build_plan(self, key: tuple, rows: np.ndarray, slots: np.ndarray) -> Plan:
        """The plan of our logits ``rows`` (ascending), whose entries are at ``slots``."""
        members = [self.entries[int(s)] for s in slots]
        n = len(members)
        span = (int(rows[0]), int(rows[-1]) + 1) if int(rows[-1] - rows[0]) + 1 == n else None
        index = None if span else self._tensor(rows, on_device=True)
        t_req = self._tensor([m.t_req for m in members], torch.float32)
        plan = Plan(key, rows, tuple(m.uid for m in members), span, index, t_req)
        plan.outputs = [m.outputs for m in members if m.outputs is not None]
        plan.groups = self._groups(members)
        cut = [p for p, m in enumerate(members) if m.top_p < 1.0 or m.top_k > 0]
        if cut:
            top_p = self._tensor([members[p].top_p for p in cut], torch.float32)
            plan.truncate = (self._tensor(cut, on_device=True), top_p, self._tensor([members[p].top_k for p in cut]))
        lpos = [p for p, m in enumerate(members) if m.learned is not None]
        if lpos:
            plan.learned = self._learned_rows(lpos, rows[lpos], [members[p] for p in lpos])
        return plan

    def _groups(self, members: list[Entry]) -> list[Group]:
        """The plan's token-rule groups: its rows by window key."""
        by_key: dict[tuple, list[int]] = {}
        for p, m in enumerate(members):
            if m.key is not None:
                by_key.setdefault(m.key, []).append(p)
        groups = []
        for k, pos in by_key.items():
            rule, group = self.rules[k], [members[p] for p in pos]
            g = Group(k, [m.uid for m in group], None if len(pos) == len(members) else self._tensor(pos))
            own = rule_temperatures(rule.config())  # once per group: rebuilds come often
            if any(m.rule_temps != own for m in group):
                # rows whose rule temperatures differ from the window's rule's: float64, rounded once
                cold = [m.rule_temps[0] + m.t_req - m.rule_temps[2] for m in group]  # type: ignore[index]
                hot = [m.rule_temps[1] + m.t_req - m.rule_temps[2] for m in group]  # type: ignore[index]
                g.cold, g.hot = self._tensor(cold, torch.float32), self._tensor(hot, torch.float32)
            self._init_group(g, rule, group)
            groups.append(g)
        return groups

    def _learned_rows(self, pos: list[int], rows: np.ndarray, members: list[Entry]) -> Learned:
        """The plan's ``learned`` rows: plan positions ``pos``, logits ``rows``, entries ``members``."""
        by_range: dict[tuple, list[int]] = {}
        for j, m in enumerate(members):
            by_range.setdefault(m.learned[:4], []).append(j)  # type: ignore[index]
        shift = self._tensor([m.learned[4] for m in members], torch.float32)  # type: ignore[index]
        ranges = [(r, self._tensor(v)) for r, v in by_range.items()]
        return Learned(self._tensor(pos), self._tensor(rows), int(rows.max()), shift, ranges)

    def _init_group(self, g: Group, rule: TokenTemperatureRule, members: list[Entry]) -> None:
        """Each row's cold / hot temperature, unless the core has set them (rows whose rule temperatures differ from
        the window's rule's): the rule's own, its fp32 arithmetic, clamped (``TokenTemperatureRule.step``)."""
        if g.cold is None:
            hot, cold = zip(*(rule.hot_cold(m.t_req) for m in members))
            g.cold, g.hot = self._tensor(cold, torch.float32), self._tensor(hot, torch.float32)

    # ------------------------------------------------------------------------------------------ sampling
    def _apply_plan(self, logits: torch.Tensor, plan: Plan, positions: list[int]) -> torch.Tensor:
        """Temper (and truncate) our rows of ``logits`` in place and log ``(T, H)`` at ``positions`` (each row's
        output index this step); returns our rows as vLLM will sample from them."""
        # our rows, as a view of `logits` (consecutive rows) or as a gathered copy; either way they may be modified
        # in place, since they are written back (or are already) where they belong
        sub = logits[plan.span[0] : plan.span[1]] if plan.span else logits.index_select(0, plan.index)
        sanitize_logits(sub, inplace=True)
        entropies = entropy_of_sanitized(sub).float()
        if self.HOST_TEMPERATURES:
            entropies = entropies.cpu()
        temps = self._temperatures(plan, entropies)
        # to the logits' device (host temperatures) or already there (a no-op)
        t_col = temps.to(sub.device, non_blocking=True).unsqueeze(1)
        # fp32: in place, the same kernel and values as `sub / t_col` without a copy; other dtypes: computed in fp32
        # (promotion), stored in the logits' dtype
        scaled = sub.div_(t_col) if sub.dtype == torch.float32 else (sub / t_col).to(sub.dtype)
        if plan.truncate is not None:
            # top-p / top-k of the tempered distribution, here rather than in vLLM's sampler: V1's CPU path cannot
            # combine them with per-request seeds ("CPU Generator does not use offset"), V2 runs us before its own
            pos, top_p, top_k = plan.truncate
            scaled[pos] = truncate_logits(scaled[pos], top_p, top_k)
        if plan.span:
            if scaled is not sub:
                logits[plan.span[0] : plan.span[1]] = scaled
        else:
            logits.index_copy_(0, plan.index, scaled)
        self.log.append((plan.uids, positions, temps, entropies))  # V2: T and H stay on the device until drain
        return scaled

    def _temperatures(self, plan: Plan, entropies: torch.Tensor) -> torch.Tensor:
        """Every row's ``T_req``, token-rule ``T_t`` or mapped TTM head output, clamped ``>= MIN_TEMPERATURE``."""
        temps = plan.t_req.clone()
        for g in plan.groups:
            h = entropies if g.pos is None else entropies.index_select(0, g.pos)
            t = self._group_temperatures(plan, g, h)
            if g.pos is None:
                temps = t
            else:
                temps.index_copy_(0, g.pos, t)
        if plan.learned is not None:
            temps.index_copy_(0, plan.learned.pos, self._learned(plan.learned))
        return temps.clamp_(min=MIN_TEMPERATURE)

    def _group_temperatures(self, plan: Plan, g: Group, h: torch.Tensor) -> torch.Tensor:
        """One token-rule group's temperatures from its entropies ``h`` (steps the group's window)."""
        return torch.where(self._hot(g, h), g.hot, g.cold)  # type: ignore[arg-type]

    def _hot(self, g: Group, h: torch.Tensor) -> torch.Tensor:
        """Push the group's entropies into its window; which rows are hot (the rule's threshold and warm-up)."""
        rule = self.rules[g.key]
        if self.device_windows and rule.scope == "global":
            win = self._dev.get(g.key)
            if win is None:
                values = self._tensor(rule.window.values().numpy(), torch.float32)
                win = self._dev[g.key] = DeviceEntropyWindow.from_rule(rule, values)
            return win.hot(h)
        rule.step(h, None, seq_ids=g.uids)  # the shared rule: its window, threshold and warm-up
        return rule.last_hot.to(h.device)  # type: ignore[union-attr]

    def _learned(self, learned: Learned) -> torch.Tensor:
        """The ``learned`` rows' TTM head output mapped into ``[t_low, t_high]`` plus their rollout shift. The head
        ran in the model's ``compute_logits`` (:mod:`rlvr_temp.engine.ttm`); its rows are the logits rows."""
        head = ttm_vllm.LAST["t"]
        if head is None or head.shape[0] <= learned.top:
            raise RuntimeError("learned temperatures requested, but the engine's model has no TTM head output")
        t = head.detach().float()
        if self.HOST_TEMPERATURES:
            t = t.cpu()
        t = t.index_select(0, learned.rows)
        mapped = torch.empty_like(t)
        for (lo, hi, tmin, tmax), idx in learned.ranges:
            mapped[idx] = to_sampling_range(t[idx], lo, hi, tmin, tmax)  # the learner maps with the same function
        return mapped + learned.shift

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

    def drain_logprobs(self) -> dict[str, list[float]]:
        """Per-uid log-probs of the sampled tokens by output position (see :meth:`drain`), and clear them; empty
        where the processor records none (V2)."""
        return self.sampled.drain()

    def state_dict(self) -> dict[str, Any]:
        """Entropy windows, one per window key, with the rule that owns each (``torch.save``-able; the format of
        :func:`rlvr_temp.temperature.request.rules_state`, V1 and V2 alike; device windows are first copied back
        into their rules)."""
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
        """Forget every entropy window, entry and pending record (a new run reusing this engine)."""
        self.rules.clear()
        self.entries.clear()
        self.log.clear()
        self.sampled.clear()
        self._dev.clear()
        self._gen += 1


def instances(cls: type[ProcessorCore] = ProcessorCore) -> list[Any]:
    """The live processors of class ``cls`` of engines in this process (one per engine)."""
    return [p for p in _INSTANCES if isinstance(p, cls)]
