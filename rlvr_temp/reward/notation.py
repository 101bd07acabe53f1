"""Programmatic notation rewritten as the LaTeX that math-verify parses.

Some bundled ground truths are written the way a Python program prints them (Minerva: ``3.83e35``,
``-1./3``, ``np.arcsin(10/13)``), and a few have stray marks (OlympiadBench: ``62.5%``, a trailing ``.``,
``t(0,4]``). math-verify does not read these as numbers, so a model that answers ``3.83 \\times 10^{35}``
would score 0. :func:`to_latex` rewrites them:

=================================  ======================================================
``3.83e35``, ``1e-05``, ``2E+3``   ``3.83 \\times 10^{35}``, ``1 \\times 10^{-5}``, ``2 \\times 10^{3}``
``-1./3``, ``3/2.``                ``-\\frac{1}{3}``, ``\\frac{3}{2}``
``5.`` (float literal)             ``5``
``np.arcsin(x)`` (also ``numpy.``,  ``\\arcsin(x)``; ``sqrt`` -> ``\\sqrt{x}``, ``exp`` -> ``e^{x}``,
``math.``)                         ``log`` -> ``\\ln(x)``, ``log10`` -> ``\\log_{10}(x)``, ``abs`` ->
                                   ``\\left|x\\right|``, ``pi`` -> ``\\pi``, ``inf`` -> ``\\infty`` ...
``x**2``, ``2**(1/3)``             ``x^{2}``, ``2^{1/3}``
``62.5%``                          ``62.5\\%``
``(-\\infty, 0) \\cup\\{1\\}.``       the trailing ``.`` removed
``t(0,4]``                         ``(0,4]`` (a letter glued to a half-open interval)
=================================  ======================================================

Pure string work in linear time (a bounded number of passes), idempotent: ``to_latex(to_latex(s)) ==
to_latex(s)``. Nothing is evaluated. Text that uses none of these notations comes back unchanged.

The numbers these golds hold are often tiny or huge, where math-verify's fixed comparison settings fail; the
worker-side helpers at the end (:func:`number_value`, :func:`comparison_precision`,
:func:`numerically_close`, run on math-verify's parse output) size them from the gold.
"""

from __future__ import annotations

import math
import re

__all__ = ["NOTATIONS", "comparison_precision", "number_value", "numerically_close", "to_latex"]

NOTATIONS = (
    "scientific",
    "numpy_float",
    "numpy_function",
    "power",
    "percent",
    "trailing_period",
    "interval_prefix",
)

_MAX_CALLS = 64  # a string with more np./math. prefixes or ** operators keeps them as they are

_SCI = re.compile(r"(?<![\w.\\])(\d+(?:\.\d*)?|\.\d+)[eE]([+-]?)(\d+)(?![\w.])")
_NP_FLOAT_FRAC = re.compile(r"(?<![\w.\\])(\d+)(\.?)[ \t]*/[ \t]*(\d+)(\.?)(?![\w.(^*])")
_FLOAT_LITERAL = re.compile(r"(?<![\w.\\])(\d+)\.(?![\w.])")
_PREFIX = re.compile(r"(?<![\w.\\])(?:np|numpy|math)\.([A-Za-z_]\w*)")
_POWER = re.compile(r"(?<!\*)\*\*(?!\*)[ \t]*")
_POWER_OPERAND = re.compile(r"[+-]?(?:\d+(?:\.\d+)?|\\?[A-Za-z]\w*)")
_PERCENT = re.compile(r"(?<!\\)%")
_PARENS = re.compile(r"[()]")
_INTERVAL_PREFIX = re.compile(r"[A-Za-z]\s*(\([^()\[\],]*,[^()\[\]]*\]|\[[^()\[\],]*,[^()\[\]]*\))")

