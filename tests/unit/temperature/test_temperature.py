"""Tests of rlvr_temp.temperature against independent sort-based references (CPU, a few seconds)."""

from __future__ import annotations

import io
import math
from collections import deque

import numpy as np
import pytest
import torch

from rlvr_temp.temperature import (
    SCHEDULES,
    GlobalEntropyWindow,
    SequenceEntropyWindows,
    TokenTemperatureRule,
    authors_offsets,
    entropy_from_logits,
    expand_counts,
    group_by_temperature,
    make_schedule,
    offset_pattern,
    rollout_temperatures,
    sanitize_logits,
    token_entropies,
    token_logprobs,
)
from rlvr_temp.temperature.window import DeviceEntropyWindow


# ------------------------------------------------------------------------------------------ references
def ref_threshold(q: deque | list, hot_fraction: float) -> float:
    """The authors' definition, verbatim: sorted(Q)[int((1 - p) * (len(Q) - 1))]."""
    return sorted(q)[int((1 - hot_fraction) * (len(q) - 1))]


def entropy_trace(rng: np.random.Generator, batch: int, ties: bool) -> np.ndarray:
    x = rng.gamma(2.0, size=batch).astype(np.float32)
    if ties:
        x = np.round(x, 1).astype(np.float32)  # many exact duplicates
    return x


def ref_temperatures(h, th, req, rule_cfg, warm):
    out = []
    for hi, ti, ri, wi in zip(h, th, req, warm, strict=True):
        hot = wi and hi >= ti
        t = (rule_cfg["t_high"] if hot else rule_cfg["t_low"]) + (ri - rule_cfg["base_temperature"])
        out.append(max(np.float32(t), np.float32(1e-4)))
    return np.asarray(out, dtype=np.float32)


# ------------------------------------------------------------------------------------------ windows
@pytest.mark.parametrize(
    ("capacity", "hot_fraction", "band"),
    [(1000, 0.2, 8), (257, 0.4, 2), (3000, 0.2, 256), (7, 0.5, 1), (1, 0.2, 1)],
)
def test_global_window_matches_sorted_reference(capacity, hot_fraction, band):
    rng = np.random.default_rng(capacity)
    win = GlobalEntropyWindow(capacity, hot_fraction, band_half_width=band)
    ref: deque = deque(maxlen=capacity)
    assert math.isnan(win.threshold())
    for step in range(400):
        b = int(rng.choice([0, 1, 3, 17, 64, 130, capacity + 5])) if step % 7 == 0 else int(rng.integers(1, 80))
        x = entropy_trace(rng, b, ties=step % 3 == 0)
        if step > 200:
            x = x * (1 + step / 100)  # drift: forces the band to move
        win.push(torch.from_numpy(x))
        ref.extend(x.tolist())
        assert len(win) == len(ref)
        if ref:
            assert win.threshold() == ref_threshold(ref, hot_fraction), step
    assert win.values().tolist() == list(ref)


def test_global_window_nan_and_numpy_input():
    win = GlobalEntropyWindow(10, 0.2)
    win.push(np.array([np.nan, 1.0, 2.0]))
    win.push([3.0])
    assert win.values().tolist() == [0.0, 1.0, 2.0, 3.0]
    assert win.threshold() == ref_threshold([0.0, 1.0, 2.0, 3.0], 0.2)


def test_sequence_windows_match_reference():
    rng = np.random.default_rng(1)
    capacity, p = 24, 0.2
    wins = SequenceEntropyWindows(capacity, p)
    refs: dict = {}
    active: list = []
    next_id = 0
    for step in range(300):
        target = int(rng.integers(1, 14))
        while len(active) < target:  # sequences start
            sid = f"req-{next_id}" if next_id % 2 else next_id
            active.append(sid)
            refs[sid] = deque(maxlen=capacity)
            next_id += 1
        for _ in range(int(rng.integers(0, 3))):  # sequences finish
            if active:
                sid = active.pop(int(rng.integers(len(active))))
                wins.release(sid)
                del refs[sid]
        if not active:
            continue
        ids = list(active)
        rng.shuffle(ids)  # batch rows move around
        if step % 11 == 0:
            ids = ids + ids[:2]  # an id repeated within one push: values appended in order
        x = entropy_trace(rng, len(ids), ties=step % 2 == 0)
        wins.push(ids, torch.from_numpy(x))
        for sid, v in zip(ids, x.tolist(), strict=True):
            refs[sid].append(v)
        th = wins.thresholds(ids).tolist()
        for sid, t in zip(ids, th, strict=True):
            assert t == ref_threshold(refs[sid], p), (step, sid)
        assert wins.lengths(ids).tolist() == [len(refs[s]) for s in ids]
        assert len(wins) == len(active)
    some = active[0]
    assert wins.values(some).tolist() == list(refs[some])
    assert math.isnan(wins.thresholds(["never-seen"]).item())


