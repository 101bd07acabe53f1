"""Answer verification: is the last ``\\boxed{}`` of a response equivalent to the ground truth?

Equivalence is decided by math-verify (``math_verify.parse`` + ``math_verify.verify``), which runs only in
worker processes: its timeouts use ``signal.alarm`` (main thread only; docs/stack.md), and some LaTeX makes
sympy run for a very long time. Every call is bounded three ways:

* the parent only looks at the last ``max_chars`` characters of a response, extracts the last ``\\boxed{}`` in
  linear time, and rejects answers longer than ``max_answer_chars`` or nested deeper than ``max_brace_depth``;
* each worker keeps math-verify's own signal timeouts, sized from a per-answer budget (``0.75 * timeout_s``);
* the parent gives each answer a hard deadline of ``timeout_s`` seconds from dispatch; a worker that overruns
  is killed and the pool rebuilt. A timeout scores 0.0 and is counted in ``Verifier.stats``.

The :class:`Verifier` runs in the calling process (the driver's trainer, an evaluation); its jobs run in the
workers of a hang-proof pool (:mod:`rlvr_temp.reward.pool`: hard deadlines, rebuilds). ``score()`` /
``score_batch()`` use a lazily created shared :class:`Verifier` (closed at exit); they work from any thread and any
calling context: the pool's workers never re-run the caller's main module (a script without ``if __name__ ==
"__main__":``, ``python -``, a notebook, a Ray actor). Answer extraction and ground-truth normalisation live in
:mod:`rlvr_temp.reward.answers` (re-exported here). See docs/verifier.md.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from rlvr_temp.reward.answers import (
    DEFAULT_MAX_CHARS,
    brace_depth,
    clean_answer,
    extract_answer,
    last_boxed,
    normalize_ground_truth,
    shape_reward,
)
from rlvr_temp.reward.notation import comparison_precision, number_value, numerically_close
from rlvr_temp.reward.pool import WorkerPool

__all__ = ["Verifier", "extract_answer", "get_default_verifier", "last_boxed", "normalize_ground_truth"]
__all__ += ["score", "score_batch", "shape_reward"]

DEFAULT_MAX_ANSWER_CHARS = 2_000  # longer boxed answers score 0.0 without being parsed
DEFAULT_MAX_BRACE_DEPTH = 40  # deeper answers score 0.0 (math-verify mis-parses very deep nesting)


# ------------------------------------------------------------------------------------ worker-process side
_W: dict[str, Any] = {}


def _worker_init(memory_mb: int) -> None:
    """Pool initializer: import math-verify once, silence its logs (counting timeouts), cap memory."""
    import logging
    import warnings

    import math_verify  # noqa: F401  (import cost paid here, once per worker)

    warnings.simplefilter("ignore")

    class _TimeoutCounter(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:  # never formats the (possibly huge) message
            if isinstance(record.msg, str) and record.msg.startswith("Timeout during"):
                _W["timeouts"] += 1

    _W["timeouts"] = 0
    for name, level in (("math_verify", logging.WARNING), ("latex2sympy2_extended", logging.CRITICAL + 1)):
        log = logging.getLogger(name)  # math-verify logs the whole input on a timeout: never print it
        log.handlers[:] = [_TimeoutCounter(level)] if name == "math_verify" else []
        log.setLevel(level)
        log.propagate = False
    if memory_mb > 0:
        try:
            import resource

            with open("/proc/self/statm") as f:
                base = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            limit = base + memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (OSError, ValueError, ImportError):
            pass
    _verify_job("x + \\frac{1}{2}", "0.5", 30.0)  # warm up sympy's lazy initialisation (~0.3 s)


def _within(seconds: float, fn: Callable[[], Any], default: Any) -> Any:
    """``fn()`` under a SIGALRM timer (worker main thread, outside math-verify's own alarms), else default."""
    import signal

    def expire(*_: object) -> None:
        raise TimeoutError

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(0.05, seconds))
    try:
        return fn()
    except TimeoutError:
        _W["timeouts"] += 1
        return default
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _parse_gold(gold: str, op_timeout: int) -> tuple[list, complex | None]:
    """(parsed candidates, numeric value or None) of one normalized gold, cached per worker."""
    from math_verify import parse

    cache = _W.setdefault("gold_cache", {})  # GRPO scores a group of responses against one gold
    if gold in cache:
        return cache[gold]
    before, parsed = _W["timeouts"], []
    for wrapped in (f"\\boxed{{{gold}}}", f"${gold}$", gold):  # a bare \frac12 parses to nothing
        parsed = parse(wrapped, parsing_timeout=op_timeout)
        if parsed:
            break
    if gold.endswith("\\%") and len(gold) > 2:  # 62.5\% also accepts 62.5 (as 62.5 accepts 62.5\%)
        parsed = list(parsed) + parse(f"\\boxed{{{gold[:-2]}}}", parsing_timeout=op_timeout)
    result = (parsed, _within(op_timeout, lambda: number_value(parsed), None))
    if len(cache) > 4096:
        cache.clear()
    if _W["timeouts"] == before:  # do not remember a parse cut short by a timeout
        cache[gold] = result
    return result


def _verify_job(answer: str, gold: str, budget_s: float) -> tuple[bool, bool]:
    """Runs in a worker: (equivalent, timed_out) for one cleaned answer against one normalized gold."""
    from math_verify import parse, verify

    t0 = time.monotonic()
    before = _W["timeouts"]

    def left() -> float:
        return budget_s - (time.monotonic() - t0)

    # signal.alarm takes whole seconds: at least 1 s per call; the parent's hard deadline covers the excess
    gold_parsed, value = _parse_gold(gold, max(1, int(left())))
    rounding, precision = comparison_precision(value)  # tiny golds: more digits (rlvr_temp.reward.notation)
    pred = parse(f"\\boxed{{{answer}}}", parsing_timeout=max(1, int(left())))
    for g in gold_parsed:
        for p in pred:
            if left() <= 0:
                return False, True
            if verify(g, p, float_rounding=rounding, numeric_precision=precision, timeout_seconds=max(1, int(left()))):
                return True, False
    if value is not None and left() > 0 and _within(left(), lambda: numerically_close(gold_parsed, value, pred), 0):
        return True, False
    return False, left() <= 0 or _W["timeouts"] > before


