"""Tests for rlvr_temp.reward.notation (programmatic notation -> LaTeX) and the bundled sets' self-agreement.

``python tests/unit/reward/test_notation.py [set ...]`` prints the agreement table of docs/verifier.md: for each bundled
eval set, the share of rows whose raw ground truth (and, where the raw form is Python notation, an
independent sympy LaTeX rendering of it) verifies as correct against the ground truth normalised without
(before) and with (after) the notation rewrites.
"""

from __future__ import annotations

import ast
import sys
import time
from typing import Any

import pytest

from rlvr_temp.reward.answers import normalize_ground_truth
from rlvr_temp.reward.notation import to_latex
from rlvr_temp.reward.verify import Verifier

EVAL_SETS = ("aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench", "gsm8k")


@pytest.fixture(scope="module")
def verifier():
    with Verifier(num_workers=2, timeout_s=5.0) as v:
        yield v


# ------------------------------------------------------------------------------------------- to_latex
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("3.83e35", r"3.83 \times 10^{35}"),
        ("4e33", r"4 \times 10^{33}"),
        ("1e-05", r"1 \times 10^{-5}"),
        ("2E+3", r"2 \times 10^{3}"),
        ("1.e5", r"1 \times 10^{5}"),
        (".5e2", r"0.5 \times 10^{2}"),
        ("2/3e5", r"2/\left(3 \times 10^{5}\right)"),
        ("3e5**2", r"\left(3 \times 10^{5}\right)^{2}"),
        ("3e8 m/s", r"3 \times 10^{8} m/s"),
        ("-1./3", r"-\frac{1}{3}"),
        ("-3./2", r"-\frac{3}{2}"),
        ("1./3.", r"\frac{1}{3}"),
        ("5.", "5"),
        ("np.arcsin(10/13)", r"\arcsin(10/13)"),
        ("np.sqrt(np.pi)", r"\sqrt{\pi}"),
        ("numpy.exp(-2*t)", "e^{-2*t}"),
        ("np.log(2)", r"\ln(2)"),
        ("math.log(8, 2)", r"\log_{2}(8)"),
        ("np.log10(5)", r"\log_{10}(5)"),
        ("np.abs(x-1)", r"\left|x-1\right|"),
        ("np.power(2, 10)", r"\left(2\right)^{10}"),
        ("math.floor(2.5)", r"\lfloor 2.5\rfloor"),
        ("2*np.pi", r"2*\pi"),
        ("np.inf", r"\infty"),
        ("x**2", "x^{2}"),
        ("2**(1/3)", "2^{1/3}"),
        ("2**-3", "2^{-3}"),
        ("62.5%", r"62.5\%"),
        (r"(-\infty, 0) \cup\{1\}.", r"(-\infty, 0) \cup\{1\}"),
        ("t(0,4]", "(0,4]"),
    ],
)
def test_to_latex(raw, expected):
    assert to_latex(raw) == expected
    assert to_latex(expected) == expected


@pytest.mark.parametrize(
    "unchanged",
    [
        "1.5",
        "10/13",
        "f(0,4)",
        "(0,4]",
        "e5",
        "1e5x",
        "0x1e5",
        r"(1 - 3e^{-2t} + 2e^{-5t}) u(t)",
        r"\frac{1}{2a}(\exp{a*t} - \exp{-a*t})",
        r"\ldots",
        r"8 \%",
        r"\$32,\!348",
        "np.foo(3)",
        "",
    ],
)
def test_to_latex_leaves_latex_alone(unchanged):
    assert to_latex(unchanged) == unchanged


def test_to_latex_does_not_hang_on_long_input():
    """A hang guard (catastrophic regex backtracking would take hours), not a speed test: the bound is loose."""
    tail = "x" * 100_000
    for s in (
        "np.sqrt(" * 20_000,
        "np.sqrt(" * 64 + tail,
        "2**(" * 20_000,
        "2**(" * 64 + "(" * 100_000,
        "1" * 200_000 + "e",
        "t(" + "1," * 50_000,
        "1./" * 50_000,
        "1e5 " * 50_000,
    ):
        t0 = time.perf_counter()
        to_latex(s)
        assert time.perf_counter() - t0 < 30.0, s[:20]