class _UncachedWindows(SequenceEntropyWindows):
    """Reference: looks every id up at every call (no slot cache) and updates with torch ops only."""

    _prefer_numpy = False

    def _resolve(self, seq_ids, create):
        self._cache = None
        return super()._resolve(seq_ids, create)


def _bits(t: torch.Tensor) -> list[int]:
    return t.contiguous().view(torch.int32).tolist()  # bit patterns: NaN == NaN, 0.0 != -0.0


def test_sequence_windows_fast_path_matches_uncached_reference():
    """Slot cache + fused push/threshold + numpy updates == a fresh lookup per call with torch ops == sorted(Q),
    over a long trace where one id list object is reused unchanged, mutated in place, grown and shrunk."""
    rng = np.random.default_rng(42)
    capacity, p, warm = 9, 0.3, 4
    fast = SequenceEntropyWindows(capacity, p)
    ref = _UncachedWindows(capacity, p)
    queues: dict = {}
    batch: list = [f"s{i}" for i in range(6)]  # the one list object passed at every step
    next_id = 6
    hits = 0
    for step in range(600):
        cache_before = fast._cache
        actions = ["same", "same", "same", "replace", "restart", "swap", "grow", "shrink", "release-other", "dup"]
        action = rng.choice(actions)
        if action == "restart":  # an id gives its window back and starts again in the same row (same list)
            sid = batch[int(rng.integers(len(batch)))]
            for w in (fast, ref):
                w.release(sid)
            queues.pop(sid, None)
        elif action == "replace":  # a sequence finishes, a new one takes its row
            i = int(rng.integers(len(batch)))
            for w in (fast, ref):
                w.release(batch[i])
            queues.pop(batch[i], None)
            batch[i] = next_id if next_id % 3 == 0 else f"s{next_id}"
            next_id += 1
        elif action == "swap" and len(batch) > 1:  # rows move: same ids, same length, no release
            i, j = rng.choice(len(batch), size=2, replace=False)
            batch[i], batch[j] = batch[j], batch[i]
        elif action == "grow" and len(batch) < 12:
            batch.append(f"s{next_id}")
            next_id += 1
        elif action == "shrink" and len(batch) > 1:
            gone = batch.pop(int(rng.integers(len(batch))))
            if rng.random() < 0.5:
                for w in (fast, ref):
                    w.release(gone)
                queues.pop(gone, None)
        elif action == "release-other":  # an id outside the batch gives its slot back (or an unknown id)
            outside = [sid for sid in queues if sid not in batch]
            sid = outside[0] if outside else "never-pushed"
            for w in (fast, ref):
                w.release(sid)
            queues.pop(sid, None)
        ids = batch + batch[:2] if action == "dup" else batch  # an id repeated within one push
        x = entropy_trace(rng, len(ids), ties=step % 2 == 0)
        if step % 13 == 0:
            x[0] = np.nan  # stored as 0.0
        xin = [torch.from_numpy(x), torch.from_numpy(x.astype(np.float64)), x, x.astype(np.float64)][step % 4]
        for sid, v in zip(ids, np.nan_to_num(x, nan=0.0).tolist(), strict=True):
            queues.setdefault(sid, deque(maxlen=capacity)).append(v)
        min_length = warm if step % 3 else 0
        if step % 5 == 4:  # the separate calls, on the fast object
            fast.push(ids, xin)
            th_fast = fast.thresholds(ids)
            if min_length:
                th_fast = torch.where(fast.lengths(ids) < min_length, torch.full_like(th_fast, math.nan), th_fast)
        else:
            th_fast = fast.push_and_thresholds(ids, xin, min_length=min_length)
        th_ref = ref.push_and_thresholds(list(ids), xin, min_length=min_length)
        expected = [ref_threshold(queues[sid], p) if len(queues[sid]) >= min_length else math.nan for sid in ids]
        assert th_fast.dtype == th_ref.dtype == torch.float32
        assert _bits(th_fast) == _bits(th_ref) == _bits(torch.tensor(expected, dtype=torch.float32)), (step, action)
        assert fast.lengths(ids).tolist() == ref.lengths(ids).tolist() == [len(queues[s]) for s in ids]
        assert set(fast.ids()) == set(ref.ids()) == set(queues)
        if action == "same" and cache_before is not None and cache_before.ids == batch:
            hits += fast._cache is cache_before
    assert hits > 100  # the fast path (cached slots) was taken
    assert sorted(map(str, fast.ids())) == sorted(map(str, ref.ids()))
    for sid in batch:
        assert _bits(fast.values(sid)) == _bits(ref.values(sid)) == _bits(torch.tensor(list(queues[sid])))
    # the state format is shared: either object's state continues identically in the other kind
    a, b = _UncachedWindows(capacity, p), SequenceEntropyWindows(capacity, p)
    a.load_state_dict(fast.state_dict())
    b.load_state_dict(ref.state_dict())
    for _ in range(20):
        x = torch.from_numpy(entropy_trace(rng, len(batch), ties=True))
        outs = [w.push_and_thresholds(batch, x) for w in (fast, ref, a, b)]
        assert all(_bits(o) == _bits(outs[0]) for o in outs)


