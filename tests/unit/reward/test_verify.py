"""Tests for rlvr_temp.reward.verify (CPU only; one shared 2-worker Verifier, plus one small one for timeouts)."""

from __future__ import annotations

import threading
from fractions import Fraction

import pytest

from rlvr_temp.reward import verify as V
from rlvr_temp.reward.verify import Verifier, extract_answer, last_boxed, normalize_ground_truth, shape_reward


@pytest.fixture(scope="module")
def verifier():
    with Verifier(num_workers=2, timeout_s=5.0) as v:
        yield v


def nested_frac(depth: int, leaf: str = "2") -> str:
    s = leaf
    for _ in range(depth):
        s = "\\frac{1}{" + s + "}"
    return s


# ------------------------------------------------------------------------------------------- last_boxed
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{5}.", "5"),
        (r"\boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{a\\{b}}", r"a\\{b}"),
        (r"\fbox{7} and $\boxed {8}$", "8"),
        (r"\boxed{3} \fbox{4}", "4"),
        ("$\\boxed 42$ done", "42"),
        ("answer: \\boxed 5\nnext line", "5"),
        (r"\boxed{\boxed{9}}", "9"),
        (r"\boxed{1} \fboxsep=2pt", "1"),
        (r"\boxed{}", ""),
        ("no box here", None),
        ("", None),
        (r"\boxed{1} \boxed{2", None),
        (r"\boxed{{{1}}", None),
        ("\\boxed{" * 5000, None),
        (r"\boxed", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_last_boxed_deep_nesting_is_linear():
    inner = "{" * 3000 + "1" + "}" * 3000
    assert last_boxed("x" * 100_000 + r"\boxed{" + inner + "}") == inner


def test_extract_answer_only_looks_at_the_tail():
    assert extract_answer(r"\boxed{5}" + "x" * 50, max_chars=100) == "5"
    assert extract_answer(r"\boxed{5}" + "x" * 200, max_chars=100) is None
    assert extract_answer(r"\boxed{5}" + "x" * 200, max_chars=0) == "5"


# ------------------------------------------------------------------------------------------ ground truth
@pytest.mark.parametrize(
    ("gt", "expected"),
    [
        (25, "25"),
        ("025", "25"),
        ("-007", "-7"),
        (" 42 ", "42"),
        ("$42$", "42"),
        ("$$\\frac{1}{2}$$", "\\frac{1}{2}"),
        ("\\(x+1\\)", "x+1"),
        ("\\boxed{3}", "3"),
        ("1,000", "1000"),
        ("1,234.50", "1234.50"),
        (27.0, "27"),
        (0.25, "0.25"),
        (1.5e-7, "0.00000015"),
        (Fraction(3, 4), "\\frac{3}{4}"),
        (["2"], "2"),
        (["$1$", "$2$"], "1, 2"),
        (("$(3, \\frac{\\pi}{2})$",), "(3, \\frac{\\pi}{2})"),
        ("1,2", "1,2"),
        ("$1$, $2$", "1, 2"),
        ("\\$5", "\\$5"),
        ("$$x$$", "x"),
        ("30°", "30^\\circ"),
        ("\\text{Evelyn}", "\\text{Evelyn}"),
    ],
)
def test_normalize_ground_truth(gt, expected):
    assert normalize_ground_truth(gt) == expected


@pytest.mark.parametrize("bad", [None, "", "   ", "$ $", [], [""], float("nan"), True, {"a": 1}])
def test_normalize_ground_truth_rejects(bad):
    with pytest.raises(ValueError):
        normalize_ground_truth(bad)


# ---------------------------------------------------------------------------------------------- scoring
EQUIVALENT = [
    (r"The answer is \boxed{0.5}.", r"\frac{1}{2}"),
    (r"\boxed{\frac{1}{2}}", 0.5),
    (r"\boxed{\dfrac12}", "1/2"),
    (r"\boxed{025}", 25),
    (r"\boxed{25}", "025"),
    (r"\boxed{10\text{ cm}}", 10),
    (r"\boxed{10 \mathrm{cm}}", "10"),
    (r"\boxed{\$5}", 5),
    (r"\boxed{5\%}", 5),
    (r"\boxed{30^\circ}", 30),
    (r"\boxed{30°}", 30),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"(3, \frac{\pi}{2})"),
    (r"\boxed{(3,\frac{\pi}{2})}", [r"$\left( 3, \frac{\pi}{2} \right)$"]),
    (r"\boxed{1,000}", 1000),
    (r"\boxed{1{,}000}", "1,000"),
    (r"\boxed{1\,000}", 1000),
    (r"\boxed{2.0}", 2),
    (r"\boxed{27}", 27.0),
    (r"\boxed{2, 1}", ["$1$", "$2$"]),
    (r"\boxed{x = 5}", 5),
    (r"\boxed{\sqrt{2}/2}", r"\frac{\sqrt{2}}{2}"),
    (r"\fbox{7}", 7),
    ("so $\\boxed 5$", 5),
    (r"\boxed{" + nested_frac(10) + "}", 2),
]


