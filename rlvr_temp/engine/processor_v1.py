"""The vLLM v1 logits processor that applies (and records) every generated token's sampling temperature.

It is registered with ``LLM(logits_processors=[TemperatureProcessor], logprobs_mode="processed_logprobs")``
and is argmax-invariant, so vLLM applies it after penalties and after its own temperature division, which the
rollout worker neutralises by sending every request with ``temperature=1.0``. A request takes part when its
``SamplingParams.extra_args["rlvr_temp"]`` holds::

    {"uid": str,                  # key under which the token temperatures are recorded
     "temperature": float,        # the response's rollout-level temperature T_req
     "token_rule": None | {...},  # kwargs of rlvr_temp.temperature.TokenTemperatureRule (token modes)
     "learned": None | {...},     # the TTM head's sampling range (learned mode)
     "top_p": float, "top_k": int}  # optional truncation of the tempered distribution (default: none)

The specs are written by the run's temperature strategy (``rlvr_temp.temperature.strategy``).

Per decode step, for the participating rows of the batch at once (no per-row tensor work):

1. logits are sanitised (NaN/inf clamped, the TGR seed's ClampLogits),
2. the entropy at temperature 1 is computed (docs/temperature.md, "The token rule"),
3. rows without a token rule get ``T = T_req``; rows with one get ``T_t`` from the rule. Entropy windows are keyed
   by the window settings alone (scope, capacity, hot fraction, warm-up), never by temperatures: entropies are
   measured at temperature 1, so one window serves a whole run whatever its schedule or mixture does; it is shared
   by all rows (scope ``global``) or kept per response (``sequence``, released when the response finishes),
4. the rows are divided by their ``T`` (clamped ``>= 1e-4``): vLLM samples from ``log_softmax(logits / T_t)``,
   exactly what the learner recomputes on-policy,
5. ``(T, H)`` are appended to a step log; :meth:`TemperatureProcessor.drain` turns it into per-request lists. The
   sampled tokens' log-probs are recorded too, once vLLM has appended them (:mod:`rlvr_temp.engine.sampled_logprobs`;
   :meth:`TemperatureProcessor.drain_logprobs`), so the rollout need not ask vLLM for logprobs.

Requests without the key (evaluation at a plain temperature, greedy decoding) pass through untouched.
"""

from __future__ import annotations

import inspect
import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from rlvr_temp.engine import ttm as ttm_vllm
from rlvr_temp.engine.sampled_logprobs import SampledLogprobs
from rlvr_temp.temperature import TokenTemperatureRule, sanitize_logits, to_sampling_range, truncate_logits
from rlvr_temp.temperature.token_rule import entropy_of_sanitized

EXTRA_KEY = "rlvr_temp"
MIN_TEMPERATURE = 1e-4
_RULE_KEYS = {"t_low", "t_high", "hot_fraction", "window", "scope", "base_temperature", "warmup_tokens"}
_LEARNED_KEYS = {"t_low", "t_high", "t_min", "t_max", "base"}
_WINDOW_KEYS = ("scope", "window", "hot_fraction", "warmup_tokens")  # what an entropy window depends on
_INSTANCES: weakref.WeakSet[TemperatureProcessor] = weakref.WeakSet()
# token rules already validated (keys carry the value types, so that e.g. window=True never matches window=1):
# validate_params and update_state parse every request, and building a rule allocates its whole window
_VALID_RULES: set[tuple] = set()
_VALID_RULES_MAX = 1024