# ------------------------------------------------------------------------------------------ a moving hot fraction
def _next_p(rng: np.random.Generator) -> float:
    """A new hot fraction: extremes, tiny and large moves, repeats (a no-op) and random ones."""
    return float(rng.choice([0.01, 0.05, 0.2, 0.2000001, 0.25, 0.5, 0.73, 0.95, 0.999, rng.uniform(0.01, 0.99)]))


@pytest.mark.parametrize(("capacity", "band"), [(600, 4), (3000, 256), (64, 1), (7, 2), (1, 1)])
def test_global_window_set_hot_fraction_matches_sorted_reference(capacity, band):
    """p changes between pushes (sometimes twice before a read, sometimes with pushes between reads): every
    threshold equals sorted(Q)[int((1-p)(len-1))] bit for bit, and the contents are never touched."""
    rng = np.random.default_rng(7 * capacity + band)
    win = GlobalEntropyWindow(capacity, 0.2, band_half_width=band)
    ref: deque = deque(maxlen=capacity)
    p = 0.4
    win.set_hot_fraction(p)  # on an empty window
    assert math.isnan(win.threshold())
    for step in range(400):
        if step % 5 == 2:
            for _ in range(1 + step % 2):
                p = _next_p(rng)
                win.set_hot_fraction(p)
            assert win.hot_fraction == p
            assert win.threshold() == ref_threshold(ref, p), step
        b = int(rng.integers(1, 60)) if step % 11 else capacity + 3
        x = entropy_trace(rng, b, ties=step % 2 == 0)
        if step > 250:
            x = x * (1 + step / 100)  # drift on top of the rank moves
        win.push(torch.from_numpy(x))
        ref.extend(x.tolist())
        if step % 4 != 1:
            assert win.threshold() == ref_threshold(ref, p), step
    assert win.values().tolist() == list(ref)


def test_global_window_set_hot_fraction_keeps_the_band_when_it_can():
    rng = np.random.default_rng(9)
    win = GlobalEntropyWindow(5000, 0.2, band_half_width=256)
    x = rng.gamma(2.0, size=5000)
    win.push(x)
    ref = x.tolist()
    assert win.threshold() == ref_threshold(ref, 0.2)
    n = win.rebuilds
    win.set_hot_fraction(0.2)  # unchanged: a no-op
    assert win.threshold() == ref_threshold(ref, 0.2) and win.rebuilds == n
    win.set_hot_fraction(0.21)  # the rank moves by 50, inside the band: kept
    assert win.threshold() == ref_threshold(ref, 0.21) and win.rebuilds == n
    win.set_hot_fraction(0.6)  # far outside: re-selected once, around the new rank
    assert win.threshold() == ref_threshold(ref, 0.6) and win.rebuilds == n + 1
    assert win._half == win.band_half_width  # a rank move is not taken for drift (no widening)
    win.set_hot_fraction(0.05)
    win.set_hot_fraction(0.6)  # there and back before a read: the band still serves
    assert win.threshold() == ref_threshold(ref, 0.6) and win.rebuilds == n + 1


@pytest.mark.parametrize("windows", [SequenceEntropyWindows, "uncached"])
def test_sequence_windows_set_hot_fraction_match_sorted_reference(windows):
    """The numpy fast path and the torch / uncached path: thresholds read right after a change, and fused push +
    threshold (with a warm-up) after it, equal each sequence's sorted() reference."""
    rng = np.random.default_rng(21)
    capacity = 11
    wins = (
        SequenceEntropyWindows(capacity, 0.2) if windows is SequenceEntropyWindows else _UncachedWindows(capacity, 0.2)
    )
    queues: dict = {}
    ids: list = [f"s{i}" for i in range(5)] + [7, 8]
    p = 0.2
    for step in range(240):
        if step % 6 == 3:
            p = _next_p(rng)
            wins.set_hot_fraction(p)
            expected = [ref_threshold(queues[s], p) if s in queues else math.nan for s in ids]
            assert _bits(wins.thresholds(ids)) == _bits(torch.tensor(expected, dtype=torch.float32)), step
        if step % 17 == 16:  # a sequence restarts
            sid = ids[int(rng.integers(len(ids)))]
            wins.release(sid)
            queues.pop(sid, None)
        x = entropy_trace(rng, len(ids), ties=step % 2 == 0)
        min_length = 3 if step % 3 == 0 else 0
        th = wins.push_and_thresholds(ids, torch.from_numpy(x), min_length=min_length)
        for sid, v in zip(ids, x.tolist(), strict=True):
            queues.setdefault(sid, deque(maxlen=capacity)).append(v)
        expected = [ref_threshold(queues[s], p) if len(queues[s]) >= min_length else math.nan for s in ids]
        assert _bits(th) == _bits(torch.tensor(expected, dtype=torch.float32)), step
    for sid in ids:
        assert wins.values(sid).tolist() == list(queues[sid])


