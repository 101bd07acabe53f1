"""Verdicts of the comparison report (issue 23, statistics): a bound of floating-point noise counts as zero, one-seed
comparisons are labelled problem-level, and the family of comparisons gets a Holm–Bonferroni verdict beside the
unadjusted one. Hand-computed values throughout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rlvr_temp.evaluation.compare import compare_runs
from rlvr_temp.evaluation.report import ONE_SEED, holm_table, verdict
from rlvr_temp.evaluation.stats import REL_TOL, Interval, bootstrap_diff, holm, pass_at_k
from tests.unit.evaluation.test_compare_stats import exact, make_run

ONE_SEED_LINE = "(problem-level interval; one seed: says nothing about seed-to-seed variation)"


def _pass1_product(n: int, c: int) -> float:
    """pass@1 as computed before the fix: the product form ``1 - prod(1 - 1/i)``, off c/n by ~1e-16."""
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - 1.0 / i
    return 1.0 - prod


def _counts(cs: list[int], n: int = 8) -> dict[str, list[float]]:
    return {f"q{i:03d}": [1.0] * c + [0.0] * (n - c) for i, c in enumerate(cs)}


# fixed vs learned, one seed, 64 problems x 8 samples: problem 0 goes 2 -> 3 correct, problems 1-6 go 7 -> 6, the rest
# stay at 5. In exact arithmetic the 97.5% quantile of the paired difference is a replicate with as many draws of
# problem 0 as of problems 1-6, i.e. exactly 0 -- the demo's "-0.031 [-0.064, +0.000]" situation.
FIXED = [2] + [7] * 6 + [5] * 57
LEARNED = [3] + [6] * 6 + [5] * 57


# ------------------------------------------------------------------------------------------------- 1. noise-proof
def test_the_demo_bound_of_minus_6_9e_18_contains_zero():
    """The demo's learned − fixed: upper bound 0.0 on avg@8 and -6.9e-18 on pass@1, one verdict for both."""
    exact0 = Interval(-0.031, -0.064, 0.0)
    noisy = Interval(-0.031, -0.064, -6.9e-18)
    assert noisy.tol == REL_TOL == 1e-9
    assert exact0.sign() == noisy.sign() == 0 and noisy.includes(0.0)
    assert exact0.format(signed=True) == noisy.format(signed=True) == "-0.031 [-0.064, +0.000]"
    line = verdict("learned", "fixed", "synthetic", ["avg@8", "pass@1"], [exact0, noisy], 0.95)
    assert line == (
        "**learned** vs fixed on `synthetic`: not distinguishable from fixed at 95% on avg@8, pass@1 "
        "(interval includes zero)"
    )
    # beyond the tolerance a sign is real, and the printed bound keeps it although it rounds to zero
    below = Interval(-0.031, -0.064, -3e-4)
    assert below.sign() == -1 and below.format(signed=True) == "-0.031 [-0.064, -0.000]"
    assert Interval(0.02, 2e-9, 0.04).sign() == 1 and Interval(0.02, 5e-10, 0.04).sign() == 0
    assert Interval(0.02, 5e-10, 0.04, tol=1e-10).sign() == 1  # the tolerance scales with the scores
    assert Interval(0.0, -5e-10, 5e-10).format(signed=True) == "+0.000 [+0.000, +0.000]"


def test_pass_at_1_is_exactly_c_over_n():
    assert all(pass_at_k(n, c, 1) == c / n for n in range(1, 33) for c in range(n + 1))
    assert _pass1_product(8, 3) - 3 / 8 == pytest.approx(-1.11e-16, rel=0.01)  # the old form's error


def test_bootstrap_bounds_of_equal_scores_agree_and_noise_is_zero():
    """avg@8, the old product-form pass@1 and pass@1 for the same outcomes: the exact columns give identical
    intervals, the noisy one a bound of -5e-18 where the others have 0, and all three the same verdict and p."""
    cols = [lambda c: c / 8, lambda c: _pass1_product(8, c), lambda c: pass_at_k(8, c, 1)]
    learned = np.array([[[f(c) for f in cols] for c in LEARNED]])  # (1 seed, 64 problems, 3 metrics)
    fixed = np.array([[[f(c) for f in cols] for c in FIXED]])
    avg, old, new = bootstrap_diff(learned, fixed, paired_seeds=True)
    assert avg.mean == -5 * 0.125 / 64 == -0.009765625
    assert avg.high == 0.0 and new == avg  # the same float scores: the same interval, tol and p
    assert -1e-15 < old.high < 0.0  # rounding noise (the demo's -6.9e-18), which used to read "lower at 95%"
    assert avg.tol == old.tol == pytest.approx(1e-9 * (0.75 + 0.875))  # REL_TOL x (max |learned| + max |fixed|)
    assert avg.sign() == old.sign() == new.sign() == 0
    assert old.p == avg.p and 0.05 < avg.p < 0.1  # replicates within tol of 0 count on both sides