def parse_request(extra_args: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate the ``rlvr_temp`` part of a request's extra_args; None when the request does not take part."""
    if not extra_args or EXTRA_KEY not in extra_args:
        return None
    spec = extra_args[EXTRA_KEY]
    if not isinstance(spec, dict) or "uid" not in spec:
        raise ValueError(f"extra_args[{EXTRA_KEY!r}] must be a dict with a 'uid'")
    t = spec.get("temperature", 1.0)
    if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise ValueError(f"rollout temperature must be a finite number > 0, got {t!r}")
    top_p, top_k = spec.get("top_p", 1.0), spec.get("top_k", -1)
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
    if not isinstance(top_k, int) or isinstance(top_k, bool):
        raise ValueError(f"top_k must be an integer (-1 or 0: off), got {top_k!r}")
    rule = spec.get("token_rule")
    if rule is not None:
        if not isinstance(rule, dict):
            raise ValueError("token_rule must be a dict of TokenTemperatureRule arguments")
        unknown = set(rule) - _RULE_KEYS
        if unknown:
            raise ValueError(f"token_rule: unknown keys {sorted(unknown)}")
        try:
            key: tuple | None = tuple(sorted((k, type(v).__name__, v) for k, v in rule.items()))
            seen = key in _VALID_RULES
        except TypeError:  # an unhashable value: validate it every time (the rule rejects it)
            key, seen = None, False
        if not seen:
            TokenTemperatureRule(**rule)  # raises ValueError on bad values
            if key is not None:
                if len(_VALID_RULES) >= _VALID_RULES_MAX:
                    _VALID_RULES.clear()
                _VALID_RULES.add(key)
    learned = spec.get("learned")
    if learned is not None:
        if rule is not None:
            raise ValueError("token_rule and learned are exclusive")
        if not isinstance(learned, dict) or set(learned) != _LEARNED_KEYS:
            raise ValueError(f"learned must be a dict with keys {sorted(_LEARNED_KEYS)}")
        v = learned
        if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v.values()):
            raise ValueError(f"learned: values must be finite numbers, got {v}")
        if not (0 < v["t_low"] <= v["t_high"] and v["t_min"] < v["t_max"] and v["base"] > 0):
            raise ValueError(f"learned: need 0 < t_low <= t_high, t_min < t_max, base > 0, got {v}")
    return spec


def window_key(rule: dict[str, Any]) -> tuple:
    """The key of a token rule's entropy window: its window settings, not its temperatures."""
    return tuple((k, rule.get(k)) for k in _WINDOW_KEYS)


_RULE_DEFAULTS = {k: p.default for k, p in inspect.signature(TokenTemperatureRule).parameters.items()}


def rule_temperatures(rule: dict[str, Any]) -> tuple[float, float, float]:
    """A token rule's ``t_low``, ``t_high``, ``base_temperature`` (the rule's defaults where the spec omits one)."""
    return tuple(float(rule.get(k, _RULE_DEFAULTS[k])) for k in ("t_low", "t_high", "base_temperature"))  # type: ignore[return-value]