def test_device_window_set_hot_fraction_matches_sorted_reference():
    rng = np.random.default_rng(4)
    capacity, warm = 50, 5
    win = DeviceEntropyWindow(capacity, 0.2, warm, torch.zeros(0))
    assert math.isnan(win.threshold().item())
    ref: deque = deque(maxlen=capacity)
    p = 0.2
    for step in range(200):
        if step % 4 == 1:
            p = _next_p(rng)
            win.set_hot_fraction(p)
            assert win.threshold().item() == ref_threshold(ref, p), step
        x = entropy_trace(rng, int(rng.integers(1, 20)) if step % 13 else capacity + 2, ties=step % 2 == 0)
        hot = win.hot(torch.from_numpy(x))
        ref.extend(x.tolist())
        th = ref_threshold(ref, p)
        assert win.threshold().item() == th, step
        assert hot.tolist() == ([v >= th for v in x.tolist()] if len(ref) >= warm else [False] * len(x)), step
    assert win.values().tolist() == list(ref)


@pytest.mark.parametrize("bad", [0, 1, 0.0, 1.0, -0.1, 1.5, math.nan, True, "0.2", None])
def test_set_hot_fraction_validation(bad):
    for obj in (
        GlobalEntropyWindow(10),
        SequenceEntropyWindows(10),
        DeviceEntropyWindow(10, 0.2, 0, torch.zeros(0)),
        TokenTemperatureRule(window=10),
        TokenTemperatureRule(window=10, scope="sequence"),
    ):
        with pytest.raises(ValueError, match="hot_fraction"):
            obj.set_hot_fraction(bad)
        assert obj.hot_fraction == 0.2


# ------------------------------------------------------------------------------------------ token rule
@pytest.mark.parametrize(("scope", "warmup"), [("global", 0), ("global", 300), ("sequence", 0), ("sequence", 5)])
def test_token_rule_matches_reference(scope, warmup):
    rng = np.random.default_rng(7)
    cfg = {"t_low": 1.2, "t_high": 1.6, "base_temperature": 1.0}
    capacity = 500 if scope == "global" else 16
    rule = TokenTemperatureRule(hot_fraction=0.2, window=capacity, scope=scope, warmup_tokens=warmup, **cfg)
    # scope sequence: a twin whose windows take the slow path (no slot cache, torch ops), always fed tensors
    twin = TokenTemperatureRule(hot_fraction=0.2, window=capacity, scope=scope, warmup_tokens=warmup, **cfg)
    twin.window = _UncachedWindows(capacity, 0.2)
    gref: deque = deque(maxlen=capacity)
    sref: dict = {}
    active: list = list(range(6))
    next_id = 6
    for step in range(150):
        if scope == "sequence" and step % 9 == 0:
            done = active.pop(0)
            rule.release(done)
            twin.release(done)
            sref.pop(done, None)
            active.extend([next_id, next_id + 1])
            next_id += 2
        b = len(active) if scope == "sequence" else int(rng.integers(1, 40))
        h = entropy_trace(rng, b, ties=step % 4 == 0)
        req = rng.choice([0.5, 1.0, 1.1, 0.9, 0.6], size=b).astype(np.float32)
        if scope == "global":
            temps = rule.step(torch.from_numpy(h), torch.from_numpy(req))
            gref.extend(h.tolist())
            th = [ref_threshold(gref, 0.2)] * b
            warm = [len(gref) >= warmup] * b
        else:
            ids = active  # the same list object, mutated every 9 steps (as the processor's uids)
            if step % 2:  # one float request temperature (the rule's numpy path)
                req[:] = req[0]
                temps = rule.step(torch.from_numpy(h), float(req[0]), seq_ids=ids)
            else:
                temps = rule.step(torch.from_numpy(h), torch.from_numpy(req), seq_ids=ids)
            assert torch.equal(temps, twin.step(torch.from_numpy(h), torch.from_numpy(req), seq_ids=list(ids)))
            assert _bits(rule.last_threshold) == _bits(twin.last_threshold)
            assert torch.equal(rule.last_hot, twin.last_hot)
            th, warm = [], []
            for sid, v in zip(ids, h.tolist(), strict=True):
                q = sref.setdefault(sid, deque(maxlen=capacity))
                q.append(v)
                th.append(ref_threshold(q, 0.2))
                warm.append(len(q) >= warmup)
        expected = ref_temperatures(h, th, req, cfg, warm)
        assert temps.dtype == torch.float32
        assert torch.equal(temps, torch.from_numpy(expected)), step


