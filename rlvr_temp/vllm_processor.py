"""The vLLM v1 logits processor that applies (and records) every generated token's sampling temperature.

It is registered with ``LLM(logits_processors=[TemperatureProcessor], logprobs_mode="processed_logprobs")``
and is argmax-invariant, so vLLM applies it after penalties and after its own temperature division, which the
rollout worker neutralises by sending every request with ``temperature=1.0``. A request takes part when its
``SamplingParams.extra_args["rlvr_temp"]`` holds::

    {"uid": str,                  # key under which the token temperatures are recorded
     "temperature": float,        # the response's rollout-level temperature T_req
     "token_rule": None | {...}}  # kwargs of rlvr_temp.temperature.TokenTemperatureRule (mode `token`)

Per decode step, for the participating rows of the batch at once (no per-row tensor work):

1. logits are sanitised (NaN/inf clamped, the TGR seed's ClampLogits),
2. the entropy at temperature 1 is computed (SPEC §1.1),
3. rows without a token rule get ``T = T_req``; rows with one get ``T_t`` from the rule, whose entropy window is
   shared by all rows with the same window settings (scope ``global``) or kept per response (``sequence``),
4. the rows are divided by their ``T`` (clamped ``>= 1e-4``), so vLLM's ``processed_logprobs`` are
   ``log_softmax(logits / T_t)`` — exactly what the learner recomputes on-policy,
5. ``(T, H)`` are appended to a step log; :func:`drain` turns it into per-request lists.

Requests without the key (evaluation at a plain temperature, greedy decoding) pass through untouched.
The engine must run in the caller's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that :func:`drain` and
:func:`temperature_state` see the processor; the rollout worker arranges that.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from rlvr_temp.temperature import TokenTemperatureRule, entropy_from_logits, sanitize_logits

EXTRA_KEY = "rlvr_temp"
MIN_TEMPERATURE = 1e-4
_RULE_KEYS = {"t_low", "t_high", "hot_fraction", "window", "scope", "base_temperature", "warmup_tokens"}
_INSTANCES: weakref.WeakSet[TemperatureProcessor] = weakref.WeakSet()


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
    rule = spec.get("token_rule")
    if rule is not None:
        if not isinstance(rule, dict):
            raise ValueError("token_rule must be a dict of TokenTemperatureRule arguments")
        unknown = set(rule) - _RULE_KEYS
        if unknown:
            raise ValueError(f"token_rule: unknown keys {sorted(unknown)}")
        TokenTemperatureRule(**rule)  # raises ValueError on bad values
    return spec


@dataclass
class _Row:
    uid: str
    t_req: float
    rule_key: tuple | None
    output_ids: list[int]  # vLLM's live list of this request's generated tokens


@dataclass
class _Step:
    uids: tuple[str, ...]
    positions: list[int]
    temperatures: torch.Tensor  # [n] CPU
    entropies: torch.Tensor  # [n] CPU


@dataclass
class _Plan:
    """Cached per-batch-layout tensors, rebuilt only when the batch changes."""

    rows: list[int] = field(default_factory=list)
    index: torch.Tensor | None = None
    t_req: torch.Tensor | None = None
    contiguous: bool = False
    groups: list[tuple[tuple, torch.Tensor, list[str]]] = field(default_factory=list)


class TemperatureProcessor(LogitsProcessor):
    """Per-token temperatures (entropy rule) and per-request temperatures, recorded for the learner."""

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
            if spec is None:
                continue
            rule = spec.get("token_rule")
            key = tuple(sorted(rule.items())) if rule else None
            if key is not None and key not in self.rules:
                self.rules[key] = TokenTemperatureRule(**rule)
            self.rows[index] = _Row(spec["uid"], float(spec.get("temperature", 1.0)), key, output_ids)
        for a, b, direction in batch_update.moved:
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ra is not None:
                self.rows[b] = ra
            if direction == MoveDirectionality.SWAP and rb is not None:
                self.rows[a] = rb
        self._dirty = True

    def _drop(self, index: int) -> None:
        row = self.rows.pop(index, None)
        if row is not None and row.rule_key is not None:
            self.rules[row.rule_key].release(row.uid)

    def _rebuild(self) -> None:
        order = sorted(self.rows)
        plan = _Plan(rows=order)
        if order:
            plan.index = torch.tensor(order, dtype=torch.long, device=self.device)
            plan.t_req = torch.tensor([self.rows[i].t_req for i in order], dtype=torch.float32)
            plan.contiguous = order == list(range(len(order)))
            by_key: dict[tuple, list[int]] = {}
            for pos, i in enumerate(order):
                key = self.rows[i].rule_key
                if key is not None:
                    by_key.setdefault(key, []).append(pos)
            plan.groups = [
                (key, torch.tensor(pos, dtype=torch.long), [self.rows[order[p]].uid for p in pos])
                for key, pos in by_key.items()
            ]
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
        sub = logits[:n] if plan.contiguous else logits.index_select(0, plan.index)
        sub = sanitize_logits(sub)
        entropies = entropy_from_logits(sub).float().cpu()
        temps = plan.t_req.clone()
        for key, positions, uids in plan.groups:
            temps[positions] = self.rules[key].step(entropies[positions], plan.t_req[positions], seq_ids=uids)
        temps.clamp_(min=MIN_TEMPERATURE)
        scaled = sub / temps.to(sub.device, non_blocking=True).unsqueeze(1)
        if plan.contiguous:
            logits[:n] = scaled
        else:
            logits.index_copy_(0, plan.index, scaled)
        self.log.append(
            _Step(
                tuple(self.rows[i].uid for i in plan.rows),
                [len(self.rows[i].output_ids) for i in plan.rows],
                temps,
                entropies,
            )
        )
        return logits

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

    def state_dict(self) -> dict[str, Any]:
        return {"rules": {repr(k): (dict(k), r.state_dict()) for k, r in self.rules.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for kwargs, rule_state in state.get("rules", {}).values():
            key = tuple(sorted(kwargs.items()))
            rule = self.rules.get(key) or TokenTemperatureRule(**kwargs)
            rule.load_state_dict(rule_state)
            self.rules[key] = rule


def instances() -> list[TemperatureProcessor]:
    """The live processors of engines in this process (one per engine)."""
    return list(_INSTANCES)


def drain() -> dict[str, tuple[list[float], list[float]]]:
    """Collect and clear the recorded (temperatures, entropies) of every processor in this process."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for proc in instances():
        out.update(proc.drain())
    return out


def temperature_state() -> dict[str, Any]:
    """Entropy-window state of the processor in this process (for checkpoints)."""
    procs = instances()
    return procs[0].state_dict() if procs else {}


def load_temperature_state(state: dict[str, Any]) -> None:
    for proc in instances():
        proc.load_state_dict(state)