# ------------------------------------------------------------------------------------------ parent side
class Verifier:
    """Scores responses against ground truths with math-verify in a pool of worker processes.

    ``timeout_s`` is the hard per-answer bound (from dispatch to a worker); a worker that overruns is killed
    and the pool rebuilt (:class:`rlvr_temp.reward.pool.WorkerPool`, ``pool``). Workers start once (in the
    constructor) and are reused. ``stats`` partitions the scored responses into no_boxed / rejected / timeouts /
    errors / judged (correct is a subset of judged) and counts pool restarts. Thread-safe: concurrent calls are
    serialized.
    """

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        max_chars: int = DEFAULT_MAX_CHARS,
        *,
        max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
        max_brace_depth: int = DEFAULT_MAX_BRACE_DEPTH,
        memory_mb: int = 2048,
        start_method: str = "forkserver",
        startup_timeout_s: float = 120.0,
        notation: bool = True,
    ) -> None:
        if num_workers < 1 or timeout_s <= 0:
            raise ValueError("num_workers must be >= 1 and timeout_s > 0")
        self.notation = notation  # rewrite 3.83e35, -1./3, np.sqrt(2) ... as LaTeX (rlvr_temp.reward.notation)
        self.num_workers, self.timeout_s, self.max_chars = num_workers, float(timeout_s), max_chars
        self.max_answer_chars, self.max_brace_depth = max_answer_chars, max_brace_depth
        self.memory_mb, self.start_method, self.startup_timeout_s = memory_mb, start_method, startup_timeout_s
        self._lock = threading.RLock()
        self._closed = False
        self._stats = dict.fromkeys(("scored", "correct", "judged", "no_boxed", "rejected", "timeouts", "errors"), 0)
        self.pool = WorkerPool(
            num_workers,
            initializer=_worker_init,
            initargs=(memory_mb,),
            start_method=start_method,
            startup_timeout_s=startup_timeout_s,
            name="verifier",
        )

    # -- scoring
    def score_batch(self, responses: Sequence[str | None], ground_truths: Sequence[Any]) -> list[float]:
        """1.0 / 0.0 per response: is its last ``\\boxed{}`` equivalent to the ground truth (math-verify)?"""
        if self._closed:
            raise RuntimeError("Verifier is closed")
        if len(responses) != len(ground_truths):
            raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
        golds = [normalize_ground_truth(g, notation=self.notation) for g in ground_truths]
        out = [0.0] * len(responses)
        jobs: dict[tuple[str, str], list[int]] = {}
        st = self._stats
        with self._lock:
            st["scored"] += len(responses)
            for i, (resp, gold) in enumerate(zip(responses, golds, strict=True)):
                ans = extract_answer(resp or "", self.max_chars)
                if ans is None or not ans.strip():
                    st["no_boxed"] += 1
                elif len(ans) > self.max_answer_chars or brace_depth(ans) > self.max_brace_depth:
                    st["rejected"] += 1
                elif (ans := clean_answer(ans, notation=self.notation)) == gold:  # identical: no worker
                    out[i] = 1.0
                    st["judged"] += 1
                    st["correct"] += 1
                else:
                    jobs.setdefault((ans, gold), []).append(i)
            keys = list(jobs)
            budget = 0.75 * self.timeout_s
            outcomes = self.pool.run(_verify_job, [(a, g, budget) for a, g in keys], self.timeout_s)
            for (ans, gold), (status, value) in zip(keys, outcomes, strict=True):
                idx = jobs[(ans, gold)]
                if status == "ok" and value[1]:
                    status = "timeout"  # a math-verify timeout inside the worker
                st[{"ok": "judged", "timeout": "timeouts", "error": "errors"}[status]] += len(idx)
                if status == "ok" and value[0]:
                    st["correct"] += len(idx)
                    for i in idx:
                        out[i] = 1.0
        return out

    def score(self, response: str | None, ground_truth: Any) -> float:
        """Score one response (see :meth:`score_batch`)."""
        return self.score_batch([response], [ground_truth])[0]

    @property
    def stats(self) -> dict[str, int]:
        """Counts since creation: scored, correct, judged, no_boxed, rejected, timeouts, errors, restarts."""
        with self._lock:
            return {**self._stats, "restarts": self.pool.restarts}

    def close(self) -> None:
        """Stop the worker processes. Idempotent."""
        with self._lock:
            self.pool.close()
            self._closed = True

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------- module defaults
_DEFAULT: Verifier | None = None
_DEFAULT_LOCK = threading.Lock()


def get_default_verifier() -> Verifier:
    """The shared Verifier behind :func:`score` (created on first use, closed at interpreter exit)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None or _DEFAULT._closed:
            _DEFAULT = Verifier()
            atexit.register(_DEFAULT.close)
        return _DEFAULT


def score(response: str | None, ground_truth: Any) -> float:
    """1.0 if the last ``\\boxed{}`` of ``response`` is equivalent to ``ground_truth``, else 0.0."""
    return get_default_verifier().score(response, ground_truth)


def score_batch(responses: Sequence[str | None], ground_truths: Sequence[Any]) -> list[float]:
    """:meth:`Verifier.score_batch` on the shared default Verifier."""
    return get_default_verifier().score_batch(responses, ground_truths)
