"""Sliding windows of token entropies with an exact upper-tail quantile threshold.

The entropy-guided token rule of Wu et al. (arXiv 2510.08892; SPEC §1.2-§1.3) keeps the most
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
* :class:`SequenceEntropyWindows` -- one window per sequence (scope ``sequence``; the paper's second mode with
  ``window = 2 x max_response_len``). All windows live in two ``[slots, width]`` tensors (arrival order and
  sorted order, padded with ``+inf``) on one device (the GPU when the rollout runs there); one push inserts
  one value per row with a batched ``searchsorted`` and a shift over the active prefix, so it is a handful of
  batched array ops whatever the batch size (numpy views of the buffers on the CPU, torch ops elsewhere).
  The slots of an unchanged id list are cached, and ``push_and_thresholds`` does a decode step in one call.

Both windows sanitise NaN entropies to 0.0 on entry, expose ``state_dict`` / ``load_state_dict`` (plain
tensors and Python types, ``torch.save``-able) so that a resumed run continues with the same window, and
``__len__``. An empty window's threshold is ``nan``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["GlobalEntropyWindow", "SequenceEntropyWindows", "quantile_index"]


def quantile_index(length: int, hot_fraction: float) -> int:
    """Rank (0-based, ascending) of the threshold in a window of ``length`` values: ``int((1-p) * (len-1))``.

    This is the authors' indexing (arXiv 2510.08892 code, SPEC §1.3), kept bit-for-bit (Python float
    arithmetic).
    """
    return int((1.0 - hot_fraction) * (length - 1))


def _check_args(capacity: int, hot_fraction: float) -> None:
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
        raise ValueError(f"window capacity must be an integer >= 1, got {capacity!r}")
    if not (isinstance(hot_fraction, (int, float)) and 0.0 < float(hot_fraction) < 1.0):
        raise ValueError(f"hot_fraction must lie strictly between 0 and 1, got {hot_fraction!r}")


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
            self._rebuild(k, -1)
        elif k >= self._below + self._band.size:
            self._rebuild(k, +1)
        return float(self._band[k - self._below])

    def push_and_threshold(self, entropies: torch.Tensor | np.ndarray | Sequence[float]) -> float:
        """``push(entropies)`` then ``threshold()`` -- one decode step."""
        self.push(entropies)
        return self.threshold()

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
        """Restore the window from :meth:`state_dict`; with ``strict``, the configuration must match."""
        if state.get("scope", "global") != "global":
            raise ValueError(f"cannot load a {state.get('scope')!r}-scope window state into a global window")
        if strict and (int(state["capacity"]) != self.capacity or float(state["hot_fraction"]) != self.hot_fraction):
            raise ValueError(
                f"window state has capacity={state['capacity']}, hot_fraction={state['hot_fraction']}; "
                f"this window has capacity={self.capacity}, hot_fraction={self.hot_fraction}"
            )
        self.clear()
        self.push(torch.as_tensor(state["values"], dtype=torch.float64))


class _SlotCache:
    """The slots of one id list, kept while neither the list's contents nor the id -> slot map change."""

    __slots__ = ("ar", "flat_base", "gen", "ids", "known", "rows", "slots", "start", "unique", "width")

    def __init__(self, ids: list | tuple, slots: np.ndarray, gen: int) -> None:
        n = slots.shape[0]
        self.ids = ids  # a private copy of the caller's list (a tuple is kept as is)
        self.slots = slots
        self.gen = gen
        self.known = bool(n == 0 or slots.min() >= 0)
        self.ar = np.arange(n)
        # first slot of a run of consecutive slots (rows of the storage usable as a view), else -1
        self.start = int(slots[0]) if n and self.known and np.array_equal(slots, slots[0] + self.ar) else -1
        self.unique = self.start >= 0 or np.unique(slots).shape[0] == n
        self.rows: torch.Tensor | None = None  # `slots` on the storage device (torch path), made on first use
        self.width = -1
        self.flat_base = slots  # slots * width, for width == self.width


_NUMPY_DTYPES = (torch.float16, torch.float32, torch.float64)