_CONSTANTS = {"pi": "\\pi", "e": "e", "inf": "\\infty", "infty": "\\infty", "tau": "2\\pi"}
_PLAIN_FUNCS = {  # np.<name>(x) -> \<latex>(x)
    **{f: f for f in ("sin", "cos", "tan", "sec", "csc", "cot", "sinh", "cosh", "tanh", "coth")},
    **{f: f for f in ("arcsin", "arccos", "arctan")},
    **{"asin": "arcsin", "acos": "arccos", "atan": "arctan", "log": "ln", "ln": "ln"},
}
_WRAP_FUNCS = {  # np.<name>(x) -> left + x + right
    "sqrt": ("\\sqrt{", "}"),
    "cbrt": ("\\sqrt[3]{", "}"),
    "exp": ("e^{", "}"),
    "log10": ("\\log_{10}(", ")"),
    "log2": ("\\log_{2}(", ")"),
    "abs": ("\\left|", "\\right|"),
    "fabs": ("\\left|", "\\right|"),
    "absolute": ("\\left|", "\\right|"),
    "floor": ("\\lfloor ", "\\rfloor"),
    "ceil": ("\\lceil ", "\\rceil"),
}
_FN_NAMES = frozenset(_PLAIN_FUNCS) | frozenset(_WRAP_FUNCS) | {"power"}


def _paren_end(s: str, i: int, max_parens: int = 4096) -> int:
    """Index of the ``)`` that closes the ``(`` at ``s[i]``, or -1 (also after ``max_parens`` brackets)."""
    depth = 0
    for n, m in enumerate(_PARENS.finditer(s, i)):
        depth += 1 if m.group() == "(" else -1
        if depth == 0:
            return m.start()
        if n >= max_parens:
            break
    return -1


def _top_level_comma(s: str) -> int:
    depth = 0
    for j, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            return j
    return -1


def _scientific(m: re.Match[str]) -> str:
    mantissa, sign, exp = m.group(1), m.group(2), m.group(3).lstrip("0") or "0"
    if mantissa.endswith("."):
        mantissa = mantissa[:-1]
    if mantissa.startswith("."):
        mantissa = "0" + mantissa
    out = f"{mantissa} \\times 10^{{{'-' if sign == '-' and exp != '0' else ''}{exp}}}"
    before = m.string[: m.start()].rstrip()[-1:]
    after = m.string[m.end() :].lstrip()[:1]
    if before in ("/", "^", "*") or after in ("^", "*"):  # keep the precedence of 2/3e5 and 3e5**2
        out = f"\\left({out}\\right)"
    return out


def _numpy_float_fraction(m: re.Match[str]) -> str:
    if not (m.group(2) or m.group(4)):  # 10/13 (no float literal): math-verify reads it as it is
        return m.group(0)
    return f"\\frac{{{m.group(1)}}}{{{m.group(3)}}}"


def _rewrite_call(name: str, arg: str) -> str | None:
    if name in _PLAIN_FUNCS:
        return f"\\{_PLAIN_FUNCS[name]}({arg})"
    if name in _WRAP_FUNCS:
        left, right = _WRAP_FUNCS[name]
        return f"{left}{arg}{right}"
    if name == "power" and (k := _top_level_comma(arg)) >= 0:
        return f"\\left({arg[:k].strip()}\\right)^{{{arg[k + 1 :].strip()}}}"
    return None


def _numpy_functions(s: str) -> str:
    """``np.f(x)`` / ``math.f(x)`` / ``np.pi``: rightmost first, so that arguments are already rewritten."""
    for _ in range(_MAX_CALLS):
        matches = [m for m in _PREFIX.finditer(s) if m.group(1) in _CONSTANTS or m.group(1) in _FN_NAMES]
        if not matches:
            break
        m = matches[-1]
        name, j = m.group(1), m.end()
        while j < len(s) and s[j] in " \t":
            j += 1
        if j < len(s) and s[j] == "(" and name in _FN_NAMES:
            end = _paren_end(s, j)
            arg = s[j + 1 : end].strip() if end > 0 else None
            if name == "log" and arg is not None and (k := _top_level_comma(arg)) >= 0:
                new = f"\\log_{{{arg[k + 1 :].strip()}}}({arg[:k].strip()})"  # math.log(x, base)
            else:
                new = _rewrite_call(name, arg) if arg is not None else None
            if new is None:  # unbalanced: drop the prefix only
                new, end = name, m.end() - 1
            s = s[: m.start()] + new + s[end + 1 :]
        elif name in _CONSTANTS:
            s = s[: m.start()] + _CONSTANTS[name] + s[m.end() :]
        else:
            s = s[: m.start()] + name + s[m.end() :]
    return s