def test_request_temperature_shift_and_clamp():
    rule = TokenTemperatureRule(t_low=0.6, t_high=1.0, window=100, base_temperature=1.0)
    h = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 5.0])  # threshold: rank int(0.8 * 5) = 4 -> 0.5
    temps = rule.step(h, 0.3)  # shift -0.7: cold 0.6 - 0.7 < 0 is clamped to 1e-4, hot 1.0 - 0.7
    assert rule.last_hot.tolist() == [False] * 4 + [True] * 2
    assert temps[:4].tolist() == [pytest.approx(1e-4)] * 4
    assert temps[4:].tolist() == [pytest.approx(0.3)] * 2
    temps = rule.step(torch.tensor([0.0, 9.0]))  # no request temperature: unshifted
    assert temps.tolist() == [pytest.approx(0.6), pytest.approx(1.0)]
    # a float request temperature and a tensor of it give identical temperatures
    for req in (0.3, 0.9, 1.0, 1.37):
        a = TokenTemperatureRule(t_low=0.6, t_high=1.0, window=100)
        b = TokenTemperatureRule(t_low=0.6, t_high=1.0, window=100)
        assert torch.equal(a.step(h, req), b.step(h, torch.full((6,), req)))


@pytest.mark.parametrize("scope", ["global", "sequence"])
def test_hot_share_matches_configured_fraction(scope):
    rng = np.random.default_rng(3)
    p = 0.2
    if scope == "global":
        rule = TokenTemperatureRule(hot_fraction=p, window=20_000, scope="global")
        hot = []
        for step in range(300):
            rule.step(torch.from_numpy(rng.gamma(2.0, size=256).astype(np.float32)))
            if step >= 100:  # steady state: window full
                hot.append(rule.last_hot.float().mean().item())
    else:
        rule = TokenTemperatureRule(hot_fraction=p, window=400, scope="sequence", warmup_tokens=50)
        ids = list(range(64))
        hot = []
        for step in range(600):
            rule.step(torch.from_numpy(rng.gamma(2.0, size=64).astype(np.float32)), seq_ids=ids)
            if step >= 100:
                hot.append(rule.last_hot.float().mean().item())
    assert abs(float(np.mean(hot)) - p) <= 0.02


def test_token_rule_validation():
    for kwargs in (
        {"t_low": 0.0},
        {"t_high": -1.0},
        {"hot_fraction": 0.0},
        {"hot_fraction": 1.0},
        {"window": 0},
        {"scope": "batch"},
        {"warmup_tokens": -1},
        {"base_temperature": float("nan")},
    ):
        with pytest.raises(ValueError):
            TokenTemperatureRule(**kwargs)
    rule = TokenTemperatureRule(scope="sequence", window=8)
    with pytest.raises(ValueError, match="seq_ids"):
        rule.step(torch.ones(2))
    with pytest.raises(ValueError):
        TokenTemperatureRule().step(torch.ones(3), torch.ones(2))


# ------------------------------------------------------------------------------------------ checkpointing
@pytest.mark.parametrize("scope", ["global", "sequence"])
def test_state_round_trip_continues_identically(scope):
    rng = np.random.default_rng(11)
    kwargs = {"window": 300 if scope == "global" else 12, "scope": scope, "warmup_tokens": 3}
    a = TokenTemperatureRule(**kwargs)
    ids = ["a", "b", "c", "d"]
    trace = [entropy_trace(rng, 4, ties=i % 2 == 0) for i in range(120)]
    for x in trace[:60]:
        a.step(torch.from_numpy(x), 1.0, seq_ids=ids)
    a.release("b")
    ids = ["a", "c", "d", "e"]
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = TokenTemperatureRule(**kwargs)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for x in trace[60:]:
        ta = a.step(torch.from_numpy(x), 1.1, seq_ids=ids)
        tb = b.step(torch.from_numpy(x), 1.1, seq_ids=ids)
        assert torch.equal(ta, tb)
        assert np.array_equal(a.last_threshold.numpy(), b.last_threshold.numpy(), equal_nan=True)
    with pytest.raises(ValueError):
        TokenTemperatureRule(window=301 if scope == "global" else 13, scope=scope, warmup_tokens=3).load_state_dict(
            a.state_dict()
        )


