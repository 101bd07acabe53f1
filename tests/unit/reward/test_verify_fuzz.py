"""Fuzz test of the real Verifier: generated answers, fixed seed, each scored on its own and timed.

Equivalent pairs must score 1.0, known-false pairs 0.0 (wrong values, perturbed scientific notation, tiny
numbers, injection attempts...), and every answer, however hostile (deep nesting, huge numbers, unicode,
control characters, unbalanced braces, LaTeX that keeps sympy busy), must return without an exception and never
hang (``HANG_S``; how many took longer than the verifier's ``timeout_s`` plus a margin -- a load-dependent figure --
is reported, not asserted). ``python tests/unit/reward/test_verify_fuzz.py`` prints the figures
quoted in docs/verifier.md.
"""

from __future__ import annotations

import random
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

from rlvr_temp.reward.answers import normalize_ground_truth
from rlvr_temp.reward.notation import to_latex
from rlvr_temp.reward.verify import Verifier

SEED = 20240601
TIMEOUT_S = 2.0
MARGIN_S = 3.0  # a pool rebuild after a hard-deadline kill (~0.7 s) is paid by the next answer; 2 busy cores
#: an answer slower than this hangs: far beyond what a loaded machine adds to the bound (timeout + margin, which the
#: summary reports against), far below what the inputs that need the deadline would take without it
HANG_S = 60.0
TRUE, FALSE, ANY = 1.0, 0.0, None


def _nonsquare(rng: random.Random) -> int:
    while True:
        n = rng.randint(2, 500)
        if int(n**0.5) ** 2 != n:
            return n


def _decimal(x: Fraction | Decimal) -> str:
    return format(Decimal(x.numerator) / Decimal(x.denominator) if isinstance(x, Fraction) else x, "f")


def equivalent(rng: random.Random) -> tuple[str, object]:
    kind = rng.randrange(9)
    if kind == 0:
        n = rng.randint(-(10**6), 10**6)
        return rng.choice([str(n), f"{n}.0", f"{n:,}".replace(",", "{,}"), f"x = {n}"]), rng.choice([n, str(n)])
    if kind == 1:
        a, b = rng.randint(1, 99), rng.choice([2, 4, 5, 8, 10, 16, 20, 25])
        f = Fraction(a, b)
        ans = rng.choice([f"\\frac{{{a}}}{{{b}}}", f"\\dfrac{{{2 * a}}}{{{2 * b}}}", _decimal(f), f"{a}/{b}"])
        return ans, rng.choice([f, f"{a}/{b}", _decimal(f), f"\\frac{{{a}}}{{{b}}}"])
    if kind == 2:
        a, b = rng.randint(1, 99), rng.randint(2, 99)
        return f"\\frac{{{a}}}{{{b}}}", rng.choice([f"{a}./{b}", f"-{a}./{b}"[1:], f"{a}/{b}."])
    if kind in (3, 4):  # scientific notation, as Minerva writes it
        m, k = round(rng.uniform(1, 9.99), rng.randint(0, 3)), rng.randint(-30, 40)
        gold = f"{m}e{k}"
        value = Decimal(str(m)).scaleb(k)
        forms = [f"{m} \\times 10^{{{k}}}", f"{m} \\cdot 10^{{{k}}}", gold, f"{m}\\times10^{{{k}}}"]
        if -8 <= k <= 12:
            forms.append(_decimal(value))
        return rng.choice(forms), gold
    if kind == 5:
        n = _nonsquare(rng)
        return rng.choice([f"\\sqrt{{{n}}}", f"{n}^{{1/2}}", f"\\sqrt {{{n}}}"]), rng.choice(
            [f"np.sqrt({n})", f"\\sqrt{{{n}}}"]
        )
    if kind == 6:
        a, b = rng.randint(-50, 50), rng.randint(-50, 50)
        return f"\\left( {a}, {b} \\right)", f"({a},{b})"
    if kind == 7:
        p = rng.randint(1, 99) + rng.choice([0, 0.5])
        return rng.choice([f"{p}\\%", f"{p}"]), f"{p}%"
    a, b = rng.randint(1, 12), rng.randint(13, 20)
    return rng.choice([f"\\arcsin\\left(\\frac{{{a}}}{{{b}}}\\right)", f"\\sin^{{-1}}({a}/{b})"]), f"np.arcsin({a}/{b})"


