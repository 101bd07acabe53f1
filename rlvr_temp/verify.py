"""Answer verification: is the last ``\\boxed{}`` of a response equivalent to the ground truth?

Equivalence is decided by math-verify (``math_verify.parse`` + ``math_verify.verify``), which runs only in
worker processes: its timeouts use ``signal.alarm`` (main thread only), and some LaTeX makes sympy run for
a very long time. Every call is bounded three ways:

* the parent only looks at the last ``max_chars`` characters of a response, extracts the last ``\\boxed{}`` in
  linear time, and rejects answers longer than ``max_answer_chars`` or nested deeper than ``max_brace_depth``;
* each worker keeps math-verify's own signal timeouts, sized from a per-answer budget (``0.75 * timeout_s``);
* the parent gives each answer a hard deadline of ``timeout_s`` seconds from dispatch; a worker that overruns
  is killed and the pool rebuilt. A timeout scores 0.0 and is counted in ``Verifier.stats``.

``score()`` / ``score_batch()`` use a lazily created shared :class:`Verifier` (closed at exit); they work from
any thread. See docs/verifier.md.
"""

from __future__ import annotations

import atexit
import math
import multiprocessing as mp
import numbers
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from decimal import Decimal
from typing import Any, Literal

__all__ = ["Verifier", "extract_answer", "get_default_verifier", "last_boxed", "normalize_ground_truth"]
__all__ += ["score", "score_batch", "shape_reward"]

DEFAULT_MAX_CHARS = 16_000  # only this many trailing characters of a response are searched for a box
DEFAULT_MAX_ANSWER_CHARS = 2_000  # longer boxed answers score 0.0 without being parsed
DEFAULT_MAX_BRACE_DEPTH = 40  # deeper answers score 0.0 (math-verify mis-parses very deep nesting)

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_BRACE_TOKENS = re.compile(r"\\[\s\S]|[{}]")
_THOUSANDS_SEP = re.compile(r"(?<=\d)(?:\\,|\\ |~|\\;|\\:|\{,\})(?=\d{3}(?!\d))")
_INT_STR = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_MATH_DOLLAR = re.compile(r"(?<!\\)\$")
_DELIMS = (("\\(", "\\)"), ("\\[", "\\]"))