@pytest.mark.parametrize("scope", ["global", "sequence"])
def test_rule_hot_fraction_moves_and_its_state_carries_it(scope):
    """A rule's hot fraction moves between steps (thresholds: the sorted() reference of the kept window); a state
    saved after a move loads (strictly) into a rule made with another hot fraction, takes the saved one and
    continues identically."""
    rng = np.random.default_rng(12)
    kwargs = {"window": 200 if scope == "global" else 12, "scope": scope, "warmup_tokens": 2}
    a = TokenTemperatureRule(hot_fraction=0.2, **kwargs)
    ids = ["a", "b", "c"]
    gref: deque = deque(maxlen=kwargs["window"])
    sref: dict = {sid: deque(maxlen=kwargs["window"]) for sid in ids}
    p = 0.2
    for step in range(60):
        if step % 10 == 5:
            p = _next_p(rng)
            a.set_hot_fraction(p)
            assert a.hot_fraction == a.window.hot_fraction == a.config()["hot_fraction"] == p
        x = entropy_trace(rng, 3, ties=step % 2 == 0)
        a.step(torch.from_numpy(x), 1.0, seq_ids=ids)
        if scope == "global":
            gref.extend(x.tolist())
            expected = [ref_threshold(gref, p) if len(gref) >= 2 else math.nan] * 3
        else:
            expected = []
            for sid, v in zip(ids, x.tolist(), strict=True):
                sref[sid].append(v)
                expected.append(ref_threshold(sref[sid], p) if len(sref[sid]) >= 2 else math.nan)
        assert np.array_equal(a.last_threshold.double().numpy(), np.array(expected), equal_nan=True), step
    a.set_hot_fraction(0.45)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = TokenTemperatureRule(hot_fraction=0.2, **kwargs)
    b.load_state_dict(torch.load(buf, weights_only=True))  # strict: only the hot fraction differs
    assert b.hot_fraction == b.window.hot_fraction == 0.45 and b.config() == a.config()
    for step in range(40):
        if step % 7 == 3:
            p = _next_p(rng)
            a.set_hot_fraction(p)
            b.set_hot_fraction(p)
        x = torch.from_numpy(entropy_trace(rng, 3, ties=True))
        assert torch.equal(a.step(x, 1.1, seq_ids=ids), b.step(x, 1.1, seq_ids=ids))
        assert np.array_equal(a.last_threshold.numpy(), b.last_threshold.numpy(), equal_nan=True)
    with pytest.raises(ValueError, match="config"):  # anything else of the configuration must still match
        TokenTemperatureRule(hot_fraction=0.45, **{**kwargs, "warmup_tokens": 3}).load_state_dict(a.state_dict())


def test_window_state_sets_the_hot_fraction_and_checks_the_capacity():
    rng = np.random.default_rng(6)
    g, s = GlobalEntropyWindow(100, 0.3), SequenceEntropyWindows(10, 0.3)
    g.push(torch.from_numpy(entropy_trace(rng, 40, ties=True)))
    s.push([0, 1], torch.from_numpy(entropy_trace(rng, 2, ties=False)))
    g.set_hot_fraction(0.6)
    s.set_hot_fraction(0.6)
    g2, s2 = GlobalEntropyWindow(100, 0.1), SequenceEntropyWindows(10, 0.1)
    g2.load_state_dict(g.state_dict())
    s2.load_state_dict(s.state_dict())
    assert g2.hot_fraction == s2.hot_fraction == 0.6
    assert g2.threshold() == g.threshold() == ref_threshold(g.values().tolist(), 0.6)
    assert torch.equal(s2.thresholds([0, 1]), s.thresholds([0, 1]))
    with pytest.raises(ValueError, match="capacity"):
        GlobalEntropyWindow(99, 0.6).load_state_dict(g.state_dict())
    with pytest.raises(ValueError, match="capacity"):
        SequenceEntropyWindows(11, 0.6).load_state_dict(s.state_dict())


def test_window_state_round_trip_full_wrapping_window():
    rng = np.random.default_rng(5)
    a = GlobalEntropyWindow(100, 0.3)
    s = SequenceEntropyWindows(10, 0.3)
    for _ in range(37):
        a.push(torch.from_numpy(entropy_trace(rng, 9, ties=False)))
        s.push([0, 1], torch.from_numpy(entropy_trace(rng, 2, ties=False)))
    a2, s2 = GlobalEntropyWindow(100, 0.3), SequenceEntropyWindows(10, 0.3)
    a2.load_state_dict(a.state_dict())
    s2.load_state_dict(s.state_dict())
    for _ in range(20):
        x = torch.from_numpy(entropy_trace(rng, 9, ties=False))
        a.push(x)
        a2.push(x)
        assert a.threshold() == a2.threshold()
        y = torch.from_numpy(entropy_trace(rng, 2, ties=False))
        s.push([0, 1], y)
        s2.push([0, 1], y)
        assert torch.equal(s.thresholds([0, 1]), s2.thresholds([0, 1]))
    assert torch.equal(s.values(1), s2.values(1))


