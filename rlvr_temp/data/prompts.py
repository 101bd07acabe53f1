"""Prompt loading for a run: the training rows, the prompt text of each row, and a resumable stream of batches.

Runs in the driver (the trainer and ``rlvr-temp eval``); nothing here needs Ray or vLLM. A run's rows come from
:mod:`rlvr_temp.data.synthetic` (``data.train: synthetic``) or :func:`rlvr_temp.data.sources.load_prompts` (bundled
sets, files, hub datasets), as ``id`` / ``question`` / ``ground_truth`` rows. Each question becomes its prompt text
through the recipe's template and suffix, wrapped in the tokenizer's chat template when it has one
(:func:`format_prompt`). :class:`PromptStream` deals the rows out in full batches over seeded epochs, and its
position goes into the run's checkpoints.

Left out: packing several questions into one prompt, few-shot examples, system messages.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rlvr_temp.config.schema import DEFAULT_SUFFIX, DataConfig, RunConfig
from rlvr_temp.data import synthetic
from rlvr_temp.data.sources import load_prompts

if TYPE_CHECKING:
    import datasets

DEFAULT_TEMPLATE = "{question} {suffix}"


# ----------------------------------------------------------------------------------------------- prompt
def check_template(template: str) -> None:
    """Raise ValueError unless ``template`` is a format string using only ``{question}`` and ``{suffix}``."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"bad prompt template {template!r}: {e} (literal braces: {{{{ and }}}})") from e
    unknown = sorted({f for f in fields if f not in ("question", "suffix")})
    if unknown:
        raise ValueError(
            f"bad prompt template {template!r}: unknown field(s) {unknown}; only {{question}} "
            "and {suffix} are allowed (write literal braces as {{ and }})"
        )
    if "question" not in fields:
        raise ValueError(f"bad prompt template {template!r}: it must contain {{question}}")


def format_prompt(
    question: str,
    tokenizer: Any = None,
    *,
    template: str = DEFAULT_TEMPLATE,
    suffix: str = DEFAULT_SUFFIX,
    use_chat_template: bool | None = None,
) -> str:
    """The prompt text for one question.

    ``template.format(question=..., suffix=...)`` is the user message. With a tokenizer that has a chat
    template (and ``use_chat_template`` not False) it is wrapped by
    ``apply_chat_template(add_generation_prompt=True)``; ``use_chat_template=True`` without a chat template is
    an error; otherwise the plain text is returned.
    """
    check_template(template)
    text = template.format(question=question, suffix=suffix)
    has_chat = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template and not has_chat:
        raise ValueError("use_chat_template=True but the tokenizer has no chat template")
    if use_chat_template is False or not has_chat:
        return text
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


# ----------------------------------------------------------------------------------------------- a run's rows
def load_train_rows(cfg: RunConfig) -> list[dict[str, Any]]:
    """Training prompts as rows with ``id``, ``question``, ``ground_truth``."""
    d = cfg.data
    if d.train == "synthetic":
        s = d.synthetic
        rows = synthetic.generate(s.n_train, levels=s.levels, seed=s.seed, split="train")
        rows = [{"id": r["id"], "question": r["question"], "ground_truth": r["answer"]} for r in rows]
    else:
        ds = load_prompts(d.train, question_key=d.question_key, answer_key=d.answer_key, limit=d.limit)
        rows = [dict(r) for r in ds]
    if d.limit is not None:
        rows = rows[: d.limit]
    if not rows:
        raise ValueError(f"data.train {d.train!r} gave no rows")
    return rows


def format_prompts(rows: list[dict[str, Any]], tokenizer: Any, data: DataConfig) -> list[str]:
    """Each row's prompt text as the ``data`` section says (template, suffix, chat template)."""
    kw = {"template": data.prompt_template, "suffix": data.prompt_suffix, "use_chat_template": data.use_chat_template}
    return [format_prompt(r["question"], tokenizer, **kw) for r in rows]


def load_train_prompts(cfg: RunConfig, tokenizer: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The training rows and each row's prompt text, by row id."""
    rows = load_train_rows(cfg)
    return rows, dict(zip([r["id"] for r in rows], format_prompts(rows, tokenizer, cfg.data)))


# ----------------------------------------------------------------------------------------------- stream
class PromptStream:
    """Endless, deterministic batches of rows over epochs, resumable through ``state_dict()``.

    Epoch ``e`` visits the rows in ``numpy.random.default_rng([seed, e]).permutation(n)`` order (or file order
    when ``shuffle`` is False); a batch that crosses the end of an epoch continues into the next one, so every
    row is seen once per epoch and batches are always full. ``batch_size`` may exceed the dataset size.
    """

    def __init__(
        self, dataset: datasets.Dataset | Sequence[Any], batch_size: int, seed: int = 0, shuffle: bool = True
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(dataset) == 0:
            raise ValueError("PromptStream needs a non-empty dataset")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.dataset, self.batch_size, self.seed, self.shuffle = dataset, batch_size, int(seed), shuffle
        self.epoch, self.cursor = 0, 0
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        """Number of rows in one epoch."""
        return len(self.dataset)

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            n = len(self.dataset)
            self._order = (
                np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
            )
        return self._order

    def next_indices(self) -> list[int]:
        """Dataset indices of the next batch (advances the stream)."""
        idx: list[int] = []
        while len(idx) < self.batch_size:
            order = self._epoch_order()
            take = order[self.cursor : self.cursor + self.batch_size - len(idx)]
            idx.extend(int(i) for i in take)
            self.cursor += len(take)
            if self.cursor >= len(order):
                self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
        return idx

    def __iter__(self) -> PromptStream:
        return self

    def __next__(self) -> list[Any]:
        """The next batch: a list of ``batch_size`` rows (dicts for a ``datasets.Dataset``)."""
        return [self.dataset[i] for i in self.next_indices()]

    def state_dict(self) -> dict[str, Any]:
        """Position of the stream: epoch, cursor within the epoch, seed, shuffle flag and dataset size."""
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_rows": len(self.dataset),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``; the dataset must have the same number of rows."""
        if int(state["num_rows"]) != len(self.dataset):
            raise ValueError(
                f"PromptStream state is for {state['num_rows']} rows, this dataset has {len(self.dataset)}"
            )
        if not 0 <= int(state["cursor"]) < len(self.dataset):
            raise ValueError(f"PromptStream state has cursor {state['cursor']} out of range")
        self.epoch, self.cursor, self.seed = int(state["epoch"]), int(state["cursor"]), int(state["seed"])
        self.shuffle = bool(state.get("shuffle", self.shuffle))
        self._order = None
