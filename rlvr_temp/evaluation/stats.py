"""Bootstrap confidence intervals for held-out scores over problems and seeds (numpy only).

The data of one arm is an array ``(seeds, problems)`` — or ``(seeds, problems, metrics)`` for several scores at
once (avg@n, pass@1, pass@2, ...) — of per-problem scores, one row per training seed, columns aligned by problem
id. A bootstrap replicate resamples the seeds with replacement and the problems with replacement, and takes the
mean over the resampled seeds and problems. The interval is the percentile interval of those replicate means.

Differences between two arms share the problem resample (pairing by problem id). Seeds are paired too when both
arms ran the same seeds (:func:`bootstrap_diff` with ``paired_seeds=True``: the per-seed, per-problem differences
are resampled as one array); otherwise each arm's seeds are resampled on their own and averaged within the arm
before the difference is taken.

Every interval also carries the two-sided bootstrap p-value of "the quantity is 0" (:func:`bootstrap_terms`), which
:func:`holm` adjusts over a report's family of comparisons; verdicts compare bounds to 0 with a floating-point
tolerance (:data:`REL_TOL`, :meth:`Interval.sign`).

The per-problem estimators come first: unbiased pass@k (Chen et al. 2021, arXiv 2107.03374), maj@k and the k
reported. Runs wherever scores are summarized: the evaluation actor (rlvr_temp.evaluation.evaluate) and the
``compare`` command (rlvr_temp.evaluation.compare); pure Python and numpy. Left out: BCa and studentized intervals.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np


# ------------------------------------------------------------------------------------------------- estimators
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: ``1 - C(n-c, k) / C(n, k)``. pass@1 is
    exactly ``c / n`` (the same float as avg@n for 0/1 scores, so the two columns get the same intervals)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if k == 1:
        return c / n
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):  # numerically stable product form
        prod *= 1.0 - k / i
    return 1.0 - prod


def maj_at_k(answers: list[str | None], correct: list[float], k: int) -> float:
    """Majority vote over the first ``k`` samples' extracted answers (ties: the earliest answer wins); 1.0 if the
    voted answer is a correct one. Samples without an answer do not vote."""
    votes = [(a, c) for a, c in zip(answers[:k], correct[:k]) if a is not None]
    if not votes:
        return 0.0
    counts = Counter(a for a, _ in votes)
    best = max(counts.values())
    winner = next(a for a, _ in votes if counts[a] == best)
    return float(any(c >= 0.5 for a, c in votes if a == winner))


def k_values(n: int) -> list[int]:
    """The k of pass@k reported for ``n`` samples: 1, 2, 4, ... below ``n``, then ``n``."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return [*ks, n]


# ------------------------------------------------------------------------------------------------- bootstrap
N_BOOT = 2000  # default number of bootstrap replicates
SEED = 0  # default RNG seed: a comparison gives the same intervals every time it is run
_CHUNK_CELLS = 4_000_000  # replicates are drawn in chunks of at most this many (replicate x problem x metric) cells
# A bound within REL_TOL x scale of zero is zero (scale: the magnitude of the scores it was computed from, 1 for
# scores in [0, 1]; for a difference, both arms'). Rounding moves a replicate mean of P problems by at most about
# P x 2.2e-16 x scale (4e-12 at P = 2e4): 1e-9 absorbs that, and lies far below both the bootstrap's own Monte-Carlo
# error on a bound (~1e-3) and the smallest nonzero exact difference of avg@n means (1 / (n x P x seeds)).
REL_TOL = 1e-9


@dataclass(frozen=True)
class Interval:
    """A point estimate (the mean on the data itself, not over replicates) and its percentile interval.

    ``tol``: the floating-point tolerance of the bounds (``REL_TOL`` x the scores' magnitude; the default suits
    scores in [0, 1]): a bound within ``tol`` of a value counts as equal to it. ``p``: the two-sided bootstrap
    p-value of "the quantity is 0" (:func:`bootstrap_terms`; None for an interval built by hand)."""

    mean: float
    low: float
    high: float
    level: float = 0.95
    tol: float = REL_TOL
    p: float | None = None

    def includes(self, value: float = 0.0) -> bool:
        return self.low - self.tol <= value <= self.high + self.tol

    def sign(self) -> int:
        """+1 if the interval lies above zero, -1 if below, 0 if it includes zero.

        Decision rule: the interval excludes zero only if a bound is beyond zero by more than ``tol``
        (``low > tol`` or ``high < -tol``); a bound within ``tol`` of zero — e.g. the -6.9e-18 that rounding
        leaves where exact arithmetic gives 0 — counts as 0, so the interval contains 0. Floating-point noise can
        therefore only keep a verdict at "includes zero", never flip it, and identical inputs give one verdict
        whichever metric column they sit in."""
        return 1 if self.low > self.tol else -1 if self.high < -self.tol else 0

    def format(self, digits: int = 3, signed: bool = False) -> str:
        """``mean [low, high]`` rounded to ``digits``; a value that rounds to zero prints as 0 (no "-0.000") when
        it is within ``tol`` of 0, and keeps its sign otherwise, so the printed bounds agree with :meth:`sign`."""
        f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"

        def show(v: float) -> str:
            r = round(v, digits) + 0.0
            return f.format(math.copysign(0.0, v) if r == 0.0 and abs(v) > self.tol else r)

        return f"{show(self.mean)} [{show(self.low)}, {show(self.high)}]"