# --------------------------------------------------------------------------------------------- extraction
def _group_end(text: str, start: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``text[start]``, or -1; escaped ``\\{`` ``\\}`` are skipped."""
    depth = 0
    for m in _BRACE_TOKENS.finditer(text, start):
        tok = m.group()
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth == 0:
                return m.start()
    return -1


def _brace_depth(s: str) -> int:
    depth = best = 0
    for m in _BRACE_TOKENS.finditer(s):
        depth += {"{": 1, "}": -1}.get(m.group(), 0)
        best = max(best, depth)
    return best


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text`` (braces matched, linear time).

    ``\\boxed 5`` (argument without braces) yields the text up to the next ``$`` or newline. Returns None when
    there is no box, or when the last one is unbalanced (an earlier complete box is not used instead).
    """
    if not text:
        return None
    pos = {cmd: text.rfind(cmd) for cmd in _BOX_COMMANDS}
    while True:
        cmd = max(pos, key=lambda c: pos[c])
        i = pos[cmd]
        if i < 0:
            return None
        j = i + len(cmd)
        if j < len(text) and text[j].isalpha():  # e.g. \fboxsep: not a box, look further left
            pos[cmd] = text.rfind(cmd, 0, i)
            continue
        break
    k = j
    while k < len(text) and text[k].isspace():
        k += 1
    if k < len(text) and text[k] == "{":
        end = _group_end(text, k)
        return None if end < 0 else text[k + 1 : end]
    if k == j and (k >= len(text) or text[k] in "}$"):
        return None
    stops = [p for p in (text.find("$", k), text.find("\n", k)) if p >= 0]
    content = text[k : min(stops) if stops else len(text)].strip()
    return content or None


def extract_answer(response: str, max_chars: int = DEFAULT_MAX_CHARS) -> str | None:
    """:func:`last_boxed` of the last ``max_chars`` characters of ``response`` (all of it if 0)."""
    if not response:
        return None
    return last_boxed(response[-max_chars:] if max_chars > 0 else response)


def _clean(ans: str) -> str:
    """Cheap rewrites math-verify does not do itself: degree sign, thin-space thousands separators."""
    ans = ans.strip().replace("°", "^\\circ").replace("\\degree", "^\\circ")
    return _THOUSANDS_SEP.sub("", ans)


# -------------------------------------------------------------------------------------------- ground truth
def _strip_delims(s: str) -> str:
    s = _MATH_DOLLAR.sub("", s).strip()  # "$1$, $2$" -> "1, 2"; an escaped \$ stays
    changed = True
    while changed and s:
        changed = False
        for left, right in _DELIMS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s, changed = s[len(left) : len(s) - len(right)].strip(), True
                break
        for cmd in _BOX_COMMANDS:  # a single box around everything: "\\boxed{5}" -> "5"
            if not changed and s.startswith(cmd + "{") and _group_end(s, len(cmd)) == len(s) - 1:
                s, changed = s[len(cmd) + 1 : -1].strip(), True
    return s


def normalize_ground_truth(gt: Any) -> str:
    """Ground truth (int, float, Fraction, str, or list/tuple of those) as a string math-verify can parse.

    Integers and integer strings lose leading zeros and thousands commas ("025" -> "25", "1,000" -> "1000");
    integral floats become integers (27.0 -> "27"). Surrounding whitespace, unescaped ``$``, an enclosing
    ``\\(..\\)`` / ``\\[..\\]`` and a single enclosing ``\\boxed{}`` are removed. A one-element list is its
    element; a longer list (e.g. OlympiadBench ``final_answer`` with several answers) is joined with ", ",
    which math-verify compares as an unordered set. Raises ValueError for None, empty values, NaN, bools and
    unsupported types.
    """
    if gt is None:
        raise ValueError("ground truth is None")
    if hasattr(gt, "tolist") and not isinstance(gt, (str, bytes)):
        gt = gt.tolist()  # numpy scalars / arrays from datasets
    if isinstance(gt, bool):
        raise ValueError(f"ground truth must be a number, string or list, got bool {gt!r}")
    if isinstance(gt, (list, tuple)):
        parts = [normalize_ground_truth(x) for x in gt]
        if not parts:
            raise ValueError("ground truth is an empty list")
        return parts[0] if len(parts) == 1 else ", ".join(parts)
    if isinstance(gt, numbers.Integral):
        return str(int(gt))
    if isinstance(gt, numbers.Rational):  # fractions.Fraction
        return f"\\frac{{{gt.numerator}}}{{{gt.denominator}}}" if gt.denominator != 1 else str(gt.numerator)
    if isinstance(gt, Decimal) and gt.is_finite():
        return str(int(gt)) if gt == gt.to_integral_value() else format(gt, "f")
    if isinstance(gt, (numbers.Real, Decimal)):
        x = float(gt)
        if math.isnan(x):
            raise ValueError("ground truth is NaN")
        if math.isinf(x):
            return "\\infty" if x > 0 else "-\\infty"
        return str(int(x)) if x.is_integer() else format(Decimal(repr(x)), "f")
    if isinstance(gt, bytes):
        gt = gt.decode()
    if not isinstance(gt, str):
        raise ValueError(f"unsupported ground truth type {type(gt).__name__}: {gt!r:.80}")
    s = _strip_delims(gt)
    if not s:
        raise ValueError(f"ground truth is empty: {gt!r}")
    if _INT_STR.fullmatch(s):
        d = Decimal(s.replace(",", ""))
        s = str(int(d)) if d == d.to_integral_value() else format(d, "f")
    return _clean(s)


# ---------------------------------------------------------------------------------------------- rewards
def shape_reward(
    correct: float,
    *,
    mode: Literal["binary", "signed"] = "binary",
    has_boxed: bool = True,
    format_penalty: float = 0.0,
) -> float:
    """Reward from a 0/1 correctness score.

    ``"binary"``: 1.0 if correct else 0.0 (the paper's GRPO reward); ``"signed"``: +1.0 / -1.0 (DAPO).
    When ``has_boxed`` is False, ``format_penalty`` (>= 0) is subtracted, e.g. signed + 0.5 gives -1.5 for a
    response without any ``\\boxed{}``.
    """
    if mode not in ("binary", "signed"):
        raise ValueError(f"mode must be 'binary' or 'signed', got {mode!r}")
    if format_penalty < 0:
        raise ValueError(f"format_penalty must be >= 0, got {format_penalty}")
    ok = correct >= 0.5
    reward = (1.0 if ok else 0.0) if mode == "binary" else (1.0 if ok else -1.0)
    return reward - (0.0 if has_boxed else float(format_penalty))


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


def _parse_gold(gold: str, op_timeout: int) -> list:
    from math_verify import parse

    cache = _W.setdefault("gold_cache", {})  # GRPO scores a group of responses against one gold
    if gold in cache:
        return cache[gold]
    before, parsed = _W["timeouts"], []
    for wrapped in (f"\\boxed{{{gold}}}", f"${gold}$", gold):  # a bare \frac12 parses to nothing
        parsed = parse(wrapped, parsing_timeout=op_timeout)
        if parsed:
            break
    if len(cache) > 4096:
        cache.clear()
    if _W["timeouts"] == before:  # do not remember a parse cut short by a timeout
        cache[gold] = parsed
    return parsed


def _verify_job(answer: str, gold: str, budget_s: float) -> tuple[bool, bool]:
    """Runs in a worker: (equivalent, timed_out) for one cleaned answer against one normalized gold."""
    from math_verify import parse, verify

    t0 = time.monotonic()
    before = _W["timeouts"]

    def left() -> float:
        return budget_s - (time.monotonic() - t0)

    # signal.alarm takes whole seconds: at least 1 s per call; the parent's hard deadline covers the excess
    gold_parsed = _parse_gold(gold, max(1, int(left())))
    pred = parse(f"\\boxed{{{answer}}}", parsing_timeout=max(1, int(left())))
    out_of_time = False
    for g in gold_parsed:
        for p in pred:
            if left() <= 0:
                out_of_time = True
                break
            if verify(g, p, timeout_seconds=max(1, int(left()))):
                return True, False
    return False, out_of_time or _W["timeouts"] > before


# ------------------------------------------------------------------------------------------ parent side
class Verifier:
    """Scores responses against ground truths with math-verify in a pool of worker processes.

    ``timeout_s`` is the hard per-answer bound (from dispatch to a worker); a worker that overruns is killed
    and the pool rebuilt. Workers start once (in the constructor) and are reused. ``stats`` partitions the
    scored responses into no_boxed / rejected / timeouts / errors / judged (correct is a subset of judged) and
    counts pool restarts. Thread-safe: concurrent calls are serialized.
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
    ) -> None:
        if num_workers < 1 or timeout_s <= 0:
            raise ValueError("num_workers must be >= 1 and timeout_s > 0")
        self.num_workers, self.timeout_s, self.max_chars = num_workers, float(timeout_s), max_chars
        self.max_answer_chars, self.max_brace_depth = max_answer_chars, max_brace_depth
        self.memory_mb, self.start_method, self.startup_timeout_s = memory_mb, start_method, startup_timeout_s
        self._lock = threading.RLock()
        self._pool: ProcessPoolExecutor | None = None
        self._pool_pid = -1
        self._closed = False
        self._stats = dict.fromkeys(
            ("scored", "correct", "judged", "no_boxed", "rejected", "timeouts", "errors", "restarts"), 0
        )
        with self._lock:
            self._ensure_pool()

    # -- pool management
    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._closed:
            raise RuntimeError("Verifier is closed")
        if self._pool is not None and self._pool_pid == os.getpid():
            return self._pool
        pool = ProcessPoolExecutor(
            self.num_workers,
            mp_context=mp.get_context(self.start_method),
            initializer=_worker_init,
            initargs=(self.memory_mb,),
        )
        pings = [pool.submit(os.getpid) for _ in range(self.num_workers)]  # each submit spawns one worker
        done, _ = wait(pings, timeout=self.startup_timeout_s)
        if len(done) < len(pings) or any(f.exception() for f in done):
            self._kill(pool)
            raise RuntimeError(f"verifier workers failed to start within {self.startup_timeout_s} s")
        self._pool, self._pool_pid = pool, os.getpid()
        return pool

    @staticmethod
    def _kill(pool: ProcessPoolExecutor) -> None:  # no public way to kill the workers before Python 3.14
        procs = list((getattr(pool, "_processes", None) or {}).values())
        for p in procs:
            if p.is_alive():
                p.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.join(timeout=5)

    def _restart(self) -> None:
        if self._pool is not None and self._pool_pid == os.getpid():
            self._kill(self._pool)
        self._pool = None
        self._stats["restarts"] += 1

    def _run(self, fn: Callable[..., Any], jobs: Sequence[tuple]) -> list[tuple[str, Any]]:
        """Runs ``fn(*job)`` for each job in the workers; returns ("ok", value) / ("timeout" | "error", None).

        At most ``num_workers`` jobs are in flight so each one's deadline counts from when it really starts.
        """
        results: list[tuple[str, Any]] = [("error", None)] * len(jobs)
        with self._lock:
            pending = deque(range(len(jobs)))
            retries = [0] * len(jobs)
            inflight: dict[Future, tuple[int, float]] = {}
            while pending or inflight:
                pool = self._ensure_pool()
                while pending and len(inflight) < self.num_workers:
                    i = pending.popleft()
                    try:
                        fut = pool.submit(fn, *jobs[i])
                    except BrokenProcessPool:
                        pending.appendleft(i)
                        break
                    inflight[fut] = (i, time.monotonic() + self.timeout_s)
                if not inflight:  # the pool broke before anything could be submitted
                    self._restart()
                    continue
                first_deadline = min(d for _, d in inflight.values())
                done, _ = wait(list(inflight), max(0.0, first_deadline - time.monotonic()), FIRST_COMPLETED)
                broken = False
                for fut in done:
                    i, _ = inflight.pop(fut)
                    try:
                        results[i] = ("ok", fut.result())
                    except BrokenProcessPool:  # a worker died (crash, OOM kill): retry once, then error
                        broken = True
                        retries[i] += 1
                        if retries[i] <= 1:
                            pending.appendleft(i)
                    except Exception:
                        results[i] = ("error", None)
                now = time.monotonic()
                overdue = [f for f, (_, d) in inflight.items() if d <= now]
                for fut in overdue:
                    results[inflight.pop(fut)[0]] = ("timeout", None)
                if overdue or broken:
                    pending.extendleft(i for i, _ in inflight.values())  # innocent jobs: run again
                    inflight.clear()
                    self._restart()
        return results

    # -- scoring
    def score_batch(self, responses: Sequence[str | None], ground_truths: Sequence[Any]) -> list[float]:
        """1.0 / 0.0 per response: is its last ``\\boxed{}`` equivalent to the ground truth (math-verify)?"""
        if self._closed:
            raise RuntimeError("Verifier is closed")
        if len(responses) != len(ground_truths):
            raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
        golds = [normalize_ground_truth(g) for g in ground_truths]
        out = [0.0] * len(responses)
        jobs: dict[tuple[str, str], list[int]] = {}
        st = self._stats
        with self._lock:
            st["scored"] += len(responses)
            for i, (resp, gold) in enumerate(zip(responses, golds, strict=True)):
                ans = extract_answer(resp or "", self.max_chars)
                if ans is None or not ans.strip():
                    st["no_boxed"] += 1
                elif len(ans) > self.max_answer_chars or _brace_depth(ans) > self.max_brace_depth:
                    st["rejected"] += 1
                elif (ans := _clean(ans)) == gold:  # identical strings: no need for a worker
                    out[i] = 1.0
                    st["judged"] += 1
                    st["correct"] += 1
                else:
                    jobs.setdefault((ans, gold), []).append(i)
            keys = list(jobs)
            budget = 0.75 * self.timeout_s
            for (ans, gold), (status, value) in zip(
                keys, self._run(_verify_job, [(a, g, budget) for a, g in keys]), strict=True
            ):
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
            return dict(self._stats)

    def close(self) -> None:
        """Stop the worker processes. Idempotent."""
        with self._lock:
            if self._pool is not None and self._pool_pid == os.getpid():
                self._kill(self._pool)
            self._pool, self._closed = None, True

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
