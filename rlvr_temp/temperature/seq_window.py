"""Per-sequence sliding entropy windows (scope ``sequence``), with the exact quantile threshold of ``window.py``.

One window per sequence (scope ``sequence``; the paper's second mode with ``window = 2 x max_response_len``). All
windows live in two ``[slots, width]`` tensors (arrival order and sorted order, padded with ``+inf``) on one device
(the GPU when the rollout runs there); one push inserts one value per row with a batched ``searchsorted`` and a
shift over the active prefix, so it is a handful of batched array ops whatever the batch size (numpy views of the
buffers on the CPU, torch ops elsewhere). The slots of an unchanged id list are cached, and ``push_and_thresholds``
does a decode step in one call. The slot cache and the row-update kernels live in ``seq_rows.py``.

NaN entropies are sanitised to 0.0 on entry; ``values``, ``state_dict`` and ``load_state_dict`` (plain tensors and
Python types, so a resumed run continues with the same windows) and ``set_hot_fraction`` (the rank may move between
steps; the windows stay) live in ``seq_state.py``. An empty window's threshold is ``nan``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import torch

from .seq_rows import NUMPY_DTYPES, SlotCache, push_rows_numpy, push_rows_torch
from .seq_state import SequenceWindowsState
from .window import _check_args

__all__ = ["SequenceEntropyWindows"]


class SequenceEntropyWindows(SequenceWindowsState):
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
        hot_fraction: Share of the window at or above the threshold (paper: 0.2); see ``set_hot_fraction``.
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
        self._np_dtype = torch.empty(0, dtype=dtype).numpy().dtype if dtype in NUMPY_DTYPES else None
        self._rank_table = np.zeros(0, dtype=np.int64)  # _rank_table[n] = quantile rank for n values
        self._gen = 0  # bumped whenever an id gets or gives back a slot (invalidates the slot cache)
        self._cache: SlotCache | None = None

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
        return self._prefer_numpy and dev is not None and dev.type == "cpu" and self.dtype in NUMPY_DTYPES

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

    def _resolve(self, seq_ids: Iterable[Hashable] | torch.Tensor, create: bool) -> SlotCache:
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
        c = SlotCache(ids, np.asarray(out, dtype=np.int64), self._gen)
        self._cache = c
        return c

    def _slots(self, seq_ids: Iterable[Hashable] | torch.Tensor, create: bool) -> np.ndarray:
        return self._resolve(seq_ids, create).slots

    def _flat_base(self, c: SlotCache) -> np.ndarray:
        if c.width != self._width:
            c.flat_base = c.slots * self._width
            c.width = self._width
        return c.flat_base

    def _rows(self, c: SlotCache) -> torch.Tensor:
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
        self, slots: np.ndarray, x: torch.Tensor | np.ndarray, c: SlotCache | None, want: bool, min_length: int
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
            assert self._ring_np is not None
            ar = c.ar if c is not None else np.arange(b)
            sub = push_rows_numpy(self._ring_np, self._sorted_np, slots, x, start, w, pos, full, ar)
            if not want:
                return None
            th = sub[ar, self._ranks(n_after)]
            if min_length > 0:
                th[n_after < min_length] = math.nan
            return torch.from_numpy(th)
        dev = self.device
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x).to(dev)
        assert self._ring is not None and self._sorted is not None
        rows = self._rows(c) if c is not None else torch.from_numpy(slots).to(dev)
        sub_t = push_rows_torch(self._ring, self._sorted, rows, x, w, pos, full)
        if not want:
            return None
        k = torch.from_numpy(self._ranks(n_after)).to(dev)
        th_t = sub_t.gather(1, k.unsqueeze(1)).squeeze(1)
        if min_length > 0:
            short = torch.from_numpy(n_after < min_length).to(dev)
            th_t = torch.where(short, torch.full_like(th_t, math.nan), th_t)
        return th_t

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