# ------------------------------------------------------------------------------------------ logits helpers
def test_sanitize_logits_gives_finite_entropies_and_temperatures():
    logits = torch.randn(5, 50)
    logits[0] = float("nan")
    logits[1, :10] = float("inf")
    logits[2, 3] = float("-inf")
    logits[3, 7] = 1e6
    clean = sanitize_logits(logits)
    assert torch.isfinite(clean).all() and clean.abs().max() <= 50
    assert torch.isnan(logits[0]).all()  # not in place by default
    h = entropy_from_logits(clean)
    assert torch.isfinite(h).all()
    assert h[0].item() == pytest.approx(math.log(50), rel=1e-5)  # all-NaN row -> uniform
    temps = TokenTemperatureRule(window=100).step(h, 1.0)
    assert torch.isfinite(temps).all() and (temps > 0).all()
    # entropy is NaN-safe even without sanitising
    raw = entropy_from_logits(logits)
    assert torch.isfinite(raw).all() and raw[0].item() == 0.0
    assert raw[1].item() == pytest.approx(math.log(10), rel=1e-5)


def test_entropy_matches_naive():
    x = torch.randn(3, 7, 33) * 3
    x[0, 0, :5] = float("-inf")
    p = torch.softmax(x.double(), -1)
    naive = -(p * torch.log_softmax(x.double(), -1)).nan_to_num(0.0).sum(-1)
    assert torch.allclose(entropy_from_logits(x).double(), naive, atol=1e-5)
    assert torch.equal(entropy_from_logits(x), token_entropies(x, 1.0))
    t = torch.rand(3, 7) + 0.5
    naive_t = -(torch.softmax(x / t[..., None], -1) * torch.log_softmax(x / t[..., None], -1)).nan_to_num(0.0).sum(-1)
    assert torch.allclose(token_entropies(x, t, chunk_size=4), naive_t, atol=1e-5)


def test_token_logprobs_matches_naive_and_scalar_equals_per_token():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 41) * 4
    ids = torch.randint(0, 41, (2, 9))
    temps = torch.rand(2, 9) * 1.5 + 0.3
    naive = torch.log_softmax(x / temps[..., None], -1).gather(-1, ids[..., None]).squeeze(-1)
    assert torch.allclose(token_logprobs(x, ids, temps, chunk_size=5), naive, atol=1e-5)
    # one scalar and an all-equal per-token tensor: bit-identical
    for t in (1.0, 1.2, 0.6):
        assert torch.equal(token_logprobs(x, ids, t), token_logprobs(x, ids, torch.full((2, 9), t)))
    # per-rollout temperatures broadcast over positions
    per_row = torch.tensor([[0.9], [1.3]])
    assert torch.equal(token_logprobs(x, ids, per_row), token_logprobs(x, ids, per_row.expand(2, 9)))
    # temperatures clamp at 1e-4 as the learner's must
    assert torch.equal(token_logprobs(x, ids, 0.0), token_logprobs(x, ids, 1e-4))
    # bf16 logits: math in fp32
    xb = x.bfloat16()
    ref_b = torch.log_softmax(xb.float() / temps[..., None], -1).gather(-1, ids[..., None]).squeeze(-1)
    out_b = token_logprobs(xb, ids, temps)
    assert out_b.dtype == torch.float32 and torch.allclose(out_b, ref_b, atol=1e-5)


def test_token_logprobs_gradient_matches_autograd():
    torch.manual_seed(1)
    x = (torch.randn(6, 13, dtype=torch.float64) * 2).requires_grad_()
    ids = torch.randint(0, 13, (6,))
    temps = torch.rand(6, dtype=torch.float64) + 0.5
    w = torch.randn(6, dtype=torch.float64)
    (token_logprobs(x, ids, temps, chunk_size=4) * w).sum().backward()
    g = x.grad.clone()
    x.grad = None
    (torch.log_softmax(x / temps[:, None], -1).gather(1, ids[:, None]).squeeze(1) * w).sum().backward()
    assert torch.allclose(g, x.grad, atol=1e-10)
    assert torch.autograd.gradcheck(
        lambda z: token_logprobs(z, ids, temps, chunk_size=4), (x.detach().requires_grad_(),)
    )
    with pytest.raises(ValueError):
        token_logprobs(x, ids[:3], 1.0)


