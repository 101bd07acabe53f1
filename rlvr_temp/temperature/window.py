"""Sliding windows of token entropies with an exact upper-tail quantile threshold.

The entropy-guided token rule of Wu et al. (arXiv 2510.08892; see docs/temperature.md) keeps the most
recent ``window`` next-token entropies in a queue ``Q`` and, at every decode step, takes the threshold

    ``H_th = sorted(Q)[int((1 - hot_fraction) * (len(Q) - 1))]``

(``hot_fraction = 0.2``: "the top 20% of entropies are reasoning tokens"). The authors re-sort the whole queue
at every step (O(N log N) for N = 100,000). The windows here return *exactly* the same value without
re-sorting the window:

* :class:`GlobalEntropyWindow` -- one window shared by every sequence of an engine (the paper's default
  scope). A ring buffer holds the values in arrival order; a small sorted *band* holds every value in
  ``[lo, hi]`` around the target rank, with counts of the values strictly below ``lo`` and strictly above
  ``hi``. A step sorts its B new and B evicted values, splits each at ``lo`` / ``hi`` with one
  ``searchsorted``, updates the counts and merges / removes the (few) band members. The band is rebuilt with
  a selection (``np.partition``, O(N)) only when the target rank leaves it -- rare at steady state, so the
  amortised cost per step is O(B log B + band). Ties are handled by classifying by value: equal values always
  fall on the same side, so the k-th order statistic is exact.
* :class:`DeviceEntropyWindow` -- the same ``global`` window and threshold kept on the entropies' device (an fp32
  ring and a ``kthvalue``): the processors' window on CUDA (V1 and V2 alike), which never makes the host wait for
  the device; exact for fp32 entropies, so hot / cold match :class:`GlobalEntropyWindow` bit for bit.
* :class:`~rlvr_temp.temperature.seq_window.SequenceEntropyWindows` (module ``seq_window``) -- one window
  per sequence (scope ``sequence``).

Both windows sanitise NaN entropies to 0.0 on entry, expose ``state_dict`` / ``load_state_dict`` (plain
tensors and Python types, ``torch.save``-able) so that a resumed run continues with the same window, and
``__len__``. An empty window's threshold is ``nan``. Every window's hot fraction may change between steps
(``set_hot_fraction``, e.g. by a temperature controller): the contents stay, the next threshold is the new rank's,
exactly; a saved state carries the current hot fraction and loading it sets it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["DeviceEntropyWindow", "GlobalEntropyWindow", "quantile_index"]


def quantile_index(length: int, hot_fraction: float) -> int:
    """Rank (0-based, ascending) of the threshold in a window of ``length`` values: ``int((1-p) * (len-1))``.

    This is the authors' indexing (arXiv 2510.08892 code; docs/temperature.md), kept bit-for-bit (Python float
    arithmetic).
    """
    return int((1.0 - hot_fraction) * (length - 1))


def check_hot_fraction(hot_fraction: float) -> float:
    """``hot_fraction`` as a float; ValueError unless it is a number strictly between 0 and 1."""
    if not (isinstance(hot_fraction, (int, float)) and 0.0 < float(hot_fraction) < 1.0):  # bools fail too
        raise ValueError(f"hot_fraction must lie strictly between 0 and 1, got {hot_fraction!r}")
    return float(hot_fraction)


def _check_args(capacity: int, hot_fraction: float) -> None:
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
        raise ValueError(f"window capacity must be an integer >= 1, got {capacity!r}")
    check_hot_fraction(hot_fraction)


def check_window_state(state: dict[str, Any], scope: str, capacity: int, strict: bool) -> None:
    """Refuse a saved window state of another scope, or (``strict``) of another capacity. The hot fraction is not
    checked: it may move during a run, and loading a state sets the windows' to the state's."""
    if state.get("scope", scope) != scope:
        raise ValueError(f"cannot load a {state.get('scope')!r}-scope window state into {scope}-scope windows")
    if strict and int(state["capacity"]) != capacity:
        raise ValueError(f"window state has capacity={state['capacity']}; these windows have capacity={capacity}")


class GlobalEntropyWindow:
    """One entropy window shared by all sequences (scope ``global``; paper default ``capacity = 100_000``).

    ``push(entropies)`` appends a decode step's entropies in row order, evicting the oldest values once the
    window holds ``capacity`` of them; ``threshold()`` is exactly
    ``sorted(Q)[int((1 - hot_fraction) * (len(Q) - 1))]`` (arXiv 2510.08892, ``hot_fraction = 0.2``). Values
    are kept in float64 on the CPU, so float32 or float64 entropies are stored without rounding.

    Args:
        capacity: Window length (paper: 100,000).
        hot_fraction: Share of the window at or above the threshold (paper: 0.2).
        band_half_width: Half width (in ranks) of the sorted band kept around the target rank; a performance
            knob only -- results do not depend on it.
    """

    def __init__(self, capacity: int = 100_000, hot_fraction: float = 0.2, band_half_width: int = 256) -> None:
        _check_args(capacity, hot_fraction)
        if band_half_width < 1:
            raise ValueError(f"band_half_width must be >= 1, got {band_half_width}")
        self.capacity = int(capacity)
        self.hot_fraction = float(hot_fraction)
        self.band_half_width = int(band_half_width)
        self._buf = np.zeros(self.capacity, dtype=np.float64)
        self._size = 0
        self._head = 0  # next write position in the ring
        self.rebuilds = 0  # how many times the band was rebuilt (diagnostics / benchmark)
        self._half = self.band_half_width  # current half width, adapted to how fast the distribution drifts
        self._pushes_since_rebuild = 0
        self._ar = np.arange(1024)
        self._moved = False  # the hot fraction moved since the last threshold
        self._invalidate()

    # ------------------------------------------------------------------ state
    def _invalidate(self) -> None:
        self._dirty = True
        self._band = np.empty(0, dtype=np.float64)
        self._lo = math.inf
        self._hi = -math.inf
        self._set_edges()
        self._below = 0
        self._above = 0
        self._max_band = 0

    def _set_edges(self) -> None:
        # v <= hi  <=>  v < nextafter(hi, +inf) for float64 v (hi finite)
        self._hi_next = None if self._hi == math.inf else float(np.nextafter(self._hi, math.inf))
        self._edges = np.array([self._lo, self._hi if self._hi_next is None else self._hi_next])

    def __len__(self) -> int:
        return self._size

    def set_hot_fraction(self, hot_fraction: float) -> None:
        """Move the threshold's rank to ``hot_fraction`` (0 < p < 1; the same p: a no-op); the contents stay. The
        band (every value in ``[lo, hi]``, whatever the rank) serves the next :meth:`threshold` if the new rank lies
        in it; otherwise that threshold re-selects it around the new rank (not taken for drift: no widening)."""
        p = check_hot_fraction(hot_fraction)
        if p != self.hot_fraction:
            self.hot_fraction = p
            self._moved = True

    def clear(self) -> None:
        """Empty the window."""
        self._size = 0
        self._head = 0
        self._half = self.band_half_width
        self._pushes_since_rebuild = 0
        self._ar = np.arange(1024)
        self._invalidate()

    def values(self) -> torch.Tensor:
        """The window's values in arrival order (oldest first), float64."""
        start = (self._head - self._size) % self.capacity
        idx = (start + np.arange(self._size)) % self.capacity
        return torch.from_numpy(self._buf[idx].copy())

    # ------------------------------------------------------------------ updates
    def push(self, entropies: torch.Tensor | np.ndarray | Sequence[float]) -> None:
        """Append one decode step's entropies (any shape, flattened in row order); NaN is stored as 0.0."""
        if isinstance(entropies, torch.Tensor):
            x = entropies.detach().reshape(-1).to("cpu", torch.float64).numpy()
        else:
            x = np.asarray(entropies, dtype=np.float64).reshape(-1)
        m = x.shape[0]
        if m == 0:
            return
        xs = np.sort(x)  # NaN sorts last: an O(1) check on the common path
        if xs[-1] != xs[-1]:
            x = np.where(np.isnan(x), 0.0, x)
            xs = np.sort(x)
        cap = self.capacity
        if m >= cap:  # the push alone fills the window: keep its last `cap` values
            self._buf[:] = x[m - cap :]
            self._size = cap
            self._head = 0
            self._invalidate()
            return
        free = cap - self._size
        n_evict = max(0, m - free)
        head = self._head
        end = head + m
        # the values about to be overwritten that are still in the window (the oldest ones)
        evicted = None
        if n_evict and not self._dirty:
            e_start = (head + free) % cap
            e_end = e_start + n_evict
            if e_end <= cap:
                evicted = np.sort(self._buf[e_start:e_end])
            else:
                evicted = np.sort(np.concatenate((self._buf[e_start:], self._buf[: e_end - cap])))
        if end <= cap:
            self._buf[head:end] = x
        else:
            split = cap - head
            self._buf[head:] = x[:split]
            self._buf[: end - cap] = x[split:]
        self._head = end % cap
        self._size = min(cap, self._size + m)
        self._pushes_since_rebuild += 1
        if not self._dirty:
            self._update_band(xs, evicted)

    def _split(self, values: np.ndarray) -> tuple[int, int]:
        """For sorted ``values``: (#values < lo, #values <= hi), with one ``searchsorted``."""
        if self._hi_next is None:  # hi = +inf: everything is <= hi
            return int(values.searchsorted(self._lo)), values.shape[0]
        n_lo, n_hi = values.searchsorted(self._edges)
        return int(n_lo), int(n_hi)

    def _update_band(self, added: np.ndarray, removed: np.ndarray | None) -> None:
        """Account for sorted ``added`` / ``removed`` values: update the counts, merge / drop band members."""
        band = self._band
        a_lo, a_hi = self._split(added)
        self._below += a_lo
        self._above += added.shape[0] - a_hi
        if removed is not None:
            r_lo, r_hi = self._split(removed)
            self._below -= r_lo
            self._above -= removed.shape[0] - r_hi
            n_rm = r_hi - r_lo
            if n_rm:
                pos = band.searchsorted(removed[r_lo:r_hi], side="left")
                if n_rm > 1:
                    # equal evicted values must delete distinct copies: make the positions strictly increasing
                    ar = self._arange(n_rm)
                    pos = np.maximum.accumulate(pos - ar) + ar
                keep = np.ones(band.shape[0], dtype=bool)
                keep[pos] = False
                band = band[keep]
        n_add = a_hi - a_lo
        if n_add:
            new = added[a_lo:a_hi]
            idx = band.searchsorted(new, side="left") + self._arange(n_add)
            out = np.empty(band.shape[0] + n_add, dtype=np.float64)
            slots = np.ones(out.shape[0], dtype=bool)
            slots[idx] = False
            out[slots] = band
            out[idx] = new
            band = out
        self._band = band

    def _arange(self, n: int) -> np.ndarray:
        if self._ar.shape[0] < n:
            self._ar = np.arange(max(n, 2 * self._ar.shape[0]))
        return self._ar[:n]

    def _rebuild(self, k: int, direction: int = 0) -> None:
        """Recompute the band around rank ``k`` from the ring buffer with an O(N) selection.

        ``direction`` says where the target rank left the old band (+1 above, -1 below, 0 neither): the new
        band is placed with three quarters of its width on that side, as the drift usually continues. When
        rebuilds come often the band widens (up to 16x ``band_half_width``); when they are rare it narrows
        back.
        """
        self.rebuilds += 1
        if direction:
            if self._pushes_since_rebuild < 64:
                self._half = min(2 * self._half, 16 * self.band_half_width)
            elif self._pushes_since_rebuild > 1024:
                self._half = max(self._half // 2, self.band_half_width)
        self._pushes_since_rebuild = 0
        n = self._size
        vals = self._buf if n == self.capacity else self._buf[:n]
        w = self._half
        below_w, above_w = w, w
        if direction > 0:
            below_w, above_w = w // 2, 3 * w // 2
        elif direction < 0:
            below_w, above_w = 3 * w // 2, w // 2
        a = max(0, k - below_w)
        b = min(n - 1, k + above_w)
        if a == 0 and b == n - 1:
            band = np.sort(vals)
            lo, hi = -math.inf, math.inf
        else:
            part = np.partition(vals, (a, b))
            lo = float(part[a]) if a > 0 else -math.inf
            hi = float(part[b]) if b < n - 1 else math.inf
            # ranks a..b sit in part[a:b+1]; copies of lo / hi outside that slice also belong to the band
            pieces = [part[a : b + 1]]
            if a > 0:
                left = part[:a]
                pieces.append(left[left == lo])
            if b < n - 1:
                right = part[b + 1 :]
                pieces.append(right[right == hi])
            band = np.sort(np.concatenate(pieces))
        self._band = band
        self._lo, self._hi = lo, hi
        self._set_edges()
        self._below = int(np.count_nonzero(vals < lo)) if a > 0 else 0
        self._above = n - self._below - band.size
        # a band swollen by many inserts (e.g. while filling with lo=-inf, hi=+inf) is rebuilt; never rebuild
        # at every step because of ties (a band of one repeated value may legitimately be large)
        self._max_band = max(4 * (2 * w + 1), 2 * band.size)
        self._dirty = False

    def threshold(self) -> float:
        """``sorted(Q)[int((1 - hot_fraction) * (len(Q) - 1))]`` exactly; ``nan`` for an empty window."""
        n = self._size
        if n == 0:
            return math.nan
        k = quantile_index(n, self.hot_fraction)
        if self._dirty or self._band.size > self._max_band:
            self._rebuild(k)
        elif k < self._below:
            self._rebuild(k, 0 if self._moved else -1)
        elif k >= self._below + self._band.size:
            self._rebuild(k, 0 if self._moved else +1)
        self._moved = False
        return float(self._band[k - self._below])

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Plain state (``torch.save``-able): the configuration and the values in arrival order."""
        return {
            "scope": "global",
            "capacity": self.capacity,
            "hot_fraction": self.hot_fraction,
            "values": self.values(),
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Restore the window (and its hot fraction) from :meth:`state_dict`; with ``strict``, the capacity must
        match."""
        check_window_state(state, "global", self.capacity, strict)
        self.set_hot_fraction(state.get("hot_fraction", self.hot_fraction))
        self.clear()
        self.push(torch.as_tensor(state["values"], dtype=torch.float64))


class DeviceEntropyWindow:
    """A ``global`` entropy window on the entropies' device: the last ``capacity`` entropies in an fp32 ring (exact
    for fp32 entropies) and a ``kthvalue`` at the rule's rank with its warm-up (docs/temperature.md), so hot / cold
    match a :class:`GlobalEntropyWindow` stepped by ``TokenTemperatureRule.step`` bit for bit, with no host round
    trip: nothing here reads a device value on the host (the sizes are host counters).

    Args:
        capacity, hot_fraction, warmup_tokens: the rule's ``window``, ``hot_fraction`` and ``warmup_tokens``.
        values: the window's initial contents in arrival order (e.g. the rule's CPU window), on the device.
    """

    def __init__(self, capacity: int, hot_fraction: float, warmup_tokens: int, values: torch.Tensor) -> None:
        _check_args(capacity, hot_fraction)
        self.capacity, self.hot_fraction = int(capacity), float(hot_fraction)
        self.warmup = max(int(warmup_tokens), 1)
        self.buf = torch.zeros(self.capacity, dtype=torch.float32, device=values.device)
        self.size = self.head = 0
        self.push(values)

    @classmethod
    def from_rule(cls, rule: Any, values: torch.Tensor) -> DeviceEntropyWindow:
        """The window of a ``TokenTemperatureRule`` of scope ``global``, holding ``values``."""
        return cls(rule.window_size, rule.hot_fraction, rule.warmup_tokens, values)

    def __len__(self) -> int:
        return self.size

    def set_hot_fraction(self, hot_fraction: float) -> None:
        """Move the threshold's rank to ``hot_fraction`` (0 < p < 1); the window's contents stay."""
        self.hot_fraction = check_hot_fraction(hot_fraction)

    def push(self, h: torch.Tensor) -> None:
        """Append one step's entropies (fp32 ``[B]``, NaN already replaced) in row order."""
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
        return h >= self.threshold()

    def threshold(self) -> torch.Tensor:
        """``sorted(Q)[int((1 - hot_fraction) * (len(Q) - 1))]`` as a 0-d fp32 tensor on the window's device (``nan``
        for an empty window); not read on the host."""
        if self.size == 0:
            return torch.full((), math.nan, dtype=torch.float32, device=self.buf.device)
        vals = self.buf if self.size == self.capacity else self.buf[: self.size]
        return torch.kthvalue(vals, quantile_index(self.size, self.hot_fraction) + 1).values

    def values(self) -> torch.Tensor:
        """The window in arrival order (oldest first), on its device."""
        if self.size < self.capacity:
            return self.buf[: self.size].clone()
        return torch.cat((self.buf[self.head :], self.buf[: self.head]))
