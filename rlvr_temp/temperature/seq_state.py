"""Checkpointing of :class:`~rlvr_temp.temperature.seq_window.SequenceEntropyWindows`: its windows out and back in,
and its hot fraction, which may move between steps (:meth:`SequenceWindowsState.set_hot_fraction`).

The (de)serialisation half of the per-sequence windows, mixed into the class (it reads and writes the class's
storage: the ring and sorted rows, the per-slot counts, the id -> slot map). A window is read from its ring row
in arrival order, oldest first (the ring wraps once a window is full); loading writes each window back from column
0 and sorts it once. The state holds plain tensors and Python types (``torch.save``-able), so a resumed run
continues with the same windows; it carries the current hot fraction, and loading it sets the windows'.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import torch

from .window import check_hot_fraction, check_window_state

__all__ = ["SequenceWindowsState"]


class SequenceWindowsState:
    """``values``, ``state_dict``, ``load_state_dict`` and ``set_hot_fraction`` of :class:`SequenceEntropyWindows`."""

    # what this half uses of the class's storage (set by SequenceEntropyWindows.__init__ and its storage methods,
    # with clear, _slots and _ensure_storage)
    capacity: int
    hot_fraction: float
    dtype: torch.dtype
    device: torch.device | None
    _slot_of: dict[Hashable, int]
    _n_slots: int
    _count: np.ndarray
    _ring: torch.Tensor | None
    _sorted: torch.Tensor | None
    _rank_table: np.ndarray

    def set_hot_fraction(self, hot_fraction: float) -> None:
        """Move every window's threshold rank to ``hot_fraction`` (0 < p < 1; the same p: a no-op); the windows'
        contents stay (the sorted rows serve any rank: only the rank table is rebuilt, on the next threshold)."""
        p = check_hot_fraction(hot_fraction)
        if p != self.hot_fraction:
            self.hot_fraction = p
            self._rank_table = np.zeros(0, dtype=np.int64)

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
        """Restore every window (and the hot fraction) from :meth:`state_dict`; with ``strict``, the capacity must
        match."""
        check_window_state(state, "sequence", self.capacity, strict)
        self.set_hot_fraction(state.get("hot_fraction", self.hot_fraction))
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