def _as_3d(values: np.ndarray | list) -> tuple[np.ndarray, bool]:
    x = np.asarray(values, dtype=float)
    if x.ndim == 1:  # one seed
        x = x[None, :]
    if x.ndim == 2:
        return x[:, :, None], True
    if x.ndim == 3:
        return x, False
    raise ValueError(f"expected (problems,), (seeds, problems) or (seeds, problems, metrics), got shape {x.shape}")


def resample_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """``(n_boot, n)`` counts: how often each of ``n`` items is drawn in each of ``n_boot`` draws of ``n`` items
    with replacement."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = idx + (np.arange(n_boot) * n)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)


def bootstrap_terms(
    terms: list[tuple[np.ndarray, float]],
    *,
    n_boot: int = N_BOOT,
    rng_seed: int = SEED,
    level: float = 0.95,
    scale: np.ndarray | None = None,
) -> list[Interval]:
    """Intervals of ``sum(sign * mean(x))`` over the terms ``(x, sign)``, each ``x`` of shape
    ``(seeds, problems, metrics)`` with the same problems (aligned) and metrics. Every replicate draws one problem
    resample shared by all terms and one seed resample per term. One interval per metric.

    Each interval's ``tol`` is ``REL_TOL * scale`` (``scale`` per metric; default: the sum over the terms of the
    largest ``|x|``). Its ``p`` is the two-sided bootstrap p-value of "the quantity is 0", the one the percentile
    interval implies (the interval at level ``1 - a`` excludes 0 about when ``p < a``), with Davison & Hinkley's
    +1: ``p = min(1, 2 * (min(#{rep <= tol}, #{rep >= -tol}) + 1) / (n_boot + 1))`` — replicates within ``tol``
    of 0 count on both sides, and ``p >= 2 / (n_boot + 1)``."""
    if not terms:
        raise ValueError("nothing to bootstrap")
    xs = [np.asarray(x, dtype=float) for x, _ in terms]
    signs = [float(s) for _, s in terms]
    n_prob, n_met = xs[0].shape[1], xs[0].shape[2]
    for x in xs:
        if x.ndim != 3 or x.shape[1:] != (n_prob, n_met) or x.shape[0] < 1:
            raise ValueError(f"terms must share (problems, metrics) = {(n_prob, n_met)}; got {x.shape}")
    if n_prob < 1:
        raise ValueError("no problems to bootstrap over")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    point = sum(s * x.mean(axis=(0, 1)) for x, s in zip(xs, signs))
    rng = np.random.default_rng(rng_seed)
    chunk = max(1, _CHUNK_CELLS // (n_prob * n_met))
    reps = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        w_prob = resample_counts(rng, n_prob, b) / n_prob  # (b, problems)
        total = np.zeros((b, n_met))
        for x, s in zip(xs, signs):
            n_seed = x.shape[0]
            w_seed = resample_counts(rng, n_seed, b) / n_seed if n_seed > 1 else np.ones((b, 1))
            per_problem = np.einsum("bs,spm->bpm", w_seed, x)  # mean over resampled seeds, per problem
            total += s * np.einsum("bpm,bp->bm", per_problem, w_prob)
        reps.append(total)
    rep = np.concatenate(reps)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(rep, [alpha, 1.0 - alpha], axis=0)
    if scale is None:
        scale = sum(abs(s) * np.abs(x).max(axis=(0, 1)) for x, s in zip(xs, signs))
    tol = REL_TOL * np.broadcast_to(np.asarray(scale, dtype=float), (n_met,))
    tail = np.minimum((rep <= tol).sum(axis=0), (rep >= -tol).sum(axis=0))
    pval = np.minimum(1.0, 2.0 * (tail + 1) / (n_boot + 1))
    return [
        Interval(float(m), float(lo), float(hi), level, float(t), float(p))
        for m, lo, hi, t, p in zip(point, low, high, tol, pval)
    ]


def bootstrap_mean(
    values: np.ndarray | list, *, n_boot: int = N_BOOT, rng_seed: int = SEED, level: float = 0.95
) -> Interval | list[Interval]:
    """Interval of the mean of ``values`` — ``(problems,)``, ``(seeds, problems)`` (one :class:`Interval`) or
    ``(seeds, problems, metrics)`` (one per metric) — resampling problems and seeds with replacement."""
    x, single = _as_3d(values)
    out = bootstrap_terms([(x, 1.0)], n_boot=n_boot, rng_seed=rng_seed, level=level)
    return out[0] if single else out


def bootstrap_diff(
    a: np.ndarray | list,
    b: np.ndarray | list,
    *,
    paired_seeds: bool,
    n_boot: int = N_BOOT,
    rng_seed: int = SEED,
    level: float = 0.95,
) -> Interval | list[Interval]:
    """Interval of ``mean(a) - mean(b)``, with ``a`` and ``b`` aligned by problem (the same columns, in the same
    order). ``paired_seeds``: row ``i`` of ``a`` and of ``b`` come from the same seed (the arms have the same
    seeds, sorted), so the differences are resampled as one array; otherwise each arm's seeds are resampled
    independently (the problem resample is shared either way)."""
    xa, single = _as_3d(a)
    xb, _ = _as_3d(b)
    if xa.shape[1:] != xb.shape[1:]:
        raise ValueError(f"arms must be aligned by problem: shapes {xa.shape} and {xb.shape}")
    if paired_seeds:
        if xa.shape[0] != xb.shape[0]:
            raise ValueError(f"paired seeds need as many seeds in each arm: {xa.shape[0]} and {xb.shape[0]}")
        terms = [(xa - xb, 1.0)]
    else:
        terms = [(xa, 1.0), (xb, -1.0)]
    scale = np.abs(xa).max(axis=(0, 1)) + np.abs(xb).max(axis=(0, 1))  # the arms' scores, not their differences
    out = bootstrap_terms(terms, n_boot=n_boot, rng_seed=rng_seed, level=level, scale=scale)
    return out[0] if single else out


def holm(pvalues: list[float], alpha: float = 0.05) -> tuple[list[float], list[bool]]:
    """Holm–Bonferroni over one family of ``m`` tests: the adjusted p-values and which hypotheses are rejected at
    family-wise error ``alpha``, in the order given. Sorted ascending, ``p_(1) <= ... <= p_(m)``; the adjusted
    ``p~_(i) = max_{j <= i} min(1, (m - j + 1) * p_(j))``; rejected iff ``p~ <= alpha`` — the same as rejecting
    while ``p_(i) <= alpha / (m - i + 1)`` and stopping at the first that is not."""
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    if m == 0:
        return [], []
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"p-values must be in [0, 1], got {list(pvalues)}")
    order = np.argsort(p, kind="stable")
    adjusted_sorted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    return [float(a) for a in adjusted], [bool(a <= alpha) for a in adjusted]


# ------------------------------------------------------------------------------------------------- per-problem scores
def aligned(scores: list[dict[str, np.ndarray]], problems: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Per-run ``{problem id: score vector}`` stacked into ``(runs, problems, metrics)`` over ``problems``
    (default: the problem ids every run has, sorted)."""
    if problems is None:
        problems = sorted(set.intersection(*(set(s) for s in scores))) if scores else []
    if not problems:
        return np.zeros((len(scores), 0, 0)), []
    return np.stack([np.stack([np.asarray(s[p], dtype=float) for p in problems]) for s in scores]), problems


def mean_intervals(
    scores: list[dict[str, np.ndarray]], *, n_boot: int = N_BOOT, rng_seed: int = SEED, level: float = 0.95
) -> tuple[list[Interval], int]:
    """One arm (one score dict per seed): intervals of its mean scores over the problems every seed evaluated, and
    the number of those problems (``[], 0`` when there are none)."""
    x, problems = aligned(scores)
    if not problems:
        return [], 0
    return bootstrap_mean(x, n_boot=n_boot, rng_seed=rng_seed, level=level), len(problems)


def diff_intervals(
    scores: list[dict[str, np.ndarray]],
    base: list[dict[str, np.ndarray]],
    *,
    paired_seeds: bool,
    n_boot: int = N_BOOT,
    rng_seed: int = SEED,
    level: float = 0.95,
) -> tuple[list[Interval], int]:
    """Intervals of ``arm - base`` over the problems both arms' seeds all evaluated, paired by problem id (and by
    seed, the lists in the same seed order, when ``paired_seeds``); and the number of those problems."""
    _, mine = aligned(scores)
    _, theirs = aligned(base)
    common = sorted(set(mine) & set(theirs))
    if not common:
        return [], 0
    xa, _ = aligned(scores, common)
    xb, _ = aligned(base, common)
    ivs = bootstrap_diff(xa, xb, paired_seeds=paired_seeds, n_boot=n_boot, rng_seed=rng_seed, level=level)
    return ivs, len(common)


def problem_scores(outcomes: dict[str, dict[str, list]], ks: list[int]) -> dict[str, np.ndarray]:
    """``{problem id: [avg, pass@k for k in ks]}`` from ``{problem id: {"correct": [score per sample], ...}}`` (an
    ``eval/step_<N>.json`` dataset entry): ``avg`` the mean score, pass@k the unbiased estimator
    (:func:`pass_at_k`) from the count of samples scoring at least 0.5."""

    out = {}
    for pid, entry in outcomes.items():
        correct = [float(c) for c in entry["correct"]]
        c = sum(x >= 0.5 for x in correct)
        out[pid] = np.array([sum(correct) / len(correct)] + [pass_at_k(len(correct), c, k) for k in ks])
    return out