def known_false(rng: random.Random) -> tuple[str, object]:
    kind = rng.randrange(10)
    if kind == 8:  # exact values are compared exactly, however large
        n = rng.randint(10**20, 10**40)
        return rng.choice([str(n + 1), f"{n} + 1", f"{n}.5"]), n
    if kind == 9:  # a float gold: a relative difference of 1e-6 is still a difference
        m, k = rng.randint(1000, 9999), rng.randint(8, 30)
        return str(m * 10**k + 10 ** (k - 3)), f"{m / 1000}e{k + 3}"
    if kind == 0:
        n = rng.randint(-(10**6), 10**6)
        return str(rng.choice([n + 1, n - 1, 10 * n + 1, -n if n else 3])), n
    if kind == 1:
        a, b = rng.randint(1, 99), rng.randint(2, 99)
        wrong = rng.choice([Fraction(a + 1, b), Fraction(b, a) if a != b else Fraction(a, b + 1), -Fraction(a, b)])
        return f"\\frac{{{wrong.numerator}}}{{{wrong.denominator}}}", rng.choice([f"{a}./{b}", Fraction(a, b)])
    if kind in (2, 3):
        m, k = round(rng.uniform(1, 9), 2), rng.randint(-30, 40)
        m2, k2 = rng.choice([(round(m + 0.01 * rng.randint(1, 50), 2), k), (m, k + rng.choice([-1, 1]))])
        return rng.choice([f"{m2} \\times 10^{{{k2}}}", f"{m2}e{k2}"]), f"{m}e{k}"
    if kind == 4:  # tiny numbers: math-verify's 6-decimal rounding alone would call these equal
        m, m2, k = rng.randint(11, 99), rng.randint(11, 99), rng.randint(-20, -8)
        m2 = m2 if m2 != m else m + 1
        return _decimal(Decimal(m2).scaleb(k)), f"{m / 10}e{k + 1}"
    if kind == 5:
        n = _nonsquare(rng)
        return f"\\sqrt{{{n + 1 if int((n + 1) ** 0.5) ** 2 != n + 1 else n + 2}}}", f"np.sqrt({n})"
    if kind == 6:
        a, b = rng.randint(-50, 50), rng.randint(-50, 50)
        return f"({b}, {a})" if a != b else f"({a}, {b + 1})", f"({a},{b})"
    p = rng.randint(1, 99)
    return rng.choice([f"{p + 1}\\%", f"{p + 1}"]), f"{p}%"


def _nest(d: int, leaf: str = "2") -> str:
    for _ in range(d):
        leaf = "\\frac{1}{" + leaf + "}"
    return leaf


SLOW = [  # each once: every one keeps sympy busy up to the timeout (or is rejected by the caps)
    *("{" * d + "1" + "}" * d for d in (12, 25, 40, 41, 300)),
    *(_nest(d) for d in (30, 110, 200)),
    "(" * 2000 + "1" + ")" * 2000,
    "\\sqrt{" * 500 + "2" + "}" * 500,
    *("9^{9^{9}}", "10^{10^{10}}", "10^{-10^{10}}", "2^{2^{2^{2^{2^{2}}}}}", "1000000!", "(10^{100})!"),
    "\\sum_{k=1}^{10^{9}} k^{k}",
    "(x+y+z)^{60}",
    "\\sin(" * 30 + "1" + ")" * 30,
    "\\begin{pmatrix}" + "\\\\".join("&".join("x" for _ in range(25)) for _ in range(25)) + "\\end{pmatrix}",
    "+".join(f"\\frac{{1}}{{{i}}}" for i in range(1, 300)),
    "\\lim_{x\\to 0} \\frac{\\sin(x^{99})}{x^{99}}",
]


def hostile(rng: random.Random, marker: Path) -> tuple[str, object, float | None]:
    """Fast hostile answers (the slow kinds are in SLOW, each used once)."""
    kind = rng.randrange(9)
    if kind == 0:  # nesting beyond the brace cap: rejected at once
        d = rng.randint(41, 3000)
        return rng.choice(["{" * d + "1" + "}" * d, _nest(d), "\\boxed{" * d]), 7, FALSE
    if kind == 1:
        return rng.choice([str(rng.randint(10**400, 10**401)), "9" * rng.randint(500, 1900), "1e999999"]), 7, FALSE
    if kind == 2:
        chars = [chr(rng.randint(0x80, 0x2FFF)) for _ in range(rng.randint(1, 60))]
        chars += rng.sample(["\u200b", "\u202e", "\u0301", "\ufeff", "\U0001f600", "\ud800", "π", "√", "∞"], 3)
        rng.shuffle(chars)
        return "".join(chars), 7, FALSE
    if kind == 3:
        return (
            "".join(chr(rng.randint(0, 31)) if rng.random() < 0.5 else rng.choice("1x+{}") for _ in range(40)),
            7,
            ANY,
        )
    if kind == 4:
        return "".join(rng.choice("{}{}[]()\\^_x1") for _ in range(rng.randint(1, 200))), 7, ANY
    if kind == 5:
        inject = [
            f"__import__('os').system('touch {marker}')",
            f"eval(\"__import__('os').system('touch {marker}')\")",
            f'exec(\'open("{marker}", "w")\')',
            f"\\immediate\\write18{{touch {marker}}}",
            "\\input{/etc/passwd}",
            "().__class__.__bases__[0].__subclasses__()",
            f"np.sqrt(__import__('os').system('touch {marker}'))",
            f"lambda: open('{marker}', 'w')",
        ]
        return rng.choice(inject), 7, FALSE
    if kind == 6:
        return rng.choice(["\\frac{1}{0}", "0/0", "\\infty - \\infty", "\\log(0)", "\\sqrt{-1}", "i^{i}"]), 7, FALSE
    if kind == 7:
        return "x" * rng.randint(2001, 5000), 7, FALSE  # over the 2,000-character cap: rejected
    toks = ["\\frac", "{", "}", "^", "_", "\\sqrt", "\\left(", "\\right)", "x", "+", "-", "1", "2", "\\pi", "e", "."]
    return "".join(rng.choice(toks) for _ in range(rng.randint(1, 60))), 7, ANY