def _powers(s: str) -> str:
    """``a**b`` -> ``a^{b}`` where b is a number, a name, or a parenthesised group."""
    out: list[str] = []
    pos = 0
    for m in _POWER.finditer(s):
        if m.start() < pos:
            continue
        j = m.end()
        if j < len(s) and s[j] == "(":
            end = _paren_end(s, j)
            if end < 0:
                continue
            operand, nxt = s[j + 1 : end].strip(), end + 1
        elif om := _POWER_OPERAND.match(s, j):
            operand, nxt = om.group(), om.end()
        else:
            continue
        out.append(s[pos : m.start()] + f"^{{{operand}}}")
        pos = nxt
    return "".join(out) + s[pos:] if out else s


def to_latex(s: str) -> str:
    """``s`` with programmatic notation rewritten as LaTeX (see the module docstring); idempotent."""
    if not s:
        return s
    if "e" in s or "E" in s:
        s = _SCI.sub(_scientific, s)
    if 0 < s.count("np.") + s.count("numpy.") + s.count("math.") <= _MAX_CALLS:  # more: left alone
        s = _numpy_functions(s)
    if "." in s:
        s = _NP_FLOAT_FRAC.sub(_numpy_float_fraction, s)
        s = _FLOAT_LITERAL.sub(r"\1", s)
    if 0 < s.count("**") <= _MAX_CALLS:
        s = _powers(s)
    if "%" in s:
        s = _PERCENT.sub(r"\\%", s)
    s = s.strip()
    if len(s) > 1 and s.endswith(".") and s[-2] not in ".\\":
        s = s[:-1].rstrip()
    if (m := _INTERVAL_PREFIX.fullmatch(s)) is not None:
        s = m.group(1)
    return s


# ----------------------------------------------------------------------- comparing the numbers (worker side)
def number_value(parsed: list) -> complex | None:
    """The value of the first parsed candidate (math-verify ``parse`` output) that is a finite number."""
    from sympy import Expr

    for g in parsed:
        if isinstance(g, Expr) and g.is_number:
            try:
                v = complex(g.evalf(20))
            except (TypeError, ValueError, ArithmeticError):
                continue
            return v if math.isfinite(v.real) and math.isfinite(v.imag) else None
    return None


def comparison_precision(value: complex | None) -> tuple[int, int]:
    """``(float_rounding, numeric_precision)`` for ``math_verify.verify`` against a gold of this value.

    math-verify rounds floats to 6 decimals and chops differences below about 1e-15, so with its defaults a
    gold of ``5.2 \\times 10^{-25}`` equals ``5.49 \\times 10^{-25}`` and ``0.000000000255`` equals
    ``3.89 \\times 10^{-10}``. For a gold below 0.1 in size both grow with its order of magnitude (keeping
    about 5 and 15 significant digits); otherwise the defaults (6, 15) stay.
    """
    if value is None or not 0 < abs(value) < 0.1:
        return 6, 15
    k = -math.floor(math.log10(abs(value))) - 1
    return max(6, k + 5), 15 + k


def numerically_close(gold: list, gold_value: complex | None, pred: list, rel: float = 1e-9) -> bool:
    """True when the gold holds a float and a number in ``pred`` is within ``rel`` (relative) of its value.

    math-verify compares ``4.919 \\times 10^{11}`` (a float times a power of ten) with ``491900000000``
    exactly, and the float ``4.919`` is not exact, so the two differ. Exact golds (integers, fractions, surds)
    are never compared this way: ``2^{1009}`` and ``2^{1009}+1``, or ``10^{40}`` and ``10^{40}+0.5``, stay
    different.
    """
    from sympy import Basic, Expr, Float

    if gold_value is None or not any(isinstance(g, Basic) and g.has(Float) for g in gold):
        return False
    for p in pred:
        if isinstance(p, Expr) and p.is_number:
            try:
                v = complex(p.evalf(20))
            except (TypeError, ValueError, ArithmeticError):
                continue
            if abs(v - gold_value) <= rel * max(abs(v), abs(gold_value)):
                return True
    return False