def _cold_hot(rows: list[_Row]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row cold and hot temperatures ``t_low / t_high + (T_req - base)`` (clamped later with all others)."""
    cold = [r.rule_temps[0] + r.t_req - r.rule_temps[2] for r in rows]
    hot = [r.rule_temps[1] + r.t_req - r.rule_temps[2] for r in rows]
    return torch.tensor(cold, dtype=torch.float32), torch.tensor(hot, dtype=torch.float32)


@dataclass
class _Row:
    uid: str
    t_req: float
    rule_key: tuple | None  # window_key of the request's token rule
    output_ids: list[int]  # vLLM's live list of this request's generated tokens
    rule_temps: tuple[float, float, float] | None = None  # the request's t_low, t_high, base_temperature
    top_p: float = 1.0  # nucleus / top-k truncation, applied here after the temperature (see apply)
    top_k: int = -1
    learned: tuple[float, float, float, float, float] | None = None  # t_low, t_high, t_min, t_max, shift


@dataclass
class _Step:
    uids: tuple[str, ...]
    positions: list[int]
    temperatures: torch.Tensor  # [n] CPU
    entropies: torch.Tensor  # [n] CPU


@dataclass
class _Group:
    """The rows (positions in the plan) that share one token rule."""

    key: tuple
    positions: torch.Tensor
    uids: list[str]
    everyone: bool  # the group is every participating row, in plan order (no gather / scatter needed)
    t_req: float | None  # the group's common request temperature, None if they differ
    # per-row (cold, hot) temperatures when some rows' rule temperatures differ from the window's rule's
    cold_hot: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class _Plan:
    """Cached per-batch-layout state, rebuilt only when the batch changes."""

    rows: list[int] = field(default_factory=list)
    index: torch.Tensor | None = None
    t_req: torch.Tensor | None = None
    contiguous: bool = False
    groups: list[_Group] = field(default_factory=list)
    uids: tuple[str, ...] = ()
    outputs: list[list[int]] = field(default_factory=list)  # the rows' live output-id lists
    learned_pos: torch.Tensor | None = None  # plan positions of `learned` rows
    learned_rows: torch.Tensor | None = None  # their batch rows (index into the TTM head's output)
    learned_groups: list[tuple[tuple[float, float, float, float], torch.Tensor]] = field(default_factory=list)
    learned_shift: torch.Tensor | None = None  # [n learned rows]: T_req - base
    truncate: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # plan positions, top_p, top_k


class TemperatureProcessor(LogitsProcessor):
    """Per-token temperatures (entropy rule) and per-request temperatures, recorded for the learner."""

    #: how rlvr_temp.engine.extension finds this processor among the engine's
    RLVR_TEMP_PROCESSOR = True

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        spec = parse_request(sampling_params.extra_args)
        if spec is not None and abs(sampling_params.temperature - 1.0) > 1e-6:
            raise ValueError(
                "requests handled by the rlvr_temp processor must use SamplingParams(temperature=1.0); "
                "put the rollout temperature in extra_args['rlvr_temp']['temperature']"
            )

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.device = device
        self.rows: dict[int, _Row] = {}
        self.rules: dict[tuple, TokenTemperatureRule] = {}
        self.log: list[_Step] = []
        self.sampled = SampledLogprobs()
        self.plan = _Plan()
        self._dirty = True
        _INSTANCES.add(self)

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
                self.rows[index] = self._row(spec, output_ids)
        for a, b, direction in batch_update.moved:
            ra = self.rows.pop(a, None)
            if direction == MoveDirectionality.SWAP:
                rb = self.rows.pop(b, None)
                if rb is not None:
                    self.rows[a] = rb
            else:
                # a one-way move lands on a row whose request has finished (vLLM condenses the batch without
                # listing that removal): release its window, or per-sequence windows would leak
                self._drop(b)
            if ra is not None:
                self.rows[b] = ra
        self._dirty = True

    def _row(self, spec: dict[str, Any], output_ids: list[int]) -> _Row:
        t_req = float(spec.get("temperature", 1.0))
        row = _Row(spec["uid"], t_req, None, output_ids)
        row.top_p, row.top_k = float(spec.get("top_p", 1.0)), int(spec.get("top_k", -1))
        rule = spec.get("token_rule")
        if rule:
            row.rule_key = window_key(rule)
            if row.rule_key not in self.rules:
                self.rules[row.rule_key] = TokenTemperatureRule(**rule)
            row.rule_temps = rule_temperatures(rule)
        lv = spec.get("learned")
        if lv is not None:
            row.learned = (lv["t_low"], lv["t_high"], lv["t_min"], lv["t_max"], t_req - lv["base"])
        return row

    def _drop(self, index: int) -> None:
        row = self.rows.pop(index, None)
        if row is not None and row.rule_key is not None:
            rule = self.rules.get(row.rule_key)  # None after a reset (a new run reusing the engine)
            if rule is not None:
                rule.release(row.uid)

    def release(self, uids: list[str]) -> None:
        """Forget finished requests: their rows and their per-sequence windows (the worker calls this once a
        ``generate`` call has returned, when every one of its requests is finished)."""
        gone = set(uids)
        for index in [i for i, r in self.rows.items() if r.uid in gone]:
            self._drop(index)
        for rule in self.rules.values():
            rule.release(list(uids))
        self._dirty = True

    def open_windows(self) -> int:
        """Per-sequence windows currently held (for tests and leak checks)."""
        return sum(len(r.window) for r in self.rules.values() if r.scope == "sequence")

    def _rebuild(self) -> None:
        order = sorted(self.rows)
        plan = _Plan(rows=order)
        if order:
            rows = [self.rows[i] for i in order]
            plan.index = torch.tensor(order, dtype=torch.long, device=self.device)
            plan.t_req = torch.tensor([r.t_req for r in rows], dtype=torch.float32)
            plan.contiguous = order == list(range(len(order)))
            plan.uids = tuple(r.uid for r in rows)
            plan.outputs = [r.output_ids for r in rows]
            by_key: dict[tuple, list[int]] = {}
            for pos, r in enumerate(rows):
                if r.rule_key is not None:
                    by_key.setdefault(r.rule_key, []).append(pos)
            cut = [p for p, r in enumerate(rows) if r.top_p < 1.0 or r.top_k > 0]
            if cut:
                p_k = [(rows[p].top_p, rows[p].top_k) for p in cut]
                plan.truncate = (
                    torch.tensor(cut, dtype=torch.long, device=self.device),
                    torch.tensor([x[0] for x in p_k], dtype=torch.float32),
                    torch.tensor([x[1] for x in p_k], dtype=torch.long),
                )
            lpos = [p for p, r in enumerate(rows) if r.learned is not None]
            if lpos:
                plan.learned_pos = torch.tensor(lpos, dtype=torch.long)
                plan.learned_rows = torch.tensor([order[p] for p in lpos], dtype=torch.long)
                plan.learned_shift = torch.tensor([rows[p].learned[4] for p in lpos], dtype=torch.float32)
                by_range: dict[tuple[float, float, float, float], list[int]] = {}
                for j, p in enumerate(lpos):
                    by_range.setdefault(rows[p].learned[:4], []).append(j)
                plan.learned_groups = [(k, torch.tensor(v, dtype=torch.long)) for k, v in by_range.items()]
            for key, pos in by_key.items():
                t_reqs = {rows[p].t_req for p in pos}
                group = _Group(
                    key=key,
                    positions=torch.tensor(pos, dtype=torch.long),
                    uids=[rows[p].uid for p in pos],
                    everyone=len(pos) == len(rows),
                    t_req=t_reqs.pop() if len(t_reqs) == 1 else None,
                )
                own = rule_temperatures(self.rules[key].config())  # once per group: rebuilds come often
                if any(rows[p].rule_temps != own for p in pos):
                    group.cold_hot = _cold_hot([rows[p] for p in pos])
                plan.groups.append(group)
        self.plan = plan
        self._dirty = False

    # ------------------------------------------------------------------------------------------ sampling
    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        if self._dirty:
            self._rebuild()
        plan = self.plan
        n = len(plan.rows)
        # our rows, as a view of `logits` (contiguous rows 0..n-1) or as a gathered copy; either way they may be
        # modified in place, since they are written back (or are already) where they belong
        sub = logits[:n] if plan.contiguous else logits.index_select(0, plan.index)
        sanitize_logits(sub, inplace=True)
        entropies = entropy_of_sanitized(sub).float().cpu()
        temps = self._temperatures(entropies)
        temps.clamp_(min=MIN_TEMPERATURE)
        t_col = temps.to(sub.device, non_blocking=True).unsqueeze(1)
        if sub.dtype == torch.float32:
            sub.div_(t_col)  # the same kernel and values as `sub / t_col`, without a copy
            scaled = sub
        else:
            scaled = (sub / t_col).to(sub.dtype)  # computed in fp32 (promotion), stored in the logits' dtype
        if plan.truncate is not None:
            # top-p / top-k of the tempered distribution, here rather than in vLLM's sampler: its CPU path cannot
            # combine them with per-request seeds ("CPU Generator does not use offset")
            pos, top_p, top_k = plan.truncate
            scaled[pos] = truncate_logits(scaled[pos], top_p, top_k)
        if plan.contiguous:
            if scaled is not sub:
                logits[:n] = scaled
        else:
            logits.index_copy_(0, plan.index, scaled)
        self.log.append(_Step(plan.uids, [len(out) for out in plan.outputs], temps, entropies))
        self.sampled.add(plan.uids, plan.outputs, scaled)
        return logits

    def _temperatures(self, entropies: torch.Tensor) -> torch.Tensor:
        """Every participating row's temperature this step: ``T_req``, the token rule's ``T_t``, or the mapped TTM
        head output."""
        plan = self.plan
        assert plan.t_req is not None
        if len(plan.groups) == 1 and plan.groups[0].everyone and plan.groups[0].cold_hot is None:
            g = plan.groups[0]
            # one float when all rows share T_req: the rule's float path computes the same fp32 values
            req = plan.t_req if g.t_req is None else g.t_req
            return self.rules[g.key].step(entropies, req, seq_ids=g.uids).to(torch.float32)
        temps = plan.t_req.clone()
        for g in plan.groups:
            rule = self.rules[g.key]
            req = plan.t_req[g.positions] if g.t_req is None else g.t_req
            out = rule.step(entropies[g.positions], req, seq_ids=g.uids)
            if g.cold_hot is not None:  # rows whose rule temperatures differ from the window's rule's
                out = torch.where(rule.last_hot.cpu(), g.cold_hot[1], g.cold_hot[0])
            temps[g.positions] = out
        if plan.learned_pos is not None:
            temps[plan.learned_pos] = self._learned_temperatures()
        return temps

    def _learned_temperatures(self) -> torch.Tensor:
        """The ``learned`` rows' TTM head output mapped into ``[t_low, t_high]`` plus their rollout shift. The head
        ran in the model's ``compute_logits`` (:mod:`rlvr_temp.engine.ttm`)."""
        plan = self.plan
        head = ttm_vllm.LAST["t"]
        if head is None or head.shape[0] <= int(plan.learned_rows.max()):
            raise RuntimeError("learned temperatures requested, but the engine's model has no TTM head output")
        t = head.detach().float().cpu()[plan.learned_rows]
        mapped = torch.empty_like(t)
        for (lo, hi, tmin, tmax), idx in plan.learned_groups:
            mapped[idx] = to_sampling_range(t[idx], lo, hi, tmin, tmax)  # the learner maps with the same function
        return mapped + plan.learned_shift

    # ------------------------------------------------------------------------------------------ records
    def drain(self) -> dict[str, tuple[list[float], list[float]]]:
        """Per-uid (temperatures, entropies) by output position, and clear the log."""
        out: dict[str, tuple[dict[int, float], dict[int, float]]] = {}
        for step in self.log:
            temps, ents = step.temperatures.tolist(), step.entropies.tolist()
            for j, uid in enumerate(step.uids):
                t_map, h_map = out.setdefault(uid, ({}, {}))
                t_map[step.positions[j]] = temps[j]
                h_map[step.positions[j]] = ents[j]
        self.log.clear()
        return {uid: ([t[p] for p in sorted(t)], [h[p] for p in sorted(h)]) for uid, (t, h) in out.items()}

    def drain_logprobs(self) -> dict[str, list[float]]:
        """Per-uid log-probs of the sampled tokens by output position (see :meth:`drain`), and clear them."""
        return self.sampled.drain()

    def state_dict(self) -> dict[str, Any]:
        """Entropy windows, one per window key, with the rule that owns each (``torch.save``-able)."""
        return rules_state(self.rules)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rules.update(load_rules(state))

    def reset(self) -> None:
        """Forget every entropy window, row and pending record (a new run reusing this engine)."""
        self.rules.clear()
        self.rows.clear()
        self.log.clear()
        self.sampled.clear()
        self._dirty = True


def rules_state(rules: dict[tuple, TokenTemperatureRule]) -> dict[str, Any]:
    """The processors' checkpoint format (V1 and V2 alike): each window key's rule settings and window."""
    return {"rules": {repr(k): (r.config(), r.state_dict()) for k, r in rules.items()}}


def load_rules(state: dict[str, Any]) -> dict[tuple, TokenTemperatureRule]:
    """The rules of a :func:`rules_state`, keyed by window key."""
    out = {}
    for kwargs, rule_state in state.get("rules", {}).values():
        rule = TokenTemperatureRule(**kwargs)
        rule.load_state_dict(rule_state)
        out[window_key(kwargs)] = rule
    return out


def instances() -> list[TemperatureProcessor]:
    """The live processors of engines in this process (one per engine)."""
    return list(_INSTANCES)