def cases(marker: Path, n_each: int = 340) -> list[tuple[str, str, object, float | None]]:
    """(category, answer, ground truth, expected score or None) with a fixed seed."""
    rng = random.Random(SEED)
    out = [("equivalent", *equivalent(rng), TRUE) for _ in range(n_each)]
    out += [("known_false", *known_false(rng), FALSE) for _ in range(n_each)]
    out += [("hostile", *hostile(rng, marker)) for _ in range(n_each)]
    out += [("slow", ans, 7, FALSE) for ans in SLOW]
    rng.shuffle(out)
    return out


def run(marker: Path, n_each: int = 340) -> dict:
    todo = cases(marker, n_each)
    report: dict = {"count": len(todo), "exceptions": [], "wrong": [], "over_bound": [], "slow": [], "max_s": 0.0}
    t_all = time.perf_counter()
    with Verifier(num_workers=2, timeout_s=TIMEOUT_S) as v:
        for cat, ans, gold, expected in todo:
            response = rng_wrap(ans)
            t0 = time.perf_counter()
            try:
                got = v.score(response, gold)
            except Exception as e:
                report["exceptions"].append((cat, ans[:80], repr(e)[:200]))
                continue
            took = time.perf_counter() - t0
            report["max_s"] = max(report["max_s"], took)
            if took > TIMEOUT_S + MARGIN_S:
                report["slow"].append((cat, ans[:80], round(took, 2)))
            if took > HANG_S:
                report["over_bound"].append((cat, ans[:80], round(took, 2)))
            if expected is not None and got != expected:
                report["wrong"].append((cat, ans[:80], str(gold)[:40], got))
        report["stats"] = v.stats
    report["seconds"] = time.perf_counter() - t_all
    return report


def rng_wrap(ans: str) -> str:
    return f"Let me think. ... Therefore the final answer is $\\boxed{{{ans}}}$."


def test_fuzz_verifier(tmp_path):
    marker = tmp_path / "pwned"
    report = run(marker)
    print(summary(report))
    assert report["count"] >= 1000
    assert report["exceptions"] == []
    assert report["over_bound"] == []
    assert report["wrong"] == []
    assert not marker.exists()
    assert report["stats"]["errors"] == 0


def test_fuzz_notation_and_normalisation():
    rng = random.Random(SEED)
    alphabet = "0123456789.eE+-*/()[]{}%^_\\ ,npsqrtlogxabc"
    for _ in range(20_000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        s = rng.choice([s, "np." + s, s + "e5", "math.log(" + s, s + "**2"])
        out = to_latex(s)
        assert to_latex(out) == out, s
        try:
            gold = normalize_ground_truth(s)
        except ValueError:
            continue  # empty after stripping: rejected by design
        assert normalize_ground_truth(gold) == gold, s


def summary(r: dict) -> str:
    st = r["stats"]
    return (
        f"{r['count']} answers in {r['seconds']:.1f} s; max per answer {r['max_s']:.2f} s "
        f"(bound {TIMEOUT_S + MARGIN_S:.1f} s, over it {len(r['slow'])}; a hang past {HANG_S:.0f} s fails); "
        f"timeouts {st['timeouts']}, restarts {st['restarts']}, "
        f"rejected {st['rejected']}, no_boxed {st['no_boxed']}, correct {st['correct']}; "
        f"exceptions {len(r['exceptions'])}, over bound {len(r['over_bound'])}, wrong {len(r['wrong'])}"
    )


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        rep = run(Path(d) / "pwned")
    print(summary(rep))
    for key in ("exceptions", "over_bound", "slow", "wrong"):
        for item in rep[key]:
            print(key, item)