def test_normalize_ground_truth_notation_switch():
    assert normalize_ground_truth("3.83e35") == r"3.83 \times 10^{35}"
    assert normalize_ground_truth("3.83e35", notation=False) == "3.83e35"
    assert normalize_ground_truth(["$-1./3$"]) == r"-\frac{1}{3}"
    assert normalize_ground_truth(1.5e-7) == "0.00000015"  # floats never get an exponent


def test_comparison_helpers():
    from math_verify import parse

    from rlvr_temp.reward.notation import comparison_precision, number_value, numerically_close

    assert comparison_precision(None) == comparison_precision(0.5) == comparison_precision(1e30) == (6, 15)
    assert comparison_precision(0.05) == (6, 16)
    assert comparison_precision(3.89e-10) == (14, 24)
    gold = parse(r"\boxed{4.919 \times 10^{11}}")
    value = number_value(gold)
    assert value is not None and abs(value - 4.919e11) < 1
    assert numerically_close(gold, value, parse(r"\boxed{491900000000}"))
    assert not numerically_close(gold, value, parse(r"\boxed{491900100000}"))  # 2e-7 relative
    exact = parse(r"\boxed{10^{40}}")
    assert not numerically_close(exact, number_value(exact), parse(r"\boxed{10^{40} + 0.5}"))
    assert number_value(parse(r"\boxed{x + 1}")) is None