def test_bootstrap_p_values_of_degenerate_differences():
    """A constant difference: p = 2 / (n_boot + 1), the smallest there is; an exactly zero one: p = 1."""
    a, b = np.full((2, 30), 0.8), np.full((2, 30), 0.2)
    assert bootstrap_diff(a, b, paired_seeds=True).p == 2 / 2001
    assert bootstrap_diff(a, b, paired_seeds=False, n_boot=99).p == 2 / 100
    assert bootstrap_diff(a, a, paired_seeds=True).p == 1.0
    # a clear effect: p agrees with the interval (excludes 0 at 95%, p < 0.05), and a null one
    rng = np.random.default_rng(3)
    base = rng.random((1, 400))
    clear = bootstrap_diff(base + 0.05 + 0.05 * rng.standard_normal((1, 400)), base, paired_seeds=True)
    null = bootstrap_diff(base + 0.05 * rng.standard_normal((1, 400)), base, paired_seeds=True)
    assert clear.sign() == 1 and clear.p == 2 / 2001
    assert null.sign() == 0 and null.p > 0.05


def test_a_noisy_one_seed_report_gives_avg_and_pass1_one_verdict(tmp_path):
    runs = [
        make_run(tmp_path, "fixed", 0, {"synthetic": _counts(FIXED)}),
        make_run(tmp_path, "learned", 0, {"synthetic": _counts(LEARNED)}),
    ]
    md = compare_runs(runs, tmp_path / "out")["table"].read_text()
    row = "| learned − fixed | problem and seed | 64 | -0.010 [-0.020, +0.000] | -0.010 [-0.020, +0.000] |"
    assert row in md
    assert "not distinguishable from fixed at 95% on avg@8, pass@1, pass@2, pass@4, pass@8" in md
    assert "lower than" not in md


# ------------------------------------------------------------------------------------------------- 2. one seed
def test_one_seed_reports_say_they_capture_problem_noise_only(tmp_path):
    runs = [
        make_run(tmp_path, "fixed", 0, {"synthetic": exact(1, 4, 40)}),
        make_run(tmp_path, "token", 0, {"synthetic": exact(3, 4, 40)}),
    ]
    runs += [make_run(tmp_path, "mixture", s, {"synthetic": exact(2, 4, 40)}) for s in (0, 1)]
    paths = compare_runs(runs, tmp_path / "out")
    md = paths["table"].read_text()
    assert f"({ONE_SEED})" == ONE_SEED_LINE
    assert "**One seed: problem noise only.** `fixed`, `token` ran a single seed" in md
    assert "it captures problem noise only and says nothing about seed-to-seed variation" in md
    assert "one seed per arm cannot tell the arms apart" in md  # as README.md says
    # the baseline has one seed, so every verdict is problem-level, the 2-seed mixture's too
    assert f"**token** vs fixed on `synthetic` {ONE_SEED_LINE}: higher than fixed at 95% on avg@4, pass@1, pass@2" in md
    assert f"**mixture** vs fixed on `synthetic` {ONE_SEED_LINE}: higher than fixed at 95% on avg@4" in md
    assert md.count("| problems only (one seed) |") == 8 and "| problems and seeds |" not in md
    page = paths["report"].read_text()
    assert (
        "<b>One seed: problem noise only.</b>" in page and page.count("<table>") == page.count("</table>") == 5
    )  # runs, arms, held-out, Δ, Holm


def test_reports_with_several_seeds_have_no_one_seed_note(tmp_path):
    runs = [
        make_run(tmp_path, a, s, {"synthetic": exact(k, 4, 40)})
        for a, k in (("fixed", 1), ("token", 3))
        for s in (0, 1)
    ]
    md = compare_runs(runs, tmp_path / "out")["table"].read_text()
    assert "One seed" not in md and "problem-level" not in md
    line = "**token** vs fixed on `synthetic`: higher than fixed at 95% on avg@4, pass@1, pass@2; not distinguishable"
    assert line in md and md.count("| problems and seeds |") == 4


