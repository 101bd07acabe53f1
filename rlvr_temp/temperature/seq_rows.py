"""Storage helpers of :class:`~rlvr_temp.temperature.seq_window.SequenceEntropyWindows`.

The windows live in two ``[slots, width]`` buffers: the *ring* (values in arrival order) and the *sorted* rows
(each row ascending, ``+inf`` padded). This module holds the per-call slot cache and the two kernels that push
one value into each of a batch of distinct rows -- evicting the oldest value of a full window, then inserting
the new one at its ``searchsorted`` position -- over numpy views of CPU buffers or with torch ops on any device.
Both kernels give the same values; they return the batch's sorted rows (active prefix) after the push.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["NUMPY_DTYPES", "SlotCache", "push_rows_numpy", "push_rows_torch"]

NUMPY_DTYPES = (torch.float16, torch.float32, torch.float64)  # storage dtypes the numpy path can view


class SlotCache:
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


def push_rows_numpy(
    ring: np.ndarray,
    srt: np.ndarray,
    slots: np.ndarray,
    x: np.ndarray,
    start: int,
    w: int,
    pos: np.ndarray,
    full: np.ndarray | None,
    ar: np.ndarray,
) -> np.ndarray:
    """Push ``x[i]`` into row ``slots[i]`` through numpy views: ``ring`` is the flat ring, ``srt`` the sorted rows.

    ``start``: first slot when the slots are consecutive (the rows are then updated through a view), else -1;
    ``w``: the active prefix of the sorted rows; ``pos``: flat ring indices written now; ``full``: rows whose
    window is full (their oldest value, ``ring[pos]``, is evicted), None if none is; ``ar``: ``arange(B)``.
    """
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
    sub[ar, j] = x
    if start < 0:
        srt[slots, :w] = sub
    return sub


def push_rows_torch(
    ring: torch.Tensor,
    srt: torch.Tensor,
    rows: torch.Tensor,
    x: torch.Tensor,
    w: int,
    pos: np.ndarray,
    full_np: np.ndarray | None,
) -> torch.Tensor:
    """Push ``x[i]`` into row ``rows[i]`` with torch ops (same arguments as :func:`push_rows_numpy`)."""
    dev = srt.device
    # flat indices into the ring (index_select / index_copy_ are much faster than advanced indexing)
    flat = torch.from_numpy(pos).to(dev)
    sub = srt.narrow(1, 0, w).index_select(0, rows)
    cols = torch.arange(w, device=dev)
    inf_col = torch.full((rows.shape[0], 1), math.inf, dtype=srt.dtype, device=dev)
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
    return sub
