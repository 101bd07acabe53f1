"""Answer extraction and normalisation: the last ``\\boxed{}`` of a response, ground truths as strings
math-verify can parse, and the reward shaped from a correctness score.

Pure string work, no worker processes: :mod:`rlvr_temp.reward.verify` builds its
:class:`~rlvr_temp.reward.verify.Verifier` on these helpers and re-exports the public ones (``from
rlvr_temp.reward.verify import last_boxed`` keeps working).
"""

from __future__ import annotations

import math
import numbers
import re
from decimal import Decimal
from typing import Any, Literal

from rlvr_temp.reward.notation import to_latex

__all__ = ["DEFAULT_MAX_CHARS", "brace_depth", "clean_answer", "extract_answer", "last_boxed"]
__all__ += ["normalize_ground_truth", "shape_reward"]

DEFAULT_MAX_CHARS = 16_000  # only this many trailing characters of a response are searched for a box

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


def brace_depth(s: str) -> int:
    """Deepest nesting of unescaped ``{}`` in ``s``."""
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


def clean_answer(ans: str, *, notation: bool = True) -> str:
    """Cheap rewrites math-verify does not do itself: degree sign, thin-space thousands separators and,
    with ``notation``, programmatic notation (``3.83e35``, ``-1./3``, ``np.sqrt(2)``; see
    :func:`rlvr_temp.reward.notation.to_latex`)."""
    ans = ans.strip().replace("°", "^\\circ").replace("\\degree", "^\\circ")
    ans = _THOUSANDS_SEP.sub("", ans)
    return to_latex(ans) if notation else ans


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


def normalize_ground_truth(gt: Any, *, notation: bool = True) -> str:
    """Ground truth (int, float, Fraction, str, or list/tuple of those) as a string math-verify can parse.

    Integers and integer strings lose leading zeros and thousands commas ("025" -> "25", "1,000" -> "1000");
    integral floats become integers (27.0 -> "27"). Surrounding whitespace, unescaped ``$``, an enclosing
    ``\\(..\\)`` / ``\\[..\\]`` and a single enclosing ``\\boxed{}`` are removed. A one-element list is its
    element; a longer list (e.g. OlympiadBench ``final_answer`` with several answers) is joined with ", ",
    which math-verify compares as an unordered set. With ``notation`` (the default), programmatic notation
    is rewritten as LaTeX (``3.83e35`` -> ``3.83 \\times 10^{35}``, ``np.arcsin(x)`` -> ``\\arcsin(x)``, ...;
    see :mod:`rlvr_temp.reward.notation`). Idempotent. Raises ValueError for None, empty values, NaN, bools and
    unsupported types.
    """
    if gt is None:
        raise ValueError("ground truth is None")
    if hasattr(gt, "tolist") and not isinstance(gt, (str, bytes)):
        gt = gt.tolist()  # numpy scalars / arrays from datasets
    if isinstance(gt, bool):
        raise ValueError(f"ground truth must be a number, string or list, got bool {gt!r}")
    if isinstance(gt, (list, tuple)):
        parts = [normalize_ground_truth(x, notation=notation) for x in gt]
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
    if notation:
        s = to_latex(s)
    if not s:
        raise ValueError(f"ground truth is empty: {gt!r}")
    if _INT_STR.fullmatch(s):
        d = Decimal(s.replace(",", ""))
        s = str(int(d)) if d == d.to_integral_value() else format(d, "f")
    return clean_answer(s, notation=notation)


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