# ------------------------------------------------------------------------------------------------- 3. Holm
def test_holm_against_a_hand_computed_example():
    """p = [0.01, 0.04, 0.03, 0.005], alpha 0.05, m = 4. Sorted: 0.005 <= 0.05/4 = 0.0125 reject; 0.01 <= 0.05/3
    = 0.0167 reject; 0.03 > 0.05/2 = 0.025 stop. Adjusted: 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06,
    max(1 x 0.04, 0.06) = 0.06."""
    adjusted, rejected = holm([0.01, 0.04, 0.03, 0.005], 0.05)
    assert rejected == [True, False, False, True]
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # step-down stops at the first acceptance: 0.04 <= 0.05 alone, but 0.02 > 0.05/3 comes first
    assert holm([0.02, 0.026, 0.04], 0.05) == (pytest.approx([0.06, 0.06, 0.06]), [False, False, False])
    assert holm([0.3, 0.6]) == (pytest.approx([0.6, 0.6]), [False, False])  # capped, monotone
    assert holm([0.04]) == ([0.04], [True]) and holm([]) == ([], [])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        holm([0.5, 1.5])


def test_verdict_lines_and_table_show_unadjusted_and_holm():
    ivs = [
        Interval(0.05, 0.01, 0.09, p=0.004),
        Interval(0.04, 0.002, 0.08, p=0.03),
        Interval(-0.01, -0.05, 0.03, p=0.6),
    ]
    metrics = ["avg@8", "pass@1", "pass@8"]
    adjusted, rejected = holm([iv.p for iv in ivs], 0.05)  # 0.012, 0.06, 0.6
    assert rejected == [True, False, False]
    line = verdict("token", "fixed", "s", metrics, ivs, 0.95, one_seed=True, holm=(rejected, 3))
    assert line == (
        f"**token** vs fixed on `s` {ONE_SEED_LINE}: higher than fixed at 95% on avg@8, pass@1; not distinguishable "
        "from fixed at 95% on pass@8 (interval includes zero). After Holm over 3 comparisons: higher on avg@8"
    )
    rows = [
        {
            "name": "s",
            "arm": "token",
            "base": "fixed",
            "metric": m,
            "iv": iv,
            "p_holm": a,
            "rejected": r,
            "one_seed": False,
        }
        for m, iv, a, r in zip(metrics, ivs, adjusted, rejected)
    ]
    table = holm_table(rows, 0.95)
    assert table.header[-2:] == ["Holm (3 comparisons)", "interval over"]
    over, iv_text = "problems and seeds", [iv.format(signed=True) for iv in ivs]
    assert iv_text == ["+0.050 [+0.010, +0.090]", "+0.040 [+0.002, +0.080]", "-0.010 [-0.050, +0.030]"]
    assert [r[:3] for r in table.rows] == [["`s`", "token − fixed", m] for m in metrics]
    assert [r[3:] for r in table.rows] == [
        [iv_text[0], "0.0040", "0.0120", "higher", "higher", over],
        [iv_text[1], "0.0300", "0.0600", "higher", "not distinguishable", over],  # Holm: 0.06 > 0.05
        [iv_text[2], "0.6000", "0.6000", "not distinguishable", "not distinguishable", over],
    ]


def test_report_states_the_number_of_comparisons_and_holm(tmp_path: Path):
    """2 arms vs fixed on 2 sets: (avg@4, pass@1, pass@2, pass@4) + (avg@2, pass@1, pass@2) = 7 metrics x 2 arms =
    14 comparisons. Constant differences have p = 2/2001, Holm-adjusted 14 x 2/2001 = 0.0140 <= 0.05."""
    runs = [
        make_run(tmp_path, arm, s, {"synthetic": exact(k, 4, 40), "other": exact(k // 2, 2, 30)})
        for arm, k in (("fixed", 1), ("token", 4), ("mixture", 2))
        for s in (0, 1)
    ]
    paths = compare_runs(runs, tmp_path / "out")
    md = paths["table"].read_text()
    assert "This report makes **14 comparisons** (every Δ cell above), each tested at 95% on its own" in md
    assert "about 0.7 would exclude zero by chance" in md
    assert (
        "| set | comparison | metric | Δ [95%] | bootstrap p | Holm p | unadjusted 95% | Holm (14 comparisons) |" in md
    )
    assert md.count("| `synthetic` | ") + md.count("| `other` | ") == 14
    row = "| `synthetic` | token − fixed | avg@4 | +0.750 [+0.750, +0.750] | 0.0010 | 0.0140 | higher | higher |"
    assert row in md
    zero = (
        "| `synthetic` | mixture − fixed | pass@4 | +0.000 [+0.000, +0.000] | 1.0000 | 1.0000 | not distinguishable |"
    )
    assert zero in md
    tail = "After Holm over 14 comparisons: higher on avg@4, pass@1, pass@2"
    assert f"not distinguishable from fixed at 95% on pass@4 (interval includes zero). {tail}" in md
    page = paths["report"].read_text()
    assert "<h3>Multiple comparisons</h3>" in page and "<th>Holm (14 comparisons)</th>" in page
    assert page.count("<table>") == page.count("</table>") == 7  # runs, arms, 2 held-out, 2 differences, Holm
