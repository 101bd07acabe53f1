"""The entropy-guided token temperature rule: hot / cold temperatures from an entropy window.

Rule (Wu et al., arXiv 2510.08892, docs/temperature.md): at each decode step every sequence's next-token entropy ``H``
(of ``softmax(logits)`` at temperature 1, after penalties) is pushed into an entropy window; the window's
upper-tail quantile ``H_th`` splits tokens into *hot* ("forking" / reasoning tokens, ``H >= H_th``, sampled at
``t_high``) and *cold* (knowledge tokens, ``t_low``). A rollout-level (request) temperature shifts both:
``T = (t_high if H >= H_th else t_low) + (T_req - base_temperature)``, clamped to ``>= 1e-4``.

Warm-up rule (ours; the paper has none): while a window holds fewer than ``warmup_tokens`` entropies --
counted *after* the current step's push, over the whole engine for scope ``global`` and over the sequence's
own window for scope ``sequence`` -- every token is treated as cold (``t_low`` + shift). Cold is the majority
class (``1 - hot_fraction`` of tokens), so this is the guess that is right most often while the quantile is
still noise. ``warmup_tokens = 0`` (the default) is the authors' behaviour: the quantile of whatever the
window holds, which always includes the current step's entropies. For scope ``sequence`` a warm-up of a few
dozen tokens is advisable: with a one-token window every token is its own threshold, so the first tokens are
all hot.

``hot_fraction`` may change between steps (:meth:`TokenTemperatureRule.set_hot_fraction`, e.g. by a temperature
controller): the window(s) keep their contents and the next threshold is the new quantile's; a rule's state carries
its current hot fraction, and loading a state sets it.

The logits helpers the rollout and the learner share (sanitising, entropies, log-probs, truncation) live in
``logits.py``; :data:`~rlvr_temp.temperature.logits.MIN_TEMPERATURE` is the clamp.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from .logits import MIN_TEMPERATURE
from .seq_window import SequenceEntropyWindows
from .window import GlobalEntropyWindow, check_hot_fraction

__all__ = ["TokenTemperatureRule"]


class TokenTemperatureRule:
    """Per-token temperature from an entropy window (arXiv 2510.08892; docs/temperature.md).

    Args:
        t_low: temperature of cold (low-entropy, knowledge) tokens (paper: 1.2).
        t_high: temperature of hot (high-entropy, reasoning) tokens (paper: 1.6).
        hot_fraction: share of the window at or above the threshold (paper: 0.2, "top 20%"); settable between
            steps (:meth:`set_hot_fraction`).
        window: window capacity (paper: 100,000 for scope ``global``; 2 x max_response_len for ``sequence``).
        scope: ``"global"`` (one window per engine, the paper's default) or ``"sequence"`` (one per sequence).
        base_temperature: the request temperature at which ``t_low`` / ``t_high`` apply as is (paper: 1.0).
        warmup_tokens: while the (relevant) window holds fewer entropies than this, tokens are cold; see the
            module docstring. 0 = the authors' behaviour.
        device: where per-sequence windows live (default: the device of the first entropies).

    Attributes set by :meth:`step` (for metrics): ``last_hot`` (bool ``[B]``) and ``last_threshold``
    (``[B]``, ``nan`` during warm-up).
    """

    def __init__(
        self,
        t_low: float = 1.2,
        t_high: float = 1.6,
        hot_fraction: float = 0.2,
        window: int = 100_000,
        scope: Literal["global", "sequence"] = "global",
        base_temperature: float = 1.0,
        warmup_tokens: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        for name, value in (("t_low", t_low), ("t_high", t_high), ("base_temperature", base_temperature)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        check_hot_fraction(hot_fraction)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        if scope not in ("global", "sequence"):
            raise ValueError(f"scope must be 'global' or 'sequence', got {scope!r}")
        if isinstance(warmup_tokens, bool) or not isinstance(warmup_tokens, int) or warmup_tokens < 0:
            raise ValueError(f"warmup_tokens must be an integer >= 0, got {warmup_tokens!r}")
        self.t_low = float(t_low)
        self.t_high = float(t_high)
        self.hot_fraction = float(hot_fraction)
        self.window_size = window
        self.scope = scope
        self.base_temperature = float(base_temperature)
        self.warmup_tokens = warmup_tokens
        self.window: GlobalEntropyWindow | SequenceEntropyWindows
        if scope == "global":
            self.window = GlobalEntropyWindow(window, hot_fraction)
        else:
            self.window = SequenceEntropyWindows(window, hot_fraction, device=device)
        self.last_hot: torch.Tensor | None = None
        self._last_th: torch.Tensor | float | None = None
        self._hot_cold_cache: tuple[float, float, float] | None = None

    def __repr__(self) -> str:
        return (
            f"TokenTemperatureRule(t_low={self.t_low}, t_high={self.t_high}, "
            f"hot_fraction={self.hot_fraction}, window={self.window_size}, scope={self.scope!r}, "
            f"base_temperature={self.base_temperature}, "
            f"warmup_tokens={self.warmup_tokens})"
        )

    def config(self) -> dict[str, Any]:
        """The constructor arguments (without ``device``)."""
        return {
            "t_low": self.t_low,
            "t_high": self.t_high,
            "hot_fraction": self.hot_fraction,
            "window": self.window_size,
            "scope": self.scope,
            "base_temperature": self.base_temperature,
            "warmup_tokens": self.warmup_tokens,
        }

    def set_hot_fraction(self, hot_fraction: float) -> None:
        """Move the window's threshold to the ``hot_fraction`` quantile (0 < p < 1; the same p: a no-op); the
        window's contents stay. Nothing else of the rule depends on it."""
        self.window.set_hot_fraction(hot_fraction)
        self.hot_fraction = self.window.hot_fraction

    def step(
        self,
        entropies: torch.Tensor,
        request_temperatures: torch.Tensor | float | None = None,
        seq_ids: Sequence[Hashable] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One decode step: push the entropies, take the threshold(s), return the temperatures ``[B]``.

        Args:
            entropies: ``[B]`` entropies at temperature 1 (e.g. :func:`entropy_from_logits`); NaN counts as 0.
            request_temperatures: ``[B]`` tensor or one float: each row's rollout-level temperature;
                ``None`` = ``base_temperature`` (no shift).
            seq_ids: ``[B]`` hashable ids (request ids, ints); required for scope ``sequence``, ignored for
                ``global``. Call :meth:`release` when a sequence finishes.

        Returns:
            float32 ``[B]`` on the device of ``entropies``:
            ``(t_high if H >= H_th else t_low) + (T_req - base_temperature)``, clamped to ``>= 1e-4``.
        """
        h = torch.as_tensor(entropies).detach().reshape(-1)
        if h.dtype != torch.float32:
            h = h.float()
        if (
            seq_ids is not None
            and isinstance(self.window, SequenceEntropyWindows)
            and h.device.type == "cpu"
            and (request_temperatures is None or isinstance(request_temperatures, (int, float)))
            and self.window._numpy_path(h.device)
            and torch.get_default_dtype() == torch.float32
        ):
            return self._step_sequence_numpy(h, request_temperatures, seq_ids)
        h = torch.nan_to_num(h, nan=0.0)
        b = h.shape[0]
        if isinstance(self.window, GlobalEntropyWindow):
            self.window.push(h)
            th = self.window.threshold() if len(self.window) >= max(self.warmup_tokens, 1) else math.nan
            # a float32-representable threshold (always, for entropies pushed here) compares exactly in fp32
            hot = h >= th if float(np.float32(th)) == th or th != th else h.double() >= th  # nan -> cold
        else:
            if seq_ids is None:
                raise ValueError("scope 'sequence' needs seq_ids in step()")
            # push + thresholds in one call; windows shorter than the warm-up get nan (a 1-token warm-up is
            # always met: the window holds the value just pushed)
            min_length = self.warmup_tokens if self.warmup_tokens > 1 else 0
            th = self.window.push_and_thresholds(seq_ids, h, min_length=min_length).to(h.device)
            hot = h.to(th.dtype) >= th  # nan -> cold
        self.last_hot = hot
        self._last_th = th
        # fp32 arithmetic in both branches, so a float request temperature and a tensor of it agree exactly
        if request_temperatures is None or isinstance(request_temperatures, (int, float)):
            t_hot, t_cold = self.hot_cold(request_temperatures)
            return torch.where(hot, t_hot, t_cold)
        req_t = torch.as_tensor(request_temperatures, dtype=torch.float32, device=h.device).reshape(-1)
        if req_t.numel() not in (1, b):
            raise ValueError(f"request_temperatures has {req_t.numel()} values for a batch of {b}")
        temps = torch.where(hot, self.t_high, self.t_low).add_(req_t - self.base_temperature)
        return temps.clamp_min_(MIN_TEMPERATURE)

    def hot_cold(self, request_temperature: float | None) -> tuple[float, float]:
        """The hot and cold temperatures (fp32 arithmetic, clamped) for one request temperature (None: the base):
        what :meth:`step` gives a row of that request temperature."""
        req = self.base_temperature if request_temperature is None else request_temperature
        cached = self._hot_cold_cache
        if cached is not None and cached[0] == req and type(cached[0]) is type(req):
            return cached[1], cached[2]
        shift = np.float32(req) - np.float32(self.base_temperature)
        t_hot = max(float(np.float32(self.t_high) + shift), MIN_TEMPERATURE)
        t_cold = max(float(np.float32(self.t_low) + shift), MIN_TEMPERATURE)
        self._hot_cold_cache = (req, t_hot, t_cold)
        return t_hot, t_cold

    def _step_sequence_numpy(
        self, h: torch.Tensor, request_temperature: float | None, seq_ids: Sequence[Hashable] | torch.Tensor
    ) -> torch.Tensor:
        """:meth:`step` for CPU per-sequence windows with one request temperature, in numpy (fewer, cheaper ops
        than torch on ``[B]`` vectors; the same values)."""
        window = self.window
        assert isinstance(window, SequenceEntropyWindows)
        hn = h.numpy()
        if np.isnan(hn).any():
            hn = np.where(np.isnan(hn), np.float32(0.0), hn)
        min_length = self.warmup_tokens if self.warmup_tokens > 1 else 0
        th = window.push_and_thresholds(seq_ids, hn, min_length=min_length)
        thn = th.numpy()
        hot = hn.astype(thn.dtype, copy=False) >= thn  # nan -> cold
        self.last_hot = torch.from_numpy(hot)
        self._last_th = th
        t_hot, t_cold = self.hot_cold(request_temperature)
        return torch.from_numpy(np.where(hot, np.float32(t_hot), np.float32(t_cold)))

    @property
    def last_threshold(self) -> torch.Tensor | None:
        """The threshold each row of the last :meth:`step` was compared with, ``[B]`` (``nan`` in warm-up)."""
        th = self._last_th
        if th is None or isinstance(th, torch.Tensor):
            return th
        hot = self.last_hot
        assert hot is not None
        return torch.full(hot.shape, th, dtype=torch.float64, device=hot.device)

    def release(self, seq_ids: Hashable | Sequence[Hashable]) -> None:
        """Forget finished sequences' windows (scope ``sequence``; a no-op for ``global``)."""
        if isinstance(self.window, SequenceEntropyWindows):
            self.window.release(seq_ids)

    def reset(self) -> None:
        """Empty the window(s)."""
        self.window.clear()

    def state_dict(self) -> dict[str, Any]:
        """Configuration and window contents (plain tensors / Python types; ``torch.save``-able)."""
        return {"config": self.config(), "window": self.window.state_dict()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Restore from :meth:`state_dict`, hot fraction included; with ``strict``, the rest of the configuration
        must match this rule's (the hot fraction may have moved since the rule was made)."""
        if strict and _fixed(state.get("config") or {}) != _fixed(self.config()):
            raise ValueError(f"token rule state has config {state.get('config')}; this rule: {self.config()}")
        self.window.load_state_dict(state["window"], strict=strict)  # sets the window's hot fraction
        self.hot_fraction = self.window.hot_fraction


def _fixed(config: dict[str, Any]) -> dict[str, Any]:
    """A rule's configuration without what may change during a run (the hot fraction)."""
    return {k: v for k, v in config.items() if k != "hot_fraction"}