@pytest.mark.parametrize(("response", "gt"), EQUIVALENT)
def test_equivalent(verifier, response, gt):
    assert verifier.score(response, gt) == 1.0


NOT_EQUIVALENT = [
    (r"\boxed{5}", 6),
    (r"\boxed{\frac{1}{3}}", 0.5),
    (r"\boxed{0.333}", r"\frac13"),
    ("the answer is 5", 5),
    ("", 5),
    (None, 5),
    (r"\boxed{}", 5),
    (r"\boxed{ }", 5),
    (r"\boxed{asdf;;\\}}{", 5),
    (r"\boxed{5", 5),
    ("\u2603\u00e9\U0001f600 \\boxed{\u00e9\u2603}", 5),
    (r"\boxed{(2,1)}", r"(1,2)"),
]


@pytest.mark.parametrize(("response", "gt"), NOT_EQUIVALENT)
def test_not_equivalent(verifier, response, gt):
    assert verifier.score(response, gt) == 0.0


ADVERSARIAL = [
    ("x" * 100_000 + r"\boxed{5}", 5, 1.0),
    (r"\boxed{5}" + " " * 100_000, 5, 0.0),  # the box is outside the last max_chars characters
    (r"\boxed{" + "1" * 100_000 + "}", 1, 0.0),
    (r"\boxed{" + "{" * 3000 + "1" + "}" * 3000 + "}", 1, 0.0),
    (r"\boxed{" + nested_frac(200) + "}", r"\frac{1}{2}", 0.0),  # value 2; math-verify alone says 1/2
    ("\\boxed{" * 3000, 1, 0.0),
    ("}" * 3000 + r"\boxed{" + "}" * 3000, 1, 0.0),
    ("".join(chr(c) for c in range(0x2200, 0x2400)) * 20 + r"\boxed{\u2200\u2203}", 1, 0.0),
    (r"\boxed{" + r"\sqrt{" * 500 + "2" + "}" * 500 + "}", 2, 0.0),
    (r"\boxed{" + "(" * 2000 + "1" + ")" * 2000 + "}", 1, 0.0),
    (r"\boxed{\begin{pmatrix}" + "1&" * 2000 + r"1\end{pmatrix}}", 1, 0.0),
]


@pytest.mark.parametrize(("response", "gt", "expected"), ADVERSARIAL)
def test_adversarial_inputs_return(verifier, response, gt, expected):
    assert verifier.score(response, gt) == expected


def test_batch(verifier):
    cases = (EQUIVALENT + [(r, g) for r, g in NOT_EQUIVALENT]) * 4
    before = verifier.stats
    out = verifier.score_batch([r for r, _ in cases], [g for _, g in cases])
    assert out == ([1.0] * len(EQUIVALENT) + [0.0] * len(NOT_EQUIVALENT)) * 4
    after = verifier.stats
    delta = {k: after[k] - before[k] for k in after}
    assert delta["scored"] == len(cases)
    assert delta["correct"] == 4 * len(EQUIVALENT)
    parts = ("judged", "no_boxed", "rejected", "timeouts", "errors")
    assert sum(delta[k] for k in parts) == len(cases)
    assert delta["timeouts"] == delta["errors"] == 0