# ------------------------------------------------------------------------------------------ mixtures
def test_authors_offsets():
    assert authors_offsets(8, 1.0) == [1.0, 1.0, 0.9, 1.1, 0.8, 1.2, 0.7, 1.3]
    assert authors_offsets(4, 0.6) == [0.6, 0.6, 0.5, 0.7]
    assert authors_offsets(1, 1.0) == [1.0]
    assert authors_offsets(5, 1.0, step=0.05) == [1.0, 1.0, 0.95, 1.05, 0.9]
    assert offset_pattern(7) == [0.0, 0.0, -0.1, 0.1, -0.2, 0.2, -0.3]
    with pytest.raises(ValueError, match="> 0"):
        authors_offsets(12, 0.5)  # 0.5 - 0.5 = 0
    with pytest.raises(ValueError):
        authors_offsets(0, 1.0)


def test_rollout_temperatures_specs():
    assert rollout_temperatures(4, 0.8, None) == [0.8] * 4
    assert rollout_temperatures(3, 1.0, "fixed") == [1.0] * 3
    assert rollout_temperatures(8, 1.0, "offsets") == [1.0, 1.0, 0.9, 1.1, 0.8, 1.2, 0.7, 1.3]
    assert rollout_temperatures(8, 1.0, {1.0: 4, 1.2: 4}) == [1.0] * 4 + [1.2] * 4
    assert rollout_temperatures(8, 1.3, {"1.0": 4, "1.2": 4}) == [1.0] * 4 + [1.2] * 4  # absolute by default
    assert rollout_temperatures(8, 1.1, {1.0: 4, 1.2: 4}, nominal_base=1.0) == [1.1] * 4 + [1.3] * 4
    assert rollout_temperatures(3, 1.0, [(0.7, 1), (1.3, 2)]) == [0.7, 1.3, 1.3]
    assert rollout_temperatures(2, 1.0, [0.9, 1.1]) == [0.9, 1.1]
    assert expand_counts({0.6: 0, 1.0: 2}) == [1.0, 1.0]
    assert group_by_temperature([1.0, 1.2, 1.0]) == {1.0: [0, 2], 1.2: [1]}
    for bad in ({1.0: 3, 1.2: 4}, {1.0: 8.0}, {-1.0: 8}, {"hot": 8}, [1.0, 1.1], "mixed", 3):
        with pytest.raises(ValueError):
            rollout_temperatures(8, 1.0, bad)
    with pytest.raises(ValueError, match="> 0"):
        rollout_temperatures(2, 0.5, {0.6: 2}, nominal_base=1.2)


# ------------------------------------------------------------------------------------------ schedules
def test_schedules_values():
    assert set(SCHEDULES) >= {"constant", "linear", "spike", "cosine"}
    const = make_schedule("constant", value=0.7)
    assert [const(s) for s in (0, 10, 1000)] == [0.7, 0.7, 0.7]
    lin = make_schedule("linear", start=1.2, end=1.4, steps=300)
    assert [lin.value(s) for s in (0, 150, 300, 1000)] == [1.2, 1.3, 1.4, 1.4]
    spike = make_schedule("spike", start=1.0, increment=0.1, every=50)
    assert [spike(s) for s in (0, 49, 50, 99, 100, 250)] == [1.0, 1.0, 1.1, 1.1, 1.2, 1.5]
    capped = make_schedule("spike", start=1.0, increment=0.1, every=50, max_value=1.15)
    assert capped(400) == 1.15
    transient = make_schedule("spike", start=1.0, increment=0.2, every=50, duration=5)
    assert [transient(s) for s in (0, 3, 50, 54, 55, 100)] == [1.0, 1.0, 1.2, 1.2, 1.0, 1.2]
    cos = make_schedule("cosine", start=1.2, end=1.4, steps=100)
    assert [cos(s) for s in (0, 50, 100, 200)] == [1.2, 1.3, 1.4, 1.4]
    assert cos(25) == pytest.approx(1.2 + 0.2 * (1 - math.cos(math.pi / 4)) / 2)
    assert make_schedule(**lin.config()) == lin


def test_schedule_validation():
    with pytest.raises(ValueError, match="unknown"):
        make_schedule("exponential")
    with pytest.raises(ValueError):
        make_schedule("linear", start=1.0, end=0.0)
    with pytest.raises(ValueError):
        make_schedule("linear", start=1.0, end=1.2, steps=0)
    with pytest.raises(ValueError):
        make_schedule("spike", every=0)
    with pytest.raises(ValueError):
        make_schedule("constant", start=1.0, bogus=3)
    with pytest.raises(ValueError):
        make_schedule("constant").value(-1)
    down = make_schedule("spike", start=0.3, increment=-0.1, every=10)
    assert down(20) == 0.1
    with pytest.raises(ValueError, match="> 0"):
        down(30)