# ---------------------------------------------------------------------------------- scoring both ways
BOTH_WAYS = [  # raw ground truth, LaTeX answers that must score 1, answers that must score 0
    ("3.83e35", [r"3.83 \times 10^{35}", r"3.83 \cdot 10^{35}", "3.83e35", "383" + "0" * 33], [r"3.8 \times 10^{35}"]),
    ("4e33", [r"4 \times 10^{33}", r"4.0 \times 10^{33}", "4e33"], [r"4.5 \times 10^{33}", r"4 \times 10^{32}"]),
    ("1e-5", [r"10^{-5}", r"1 \times 10^{-5}", "0.00001"], [r"10^{-6}", r"2 \times 10^{-5}"]),
    ("3.89e-10", [r"3.89 \times 10^{-10}", "0.000000000389"], ["0.000000000255", "0", r"3.9 \times 10^{-10}"]),
    ("2.7778e-6", [r"2.7778 \times 10^{-6}", "0.0000027778"], [r"2.7 \times 10^{-6}", "0.0000027"]),
    ("-1./3", [r"-\frac{1}{3}", r"\frac{-1}{3}", "-1/3", "-1./3"], [r"\frac{1}{3}", "-0.33"]),
    ("-3./2", [r"-\frac{3}{2}", "-1.5"], [r"\frac{3}{2}", r"-\frac{2}{3}"]),
    (
        "np.arcsin(10/13)",
        [r"\arcsin\left(\frac{10}{13}\right)", r"\sin^{-1}\left(\frac{10}{13}\right)", "np.arcsin(10/13)"],
        [r"\arccos\left(\frac{10}{13}\right)", r"\arcsin\left(\frac{10}{14}\right)", r"\frac{10}{13}"],
    ),
    ("np.sqrt(2)/2", [r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}"], [r"\sqrt{2}", r"\frac{\sqrt{3}}{2}"]),
    ("np.pi/4", [r"\frac{\pi}{4}", r"\pi/4"], [r"\frac{\pi}{3}"]),
    ("np.exp(2)", ["e^{2}", r"e^2", r"\exp(2)"], ["e^{3}", "2e"]),
    ("np.log(3)", [r"\ln 3", r"\ln(3)"], [r"\log_{10} 3", r"\ln 4"]),
    ("2**10", ["1024", "2^{10}"], ["1023", "2^{11}"]),
    ("62.5%", [r"62.5\%", "62.5", "0.625", r"\frac{5}{8}"], ["63", r"6.25\%"]),
    (["$t(0,4]$"], ["(0,4]", r"t \in (0,4]"], ["(0,4)", "[0,4]"]),
    ([r"$(-\infty, 0) \cup\{1\}$."], [r"(-\infty,0)\cup\{1\}"], [r"(-\infty,0)\cup\{2\}"]),
    ("41.8", [r"41.8^\circ", r"41.8^{\circ}", r"41.8 \text{ degrees}"], ["41.9"]),  # degrees are ignored
    ("1.6", [r"1.6 \mathrm{~cm}", r"1.6 \text{ cm}"], [r"1.7 \mathrm{~cm}"]),  # units are ignored
    (r"18.8^{\circ}", ["18.8", r"18.8^\circ"], ["18.9"]),
]


@pytest.mark.parametrize(("raw", "right", "wrong"), BOTH_WAYS)
def test_notation_scores_both_ways(verifier, raw, right, wrong):
    responses = [f"so \\boxed{{{a}}}" for a in right + wrong]
    scores = verifier.score_batch(responses, [raw] * len(responses))
    assert scores == [1.0] * len(right) + [0.0] * len(wrong), list(zip(right + wrong, scores, strict=True))


def test_raw_gold_scores_zero_without_notation():
    with Verifier(num_workers=1, timeout_s=5.0, notation=False) as v:  # what the old verifier did
        assert v.score(r"\boxed{3.83 \times 10^{35}}", "3.83e35") == 0.0
        assert v.score(r"\boxed{-\frac{1}{3}}", "-1./3") == 0.0


# --------------------------------------------------------------------------------- bundled agreement
_FUNCS = {"arcsin": "asin", "arccos": "acos", "arctan": "atan", "sqrt": "sqrt", "exp": "exp", "log": "log"}
_FUNCS |= {f: f for f in ("sin", "cos", "tan")}


def latex_rendering(raw: str) -> str | None:
    """LaTeX for a ground truth in Python notation (``3.83e35``, ``-1./3``, ``np.arcsin(10/13)``), built
    independently of rlvr_temp.reward.notation: parsed with ``ast`` (never evaluated) into sympy, printed by
    ``sympy.latex``. None when ``raw`` is not such an expression."""
    import sympy

    try:
        tree = ast.parse(raw.strip(), mode="eval").body
    except SyntaxError:
        return None
    ops = {ast.Add: sympy.Add, ast.Mult: sympy.Mul, ast.Pow: sympy.Pow}

    def build(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            text = ast.get_source_segment(raw.strip(), node) or ""
            if "_" in text:
                raise ValueError(text)
            if (isinstance(node.value, float) and text.endswith(".")) or isinstance(node.value, int):
                return sympy.Integer(int(node.value))
            return sympy.Float(text, 15)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -build(node.operand) if isinstance(node.op, ast.USub) else build(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            return build(node.left) / build(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub):
            return build(node.left) - build(node.right)
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](build(node.left), build(node.right))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.attr in ("pi", "e"):
            return sympy.pi if node.attr == "pi" else sympy.E
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _FUNCS:
            return getattr(sympy, _FUNCS[node.func.attr])(*[build(a) for a in node.args])
        raise ValueError(ast.dump(node))

    try:
        expr = build(tree)
    except (ValueError, TypeError):
        return None
    return sympy.latex(expr, inv_trig_style="full")


def rendering(plain: str, normalised: str) -> str | None:
    """A LaTeX rendering of a gold the rewrites changed: :func:`latex_rendering` of the raw form when it is
    Python notation, else ``sympy.latex`` of what math-verify parses from the normalised gold."""
    if (out := latex_rendering(plain)) is not None:
        return out
    import sympy
    from math_verify import parse

    parsed = parse(f"\\boxed{{{normalised}}}")
    return sympy.latex(parsed[0]) if parsed and isinstance(parsed[0], sympy.Basic) else None


def bundled_golds(name: str) -> list[Any]:
    """The raw answer values of a bundled set, as load_prompts extracts them (before any normalisation)."""
    from rlvr_temp.data import sources as data

    ds = data.load_prompts(name)
    return list(ds["ground_truth_raw"])


def agreement(names: tuple[str, ...] = EVAL_SETS, verifier: Verifier | None = None) -> dict[str, dict]:
    """Per set: rows, golds the notation rewrites change, and how many raw golds (and LaTeX renderings of the
    changed ones) verify against the gold normalised before (``notation=False``) / after the rewrites."""
    own = verifier is None
    v = verifier or Verifier(num_workers=2, timeout_s=5.0)
    old = Verifier(num_workers=2, timeout_s=5.0, notation=False)
    out = {}
    try:
        for name in names:
            t0 = time.perf_counter()
            raws = bundled_golds(name)
            plain = [normalize_ground_truth(r, notation=False) for r in raws]
            new = [normalize_ground_truth(r) for r in raws]
            changed = [i for i, (a, b) in enumerate(zip(plain, new, strict=True)) if a != b]
            renders = {i: r for i in changed if (r := rendering(plain[i], new[i])) is not None}
            box = [f"\\boxed{{{p}}}" for p in plain]
            row = {"rows": len(raws), "changed": len(changed), "rendered": len(renders)}
            row["raw_before"] = sum(old.score_batch(box, plain))
            after = v.score_batch(box, new)
            row["raw_after"] = sum(after)
            row["failures"] = [plain[i] for i, s in enumerate(after) if s < 1]
            rbox = [f"\\boxed{{{r}}}" for r in renders.values()]
            row["latex_before"] = sum(old.score_batch(rbox, [plain[i] for i in renders]))
            row["latex_after"] = sum(v.score_batch(rbox, [new[i] for i in renders]))
            row["examples"] = [(plain[i], new[i], renders.get(i)) for i in changed]
            row["seconds"] = time.perf_counter() - t0
            out[name] = row
    finally:
        old.close()
        if own:
            v.close()
    return out


def test_every_eval_set_agrees_with_itself_after_normalisation(verifier):
    result = agreement(EVAL_SETS, verifier)
    for name, r in result.items():
        assert r["raw_before"] == r["raw_after"] == r["rows"], (name, r["failures"])
        assert r["latex_after"] == r["rendered"] == r["changed"], name
    assert result["minerva"]["changed"] == 61 and result["minerva"]["latex_before"] == 0
    assert result["olympiadbench"]["changed"] == 4
    assert sum(r["changed"] for r in result.values()) == 65


def test_normalisation_is_idempotent_on_bundled_sets():
    for name in EVAL_SETS:
        for raw in bundled_golds(name):
            gold = normalize_ground_truth(raw)
            assert normalize_ground_truth(gold) == gold, (name, raw)


def _table(result: dict[str, dict]) -> str:
    def pct(k: int, n: int) -> str:
        return f"{k}/{n} ({100 * k / n:.1f}%)" if n else "-"

    lines = [
        "| set | rows | golds rewritten | raw gold: before | raw gold: after | LaTeX rendering: before | after |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result.items():
        n, m = r["rows"], r["rendered"]
        lines.append(
            f"| {name} | {n} | {r['changed']} | {pct(int(r['raw_before']), n)} | {pct(int(r['raw_after']), n)} "
            f"| {pct(int(r['latex_before']), m)} | {pct(int(r['latex_after']), m)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    res = agreement(tuple(sys.argv[1:]) or EVAL_SETS)
    print(_table(res))
    for set_name, r in res.items():
        print(f"{set_name}: {r['seconds']:.1f} s; raw golds not verified after: {r['failures']}")
        for raw, new, latex in r["examples"]:
            print(f"    {raw!r} -> {new!r}; rendering {latex!r}")