def test_batch_length_mismatch(verifier):
    with pytest.raises(ValueError):
        verifier.score_batch([r"\boxed{1}"], [1, 2])
    assert verifier.score_batch([], []) == []


def test_score_from_a_thread(verifier):
    out: list[float] = []

    def work():
        out.append(verifier.score(r"\boxed{\dfrac{1}{2}}", 0.5))
        out.append(V.score(r"\boxed{0.5}", r"\frac12"))  # creates the shared default Verifier off-main

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert out == [1.0] * 4
    default = V.get_default_verifier()
    assert default is V.get_default_verifier()
    default.close()  # do not keep its workers alive for the rest of the test session
    assert V.get_default_verifier() is not default  # a closed default is replaced on next use
    V.get_default_verifier().close()


def test_timeouts_are_bounded_and_counted():
    """Both timeouts, each certain to be the one that fires (whatever the machine's load): the worker's budget (its
    math-verify signal timeouts) is set apart from the parent's deadline, which the verifier derives from it."""
    slow = r"\boxed{9^{9^{9}}}"  # sympy would need ~370M digits
    with Verifier(num_workers=1, timeout_s=2.5) as v:
        real_run, budgets = v.pool.run, []

        def run_with_budget(budget_s):
            def run(fn, jobs, timeout_s):
                budgets.extend(job[2] for job in jobs)
                return real_run(fn, [(*job[:2], budget_s) for job in jobs], timeout_s)

            return run

        # math-verify's own signal timeout fires inside the worker (1 s budget), long before a 120 s deadline:
        # counted as a timeout, the pool kept
        v.pool.run, v.timeout_s = run_with_budget(1.0), 120.0
        assert v.score(slow, 1) == 0.0
        assert v.stats["timeouts"] == 1 and v.stats["restarts"] == 0
        assert budgets == [0.75 * 120.0]  # the budget the verifier gives a worker: 3/4 of the deadline
        # now the parent's hard deadline (0.5 s) fires first, the worker's own timeout an hour away: the worker is
        # killed and the pool rebuilt
        v.pool.run, v.timeout_s = run_with_budget(3600.0), 0.5
        assert v.score(slow, 1) == 0.0
        assert v.stats["timeouts"] == 2 and v.stats["restarts"] == 1
        v.pool.run = real_run
        assert v.score(r"\boxed{2.0}", 2) == 1.0  # the rebuilt pool works
        assert v.pool.run(pow, [(2, 10)], v.timeout_s) == [("ok", 1024)]
    with pytest.raises(RuntimeError):
        v.score(r"\boxed{1}", 1)


def test_shape_reward():
    assert shape_reward(1.0) == 1.0
    assert shape_reward(0.0) == 0.0
    assert shape_reward(1.0, mode="signed") == 1.0
    assert shape_reward(0.0, mode="signed") == -1.0
    assert shape_reward(0.0, has_boxed=False, format_penalty=0.5) == -0.5
    assert shape_reward(0.0, mode="signed", has_boxed=False, format_penalty=0.5) == -1.5
    assert shape_reward(0.0, has_boxed=True, format_penalty=0.5) == 0.0
    with pytest.raises(ValueError):
        shape_reward(1.0, mode="ternary")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        shape_reward(1.0, format_penalty=-1.0)


def test_main_module_is_restored_after_workers_start():
    import __main__

    def attrs():
        return getattr(__main__, "__file__", None), getattr(__main__, "__spec__", None)

    before = attrs()
    with Verifier(num_workers=1, start_method="spawn") as v:
        assert attrs() == before
        assert v.score(r"\boxed{3.83 \times 10^{35}}", "3.83e35") == 1.0
    assert attrs() == before