class SequenceEntropyWindows:
    """One entropy window per sequence (scope ``sequence``), all updated together in batched array ops.

    The paper's per-sequence mode uses ``capacity = 2 x max_response_len`` (arXiv 2510.08892), so a window is
    usually the sequence's whole history. Sequences are named by any hashable id (a vLLM request id, an int);
    each id gets a slot on first push (the lowest free one) and gives it back with :meth:`release`. Storage is
    two ``[slots, width]`` tensors on ``device`` (arrival order and sorted order, ``+inf`` padded); ``width``
    and the slot count grow by doubling, up to ``capacity`` columns. A push costs O(B x active prefix) element
    operations in a few batched kernels -- trivial on a GPU, fine on a CPU for short responses. On the CPU
    (float16/32/64 storage) the same buffers are updated through numpy views, which costs far less per call
    than small torch ops; elsewhere torch ops are used. Both give the same values.

    The slots of the last id list are cached: a decode loop that passes the same ids step after step (the vLLM
    processor passes the same list while the batch is unchanged) skips the per-id lookups. The cache is checked
    against a copy of the list (so a list mutated in place is noticed) and dropped whenever an id gets or gives
    back a slot. :meth:`push_and_thresholds` does a decode step's push and threshold read in one call.

    Args:
        capacity: Per-sequence window length (paper: 2 x max_response_len).
        hot_fraction: Share of the window at or above the threshold (paper: 0.2).
        device: Where the buffers live; ``None`` = the device of the first pushed tensor.
        dtype: Storage dtype (float32 by default: entropies are computed in fp32, so storage is exact).
    """

    _prefer_numpy = True  # update CPU buffers through numpy views (False: torch ops everywhere; for tests)

    def __init__(
        self,
        capacity: int,
        hot_fraction: float = 0.2,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        _check_args(capacity, hot_fraction)
        self.capacity = int(capacity)
        self.hot_fraction = float(hot_fraction)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self._slot_of: dict[Hashable, int] = {}
        self._free: list[int] = []  # a min-heap: the lowest free slot is handed out first
        self._n_slots = 0
        self._width = 0
        self._count = np.zeros(0, dtype=np.int64)  # values pushed since the slot was taken (CPU mirror)
        self._ring: torch.Tensor | None = None
        self._sorted: torch.Tensor | None = None
        self._ring_np: np.ndarray | None = None  # numpy views of the CPU buffers (numpy path), ring flat
        self._sorted_np: np.ndarray | None = None
        self._np_dtype = torch.empty(0, dtype=dtype).numpy().dtype if dtype in _NUMPY_DTYPES else None
        self._rank_table = np.zeros(0, dtype=np.int64)  # _rank_table[n] = quantile rank for n values
        self._gen = 0  # bumped whenever an id gets or gives back a slot (invalidates the slot cache)
        self._cache: _SlotCache | None = None

    # ------------------------------------------------------------------ slots and storage
    def __len__(self) -> int:
        """Number of sequences with a window."""
        return len(self._slot_of)

    def __contains__(self, seq_id: Hashable) -> bool:
        return seq_id in self._slot_of

    def ids(self) -> list[Hashable]:
        """Ids of the sequences that have a window."""
        return list(self._slot_of)

    def _numpy_path(self, device: torch.device | None = None) -> bool:
        """Whether pushes go through numpy views (CPU storage of a numpy dtype); ``device``: if none is set yet."""
        dev = self.device or device
        return self._prefer_numpy and dev is not None and dev.type == "cpu" and self.dtype in _NUMPY_DTYPES

    def _ensure_storage(self, n_slots: int, width: int, device: torch.device) -> None:
        if self.device is None:
            self.device = device
        width = min(self.capacity, width)
        if self._ring is not None and n_slots <= self._n_slots and width <= self._width:
            return
        new_slots = max(n_slots, self._n_slots, 1)
        if new_slots > self._n_slots:
            new_slots = max(new_slots, 2 * self._n_slots)
        new_width = max(width, self._width, 1)
        if new_width > self._width:
            new_width = min(self.capacity, max(new_width, 2 * self._width))
        ring = torch.zeros(new_slots, new_width, dtype=self.dtype, device=self.device)
        srt = torch.full((new_slots, new_width), math.inf, dtype=self.dtype, device=self.device)
        if self._ring is not None:
            ring[: self._n_slots, : self._width] = self._ring
            srt[: self._n_slots, : self._width] = self._sorted
        self._ring, self._sorted = ring, srt
        if self._numpy_path():
            self._ring_np, self._sorted_np = ring.numpy().reshape(-1), srt.numpy()
        else:
            self._ring_np = self._sorted_np = None
        if new_slots > self._n_slots:
            self._free.extend(range(self._n_slots, new_slots))  # all above the free slots: still a heap
            self._count = np.concatenate((self._count, np.zeros(new_slots - self._n_slots, dtype=np.int64)))
        self._n_slots, self._width = new_slots, new_width

    def _resolve(self, seq_ids: Iterable[Hashable] | torch.Tensor, create: bool) -> _SlotCache:
        """The slots of ``seq_ids`` (-1 for unknown ids unless ``create``), from the cache when it still holds."""
        if isinstance(seq_ids, torch.Tensor):
            seq_ids = seq_ids.reshape(-1).tolist()
        elif not isinstance(seq_ids, (list, tuple)):
            seq_ids = list(seq_ids)
        c = self._cache
        if (
            c is not None
            and c.gen == self._gen
            and (c.known or not create)
            and type(seq_ids) is type(c.ids)
            and len(seq_ids) == len(c.ids)
            and seq_ids == c.ids
        ):
            return c
        slot_of = self._slot_of
        out = []
        for sid in seq_ids:
            slot = slot_of.get(sid)
            if slot is None:
                if not create:
                    slot = -1
                else:
                    if not self._free:
                        self._ensure_storage(self._n_slots + 1, self._width, self.device or torch.device("cpu"))
                    slot = heapq.heappop(self._free)
                    slot_of[sid] = slot
                    self._count[slot] = 0
                    self._gen += 1
            out.append(slot)
        ids = seq_ids.copy() if isinstance(seq_ids, list) else seq_ids
        c = _SlotCache(ids, np.asarray(out, dtype=np.int64), self._gen)
        self._cache = c
        return c

    def _slots(self, seq_ids: Iterable[Hashable] | torch.Tensor, create: bool) -> np.ndarray:
        return self._resolve(seq_ids, create).slots

    def _flat_base(self, c: _SlotCache) -> np.ndarray:
        if c.width != self._width:
            c.flat_base = c.slots * self._width
            c.width = self._width
        return c.flat_base

    def _rows(self, c: _SlotCache) -> torch.Tensor:
        if c.rows is None or c.rows.device != self.device:
            c.rows = torch.from_numpy(c.slots).to(self.device)
        return c.rows

    def release(self, seq_ids: Hashable | Iterable[Hashable]) -> None:
        """Drop the window of one sequence id (or of each id in a list / tuple / tensor); ignore unknown ids.

        A tuple is treated as a list of ids; to release an id that is itself a tuple, wrap it in a list.
        """
        if isinstance(seq_ids, torch.Tensor):
            ids: Iterable[Hashable] = seq_ids.reshape(-1).tolist()
        elif isinstance(seq_ids, (list, tuple, set, frozenset)):
            ids = seq_ids
        else:
            ids = [seq_ids]
        freed = [self._slot_of.pop(sid) for sid in ids if sid in self._slot_of]
        if not freed:
            return
        self._gen += 1
        if self._sorted is not None:
            if self._sorted_np is not None:
                self._sorted_np[freed] = math.inf
            else:
                self._sorted[torch.as_tensor(freed, dtype=torch.long, device=self.device)] = math.inf
            self._count[freed] = 0
        for slot in freed:
            heapq.heappush(self._free, slot)

    def clear(self) -> None:
        """Drop every window (keeps the allocated storage)."""
        self.release(list(self._slot_of))

    def _lengths_np(self, slots: np.ndarray) -> np.ndarray:
        return np.where(slots >= 0, np.minimum(self._count[np.maximum(slots, 0)], self.capacity), 0)

    def _ranks(self, length: np.ndarray) -> np.ndarray:
        """Threshold rank of each window length: ``int((1 - p) * (n - 1))`` (0 for n = 0), via a table."""
        table = self._rank_table
        if table.shape[0] <= self._width:
            n = np.arange(self._width + 1)
            # same float64 arithmetic as Python's int((1 - p) * (n - 1)) (n - 1 >= 0: floor = truncation)
            table = np.floor((1.0 - self.hot_fraction) * (np.maximum(n, 1) - 1).astype(np.float64)).astype(np.int64)
            self._rank_table = table
        return table[length]

    def lengths(self, seq_ids: Iterable[Hashable] | torch.Tensor) -> torch.Tensor:
        """Number of values in each sequence's window (0 for unknown ids), int64 on the CPU."""
        return torch.from_numpy(self._lengths_np(self._slots(seq_ids, create=False)))

    # ------------------------------------------------------------------ updates
    def _prepare(self, entropies: torch.Tensor | np.ndarray | Sequence[float]) -> torch.Tensor | np.ndarray:
        """Entropies as a flat array in the storage dtype, NaN -> 0.0: numpy (numpy path) or a torch tensor."""
        if isinstance(entropies, np.ndarray) and self._numpy_path(torch.device("cpu")):
            if self.device is None:
                self.device = torch.device("cpu")
            xn = entropies.reshape(-1)
            if xn.dtype != self._np_dtype:
                xn = torch.from_numpy(np.ascontiguousarray(xn)).to(self.dtype).numpy()  # torch's rounding
            if np.isnan(xn).any():
                xn = np.where(np.isnan(xn), xn.dtype.type(0.0), xn)
            return xn
        x = torch.as_tensor(entropies).detach().reshape(-1)
        if self.device is None:
            self.device = x.device
        if self._numpy_path():
            if x.dtype != self.dtype or x.device.type != "cpu":
                x = x.to("cpu", self.dtype)
            xn = x.numpy()
            if np.isnan(xn).any():
                xn = np.where(np.isnan(xn), xn.dtype.type(0.0), xn)  # a copy: the caller's tensor is kept
            return xn
        return torch.nan_to_num(x.to(self.device, self.dtype), nan=0.0, posinf=math.inf, neginf=-math.inf)

    def push(self, seq_ids: Sequence[Hashable] | torch.Tensor, entropies: torch.Tensor) -> None:
        """Append ``entropies[i]`` to the window of ``seq_ids[i]`` (new ids get a fresh window).

        An id may repeat within one call; its values are appended in order. NaN is stored as 0.0.
        """
        self._push(seq_ids, entropies, want=False, min_length=0)

    def push_and_thresholds(
        self, seq_ids: Sequence[Hashable] | torch.Tensor, entropies: torch.Tensor, min_length: int = 0
    ) -> torch.Tensor:
        """``push(seq_ids, entropies)`` then ``thresholds(seq_ids)`` -- one decode step, in one pass.

        With ``min_length > 0``, rows whose window holds fewer than ``min_length`` values (after the push) get
        ``nan`` (the token rule's warm-up). Same values as the two separate calls.
        """
        th = self._push(seq_ids, entropies, want=True, min_length=min_length)
        assert th is not None
        return th

    def _push(
        self,
        seq_ids: Iterable[Hashable] | torch.Tensor,
        entropies: torch.Tensor | np.ndarray | Sequence[float],
        want: bool,
        min_length: int,
    ) -> torch.Tensor | None:
        x = self._prepare(entropies)
        c = self._resolve(seq_ids, create=True)
        b = c.slots.shape[0]
        if b != x.shape[0]:
            raise ValueError(f"push got {b} sequence ids and {x.shape[0]} entropies")
        if b == 0:
            return torch.empty(0, dtype=self.dtype, device=self.device) if want else None
        if c.unique:
            return self._push_unique(c.slots, x, c, want, min_length)
        # an id repeats: occurrence rank r of each slot within this call is pushed in round r
        slots = c.slots
        order = np.argsort(slots, kind="stable")
        sorted_slots = slots[order]
        first = np.searchsorted(sorted_slots, sorted_slots, side="left")
        rank = np.empty_like(slots)
        rank[order] = np.arange(b) - first
        for r in range(int(rank.max()) + 1):
            sel = np.nonzero(rank == r)[0]
            xs = x[sel] if isinstance(x, np.ndarray) else x[torch.from_numpy(sel).to(x.device)]
            self._push_unique(slots[sel], xs, None, False, 0)
        if not want:
            return None
        return self._thresholds(slots, min_length)

    def _push_unique(
        self, slots: np.ndarray, x: torch.Tensor | np.ndarray, c: _SlotCache | None, want: bool, min_length: int
    ) -> torch.Tensor | None:
        """Push one value per (distinct) slot; with ``want``, return the thresholds after the push."""
        cap = self.capacity
        start = c.start if c is not None else -1
        b = slots.shape[0]
        cnt = self._count[start : start + b].copy() if start >= 0 else self._count[slots]
        need = int(cnt.max()) + 1  # longest window after this push, before eviction (if <= cap)
        self._ensure_storage(self._n_slots, need, self.device or torch.device("cpu"))
        width = self._width
        w = min(width, need)  # the active prefix of the sorted rows
        any_full = need > cap
        base = self._flat_base(c) if c is not None else slots * width
        cnt1 = cnt + 1
        if start >= 0:
            self._count[start : start + b] = cnt1
        else:
            self._count[slots] = cnt1
        if any_full:
            full = cnt >= cap
            pos = base + cnt % cap  # flat indices of the ring cells written now
            n_after = np.minimum(cnt1, cap)
        else:  # every count < cap: no eviction, cnt % cap = cnt
            full = None
            pos = base + cnt
            n_after = cnt1
        if self._sorted_np is not None and isinstance(x, np.ndarray):
            return self._push_numpy(slots, x, c, start, w, pos, full, n_after, want, min_length)
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x).to(self.device)
        return self._push_torch(slots, x, c, w, pos, full, n_after, want, min_length)

    def _push_numpy(
        self,
        slots: np.ndarray,
        x: np.ndarray,
        c: _SlotCache | None,
        start: int,
        w: int,
        pos: np.ndarray,
        full: np.ndarray | None,
        n_after: np.ndarray,
        want: bool,
        min_length: int,
    ) -> torch.Tensor | None:
        ring, srt = self._ring_np, self._sorted_np
        assert ring is not None and srt is not None
        b = slots.shape[0]
        # the batch's sorted rows: a view when the slots are consecutive, else a copy written back below
        sub = srt[start : start + b, :w] if start >= 0 else srt[slots, :w]
        if full is not None:  # drop the evicted (oldest) value: shift left from its first copy, +inf at the end
            old = ring[pos]
            old[~full] = math.inf  # rows not full: the mask below only covers +inf padding, which is unchanged
            ge = sub >= old[:, None]
            if w > 1:
                np.copyto(sub[:, :-1], sub[:, 1:].copy(), where=ge[:, :-1])
            sub[:, -1] = math.inf
        ring[pos] = x
        # insert at searchsorted(row, x, "left") = the first column >= x (column w-1 is +inf, so there is one)
        ge = sub >= x[:, None]
        j = ge.argmax(axis=1)
        if w > 1:
            np.copyto(sub[:, 1:], sub[:, :-1].copy(), where=ge[:, :-1])
        ar = c.ar if c is not None else np.arange(b)
        sub[ar, j] = x
        if start < 0:
            srt[slots, :w] = sub
        if not want:
            return None
        th = sub[ar, self._ranks(n_after)]
        if min_length > 0:
            th[n_after < min_length] = math.nan
        return torch.from_numpy(th)

    def _push_torch(
        self,
        slots: np.ndarray,
        x: torch.Tensor,
        c: _SlotCache | None,
        w: int,
        pos: np.ndarray,
        full_np: np.ndarray | None,
        n_after: np.ndarray,
        want: bool,
        min_length: int,
    ) -> torch.Tensor | None:
        ring, srt = self._ring, self._sorted
        assert ring is not None and srt is not None
        dev = self.device
        rows = self._rows(c) if c is not None else torch.from_numpy(slots).to(dev)
        # flat indices into the ring (index_select / index_copy_ are much faster than advanced indexing)
        flat = torch.from_numpy(pos).to(dev)
        sub = srt.narrow(1, 0, w).index_select(0, rows)
        cols = torch.arange(w, device=dev)
        inf_col = torch.full((rows.shape[0], 1), math.inf, dtype=self.dtype, device=dev)
        if full_np is not None:
            old = ring.view(-1).index_select(0, flat)
            i = torch.searchsorted(sub, old.unsqueeze(1), side="left").squeeze(1)
            i = torch.where(torch.from_numpy(full_np).to(dev), i, torch.full_like(i, w))
            left = torch.cat((sub[:, 1:], inf_col), dim=1)
            sub = torch.where(cols >= i.unsqueeze(1), left, sub)
        ring.view(-1).index_copy_(0, flat, x)
        j = torch.searchsorted(sub, x.unsqueeze(1), side="left")
        right = torch.cat((inf_col, sub[:, :-1]), dim=1)
        sub = torch.where(cols >= j, right, sub).scatter_(1, j, x.unsqueeze(1))
        srt.narrow(1, 0, w).index_copy_(0, rows, sub)
        if not want:
            return None
        k = torch.from_numpy(self._ranks(n_after)).to(dev)
        th = sub.gather(1, k.unsqueeze(1)).squeeze(1)
        if min_length > 0:
            short = torch.from_numpy(n_after < min_length).to(dev)
            th = torch.where(short, torch.full_like(th, math.nan), th)
        return th

    def thresholds(self, seq_ids: Sequence[Hashable] | torch.Tensor) -> torch.Tensor:
        """Per-sequence ``sorted(Q_i)[int((1 - p) * (len(Q_i) - 1))]``, shape ``[B]``; ``nan`` if empty."""
        return self._thresholds(self._slots(seq_ids, create=False), 0)

    def _thresholds(self, slots: np.ndarray, min_length: int) -> torch.Tensor:
        """Thresholds of the windows in ``slots`` (-1: unknown, ``nan``); ``nan`` below ``min_length`` values."""
        b = slots.shape[0]
        dev = self.device or torch.device("cpu")
        if self._sorted is None or b == 0:
            return torch.full((b,), math.nan, dtype=self.dtype, device=dev)
        length = self._lengths_np(slots)
        k = np.minimum(self._ranks(length), max(self._width - 1, 0))
        flat = np.maximum(slots, 0) * self._width + k
        empty = length < max(min_length, 1)
        if self._sorted_np is not None:
            vals = self._sorted_np.reshape(-1)[flat]  # a copy
            if empty.any():
                vals[empty] = math.nan
            return torch.from_numpy(vals)
        vals = self._sorted.view(-1).index_select(0, torch.from_numpy(flat).to(dev))
        return torch.where(torch.from_numpy(empty).to(dev), torch.full_like(vals, math.nan), vals)

    def values(self, seq_id: Hashable) -> torch.Tensor:
        """One sequence's window in arrival order (oldest first); empty for an unknown id."""
        slot = self._slot_of.get(seq_id)
        if slot is None or self._ring is None:
            return torch.empty(0, dtype=self.dtype)
        cnt = int(self._count[slot])
        cap = self.capacity
        if cnt <= cap:
            return self._ring[slot, :cnt].detach().cpu().clone()
        start = cnt % cap
        return torch.cat((self._ring[slot, start:cap], self._ring[slot, :start])).detach().cpu()

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Plain state: configuration, the ids (in slot order) and each window's values in arrival order."""
        ids = sorted(self._slot_of, key=self._slot_of.__getitem__)
        return {
            "scope": "sequence",
            "capacity": self.capacity,
            "hot_fraction": self.hot_fraction,
            "ids": ids,
            "values": [self.values(sid) for sid in ids],
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Restore every window from :meth:`state_dict`; with ``strict``, the configuration must match."""
        if state.get("scope", "sequence") != "sequence":
            raise ValueError(f"cannot load a {state.get('scope')!r}-scope window state into sequence windows")
        if strict and (int(state["capacity"]) != self.capacity or float(state["hot_fraction"]) != self.hot_fraction):
            raise ValueError(
                f"window state has capacity={state['capacity']}, hot_fraction={state['hot_fraction']}; "
                f"these windows have capacity={self.capacity}, hot_fraction={self.hot_fraction}"
            )
        self.clear()
        ids, values = list(state["ids"]), list(state["values"])
        if len(ids) != len(values):
            raise ValueError("window state: 'ids' and 'values' differ in length")
        if not ids:
            return
        vals = [torch.as_tensor(v, dtype=self.dtype).reshape(-1)[-self.capacity :] for v in values]
        slots = self._slots(ids, create=True)
        longest = max(v.shape[0] for v in vals)
        self._ensure_storage(self._n_slots, max(longest, 1), self.device or torch.device("cpu"))
        assert self._ring is not None and self._sorted is not None
        for slot, v in zip(slots.tolist(), vals, strict=True):
            n = v.shape[0]
            v = v.to(self.device)
            # arrival order from column 0: with n == capacity the next write (count % capacity = 0) evicts
            # the oldest value, as it should
            self._ring[slot, :n] = v
            self._sorted[slot, :n] = torch.sort(v).values
            self._count[slot] = n
