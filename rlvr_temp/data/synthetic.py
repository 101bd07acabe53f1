"""Deterministic synthetic arithmetic task with boxed answers (the default task of the embedded tiny model).

Difficulty levels (the question is written without spaces, ``*`` is multiplication):

====== ===================================================== ======================== ================
level  problems                                              example                  distinct problems
====== ===================================================== ======================== ================
1      one-digit ``a+b``; one-digit ``a-b`` with ``a >= b``  ``3+5``, ``8-2``         155
2      two-digit ``a+b``; two-digit ``a-b`` with ``a >= b``  ``47+38``, ``83-47``     12,195
3      one-digit ``a*b``; one-digit ``a+b+c``                ``7*8``, ``3+5+9``       1,100
4      two-digit times one-digit ``a*b`` (``b`` in 2..9)     ``23*7``                 720
5      three-digit ``a+b``; three-digit ``a-b`` (``a >= b``) ``347+285``              ~1.2 million
====== ===================================================== ======================== ================

Every row carries a short worked solution (the supervised target of the tiny model) that ends in
``\\boxed{<answer>}``, e.g. ``47+38`` -> ``40+30=70, 7+8=15, 70+15=85. \\boxed{85}``. Answers are non-negative
integers written as strings.

Train/test separation is a fixed partition of the problem space: a stable hash of the question string puts
each problem in the ``test`` part (about 20%) or the ``train`` part, whatever the seed. :func:`make_splits`
draws ``test.jsonl`` only from the test part and ``train.jsonl`` only from the train part, and the tiny model
is supervised on the train part only, so no held-out problem of any seed is ever seen in training. (Level 1
has only 24 test-part problems, so a large test set repeats them.)

Rows have ``id``, ``question``, ``answer``, ``level``, ``solution`` (the worked answer), so a generic jsonl
loader that expects ``question``/``answer`` reads them. The tiny model's prompt format is
:data:`PROMPT_TEMPLATE`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

#: Plain-text prompt of the tiny model; the response (a worked solution ending in ``\\boxed{..}``) follows it
#: after one space, then the end-of-sequence token.
PROMPT_TEMPLATE = "Q: {question}\nA:"
#: Separator between the prompt and the solution in the supervised target.
RESPONSE_PREFIX = " "
LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)
#: Share of the problem space reserved for held-out problems (by a stable hash of the question).
TEST_FRACTION = 0.2
_MAX_TRIES = 400

Problem = tuple[str, int, str]  # question, answer, worked solution


def boxed(answer: int | str) -> str:
    """Return ``\\boxed{answer}``."""
    return "\\boxed{" + str(answer) + "}"


def _finish(steps: Iterable[str], answer: int) -> str:
    return ", ".join(steps) + ". " + boxed(answer)


def _add_two(a: int, b: int) -> Problem:
    """Add two numbers of the same number of digits, splitting off the leading digit."""
    q, ans = f"{a}+{b}", a + b
    if a < 10 and b < 10:
        return q, ans, _finish([f"{a}+{b}={ans}"], ans)
    base = 10 ** (len(str(max(a, b))) - 1)
    ha, hb, la, lb = a // base * base, b // base * base, a % base, b % base
    steps = [f"{ha}+{hb}={ha + hb}", f"{la}+{lb}={la + lb}", f"{ha + hb}+{la + lb}={ans}"]
    return q, ans, _finish(steps, ans)


def _sub_two(a: int, b: int) -> Problem:
    """Subtract ``b <= a``: take away the high part of ``b``, then its low part."""
    q, ans = f"{a}-{b}", a - b
    if b < 10:
        return q, ans, _finish([f"{a}-{b}={ans}"], ans)
    base = 10 ** (len(str(b)) - 1)
    hb, lb = b // base * base, b % base
    steps = [f"{a}-{hb}={a - hb}", f"{a - hb}-{lb}={ans}"]
    return q, ans, _finish(steps, ans)


def _level1(rng: random.Random) -> Problem:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if rng.random() < 0.5:
        return _add_two(a, b)
    return _sub_two(max(a, b), min(a, b))


def _level2(rng: random.Random) -> Problem:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        return _add_two(a, b)
    return _sub_two(max(a, b), min(a, b))


def _level3(rng: random.Random) -> Problem:
    if rng.random() < 0.5:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return f"{a}*{b}", a * b, _finish([f"{a}*{b}={a * b}"], a * b)
    a, b, c = rng.randint(0, 9), rng.randint(0, 9), rng.randint(0, 9)
    ans = a + b + c
    return f"{a}+{b}+{c}", ans, _finish([f"{a}+{b}={a + b}", f"{a + b}+{c}={ans}"], ans)


def _level4(rng: random.Random) -> Problem:
    a, b = rng.randint(10, 99), rng.randint(2, 9)
    ha, la, ans = a // 10 * 10, a % 10, a * b
    steps = [f"{ha}*{b}={ha * b}", f"{la}*{b}={la * b}", f"{ha * b}+{la * b}={ans}"]
    return f"{a}*{b}", ans, _finish(steps, ans)


def _level5(rng: random.Random) -> Problem:
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    if rng.random() < 0.5:
        return _add_two(a, b)
    return _sub_two(max(a, b), min(a, b))


_MAKERS: dict[int, Callable[[random.Random], Problem]] = {
    1: _level1,
    2: _level2,
    3: _level3,
    4: _level4,
    5: _level5,
}


@functools.lru_cache(maxsize=1 << 16)
def split_of(question: str) -> str:
    """The fixed part of the problem space a question belongs to: ``"test"`` (about 20%) or ``"train"``."""
    digest = hashlib.sha256(("rlvr_temp-synthetic:" + question).encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") < TEST_FRACTION * 2**64 else "train"


def _check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    levels = tuple(int(x) for x in levels)
    if not levels or any(x not in _MAKERS for x in levels):
        raise ValueError(f"levels must be a non-empty subset of {LEVELS}, got {levels}")
    return levels


def generate(
    n: int,
    *,
    levels: Sequence[int] = (1, 2, 3),
    seed: int = 0,
    split: str | None = None,
    exclude: Iterable[str] = (),
) -> list[dict]:
    """Generate ``n`` problems, deterministically from ``seed``.

    Levels are taken round-robin (row ``i`` has level ``levels[i % len(levels)]``). Questions are distinct
    while a level has unseen problems left, after which that level repeats problems (level 1 has only 155).
    ``split="train"``/``"test"`` restricts to that fixed part of the problem space (see :func:`split_of`);
    ``exclude`` lists questions never to produce.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
    levels = _check_levels(levels)
    excluded = set(exclude)
    rng = random.Random(f"rlvr_temp-synthetic-{seed}-{split}")
    seen: set[str] = set()
    exhausted: set[int] = set()  # levels with no unseen admissible problem found in _MAX_TRIES draws
    rows: list[dict] = []
    for i in range(n):
        level = levels[i % len(levels)]
        fallback: Problem | None = None
        problem: Problem | None = None
        for _ in range(_MAX_TRIES):
            cand = _MAKERS[level](rng)
            if cand[0] in excluded or (split is not None and split_of(cand[0]) != split):
                continue
            if cand[0] not in seen or level in exhausted:
                problem = cand
                break
            fallback = fallback or cand
        if problem is None:
            exhausted.add(level)
            problem = fallback
        if problem is None:
            raise ValueError(f"no admissible problem left at level {level} (split={split})")
        question, answer, solution = problem
        seen.add(question)
        rows.append(
            {
                "id": f"syn-{split or 'all'}-s{seed}-{i}",
                "question": question,
                "answer": str(answer),
                "level": level,
                "solution": solution,
            }
        )
    return rows


def prompt_of(row: dict, template: str = PROMPT_TEMPLATE) -> str:
    """The plain-text prompt of a row."""
    return template.format(question=row["question"], suffix="")


def target_of(row: dict) -> str:
    """The supervised response text of a row (without the end-of-sequence token)."""
    return RESPONSE_PREFIX + row["solution"]


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Write rows as JSON lines (parent folders are created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """Read JSON lines written by :func:`write_jsonl`."""
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def make_splits(
    out_dir: str | Path,
    n_train: int = 2000,
    n_test: int = 300,
    levels: Sequence[int] = (1, 2, 3),
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` into ``out_dir``; no test question appears in train.

    Test rows come from the fixed test part of the problem space and train rows from the train part (so they
    are also disjoint from the tiny model's supervised data). Returns ``(train_path, test_path)``.
    """
    out = Path(out_dir)
    test = generate(n_test, levels=levels, seed=seed, split="test")
    train = generate(n_train, levels=levels, seed=seed, split="train", exclude={r["question"] for r in test})
    return write_jsonl(train, out / "train.jsonl"), write_jsonl(test, out / "test.jsonl")
