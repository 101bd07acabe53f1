"""The embedded default model: a tiny character-level Llama warm-started on the synthetic arithmetic task.

:func:`build_tiny_model` builds, deterministically from a seed and without any model hub:

* a character-level tokenizer (Hugging Face ``tokenizers``): one token per printable ASCII character,
  newline and tab, ``<pad>`` = 0, ``<|endoftext|>`` = 1 (end of sequence), ``<unk>`` = 2 (any other
  character), reserved special tokens up to 128. Saved so that ``transformers.AutoTokenizer`` and vLLM load
  it; decoding round-trips ASCII text exactly. No chat template: prompts are plain text, no BOS is added.
* a small Llama model (fp32, tied embeddings, 512 positions, intermediate size a multiple of 32 as the CPU
  4-bit path of bitsandbytes needs, docs/stack.md). Llama rather than Qwen2: ``transformers`` 5 forces its own
  ``Qwen2Tokenizer`` on any ``qwen2`` checkpoint, which drops the character tokenizer's whitespace.
* a supervised warm start on the train part of :mod:`rlvr_temp.data.synthetic` (loss on response tokens only,
  AdamW, fixed number of steps: :mod:`rlvr_temp.data.sft`), stopped while greedy accuracy on held-out problems is
  partial, so RL has room to improve.

Prompt format: ``PROMPT_TEMPLATE = "Q: {question}\\nA:"`` (e.g. ``"Q: 47+38\\nA:"``); the model answers
``" 40+30=70, 7+8=15, 70+15=85. \\boxed{85}"`` then ``<|endoftext|>``. The folder holds
``tiny_model_card.json`` and ``README.md`` with the settings, loss and held-out accuracy per level.

The model is cached in ``$RLVR_TEMP_CACHE/tiny-llama-<hash of the settings>`` (default cache
``~/.cache/rlvr_temp``); it is built in a temporary folder and renamed into place, so an interrupted build is
never reused. :func:`ensure_tiny_model` returns the cached path, building it if needed: in the process that first
asks for ``model.path: tiny`` (the driver, through rlvr_temp.data.models) or in ``rlvr-temp make-tiny-model``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlvr_temp.data import synthetic
from rlvr_temp.data.sft import train_sft
from rlvr_temp.utils import atomic_dir

PROMPT_TEMPLATE = synthetic.PROMPT_TEMPLATE
PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<|endoftext|>", "<unk>"
CARD_NAME = "tiny_model_card.json"
_BUILDER_VERSION = 1
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", CARD_NAME)


@dataclasses.dataclass(frozen=True)
class TinyModelSettings:
    """Everything that determines the built model (hashed into the cache folder name)."""

    seed: int = 0
    vocab_size: int = 128
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 512
    levels: tuple[int, ...] = (1, 2, 3)
    n_train: int = 40000
    steps: int = 250
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    n_eval_per_level: int = 60
    max_new_tokens: int = 48

    def short_hash(self) -> str:
        """A short stable hash of the settings and of the builder version."""
        blob = json.dumps({"builder": _BUILDER_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def default_cache_dir() -> Path:
    """``$RLVR_TEMP_CACHE`` or ``~/.cache/rlvr_temp``."""
    env = os.environ.get("RLVR_TEMP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlvr_temp"


def default_model_dir(settings: TinyModelSettings | None = None) -> Path:
    """Cache folder of the model built with ``settings``."""
    settings = settings or TinyModelSettings()
    return default_cache_dir() / f"tiny-llama-{settings.short_hash()}"


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` holds a fully built model (all files, card written last)."""
    path = Path(path)
    return all((path / name).is_file() for name in _REQUIRED_FILES)


# ---------------------------------------------------------------------------------------------- tokenizer
def build_tokenizer(vocab_size: int = 128) -> Any:
    """Character-level tokenizer: specials, printable ASCII, newline, reserved tokens up to ``vocab_size``."""

    specials = [PAD_TOKEN, EOS_TOKEN, UNK_TOKEN]
    chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    base = specials + chars
    if vocab_size < len(base):
        raise ValueError(f"vocab_size must be >= {len(base)}")
    reserved = [f"<|reserved_{i}|>" for i in range(vocab_size - len(base))]
    vocab = {tok: i for i, tok in enumerate(base + reserved)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials + reserved])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )


# -------------------------------------------------------------------------------------------------- model
def make_model(settings: TinyModelSettings, tokenizer: Any) -> Any:
    """Randomly initialised fp32 ``LlamaForCausalLM`` of ``settings`` (seeded), for ``tokenizer``'s ids."""

    if settings.intermediate_size % 32 or settings.hidden_size % 32:
        raise ValueError("hidden_size and intermediate_size must be multiples of 32 (bitsandbytes CPU 4-bit)")
    config = LlamaConfig(
        vocab_size=settings.vocab_size,
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_kv_heads,
        max_position_embeddings=settings.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0,
        torch_dtype="float32",
    )
    torch.manual_seed(settings.seed)
    return LlamaForCausalLM(config).float()


# ----------------------------------------------------------------------------------------------- evaluation
def greedy_generate(
    model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 48, batch_size: int = 64
) -> list[str]:
    """Batched greedy decoding in plain torch (left padding, full recompute each step); returns responses."""

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    out: list[str] = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in chunk]
            width = max(len(e) for e in enc)
            ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])
            mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
            done = torch.zeros(len(enc), dtype=torch.bool)
            new = []
            for _ in range(max_new_tokens):
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
                nxt = torch.where(done, torch.full_like(done, pad, dtype=torch.long), logits.argmax(-1))
                new.append(nxt)
                done |= nxt == eos
                ids = torch.cat([ids, nxt[:, None]], dim=1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                if bool(done.all()):
                    break
            gen = torch.stack(new, dim=1).tolist()
            out += [tokenizer.decode(g, skip_special_tokens=True) for g in gen]
    return out


def boxed_answer(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (no nested braces), or None."""
    found = re.findall(r"\\boxed\{([^{}]*)\}", text)
    return found[-1].strip() if found else None


def eval_rows(settings: TinyModelSettings) -> list[dict]:
    """Held-out evaluation problems: distinct test-part questions, up to ``n_eval_per_level`` per level."""
    rows: list[dict] = []
    for level in settings.levels:
        seen: set[str] = set()
        n = settings.n_eval_per_level
        drawn = synthetic.generate(n, levels=(level,), seed=settings.seed, split="test")
        for row in drawn:
            if row["question"] not in seen:
                seen.add(row["question"])
                rows.append(row)
    return rows


def evaluate(model: Any, tokenizer: Any, rows: Sequence[dict], *, max_new_tokens: int = 48) -> dict:
    """Greedy accuracy per level and overall."""
    prompts = [synthetic.prompt_of(r) for r in rows]
    responses = greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    per: dict[str, list[int]] = {}
    for row, resp in zip(rows, responses, strict=True):
        per.setdefault(str(row["level"]), []).append(int(boxed_answer(resp) == row["answer"]))
    acc = {lvl: sum(v) / len(v) for lvl, v in sorted(per.items())}
    n_all = sum(len(v) for v in per.values())
    return {
        "accuracy_per_level": acc,
        "n_per_level": {lvl: len(v) for lvl, v in sorted(per.items())},
        "accuracy": sum(sum(v) for v in per.values()) / max(1, n_all),
        "examples": [{"prompt": p, "response": r} for p, r in zip(prompts[:3], responses[:3])],
    }


# ------------------------------------------------------------------------------------------------ build/cache
@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:

    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _write_folder(
    folder: Path, settings: TinyModelSettings, *, name: str, num_threads: int | None, verbose: bool
) -> dict:

    t0 = time.time()
    with _torch_threads(num_threads):
        tokenizer = build_tokenizer(settings.vocab_size)
        model = make_model(settings, tokenizer)
        train_rows = synthetic.generate(settings.n_train, levels=settings.levels, seed=settings.seed, split="train")
        losses = train_sft(
            model,
            tokenizer,
            train_rows,
            steps=settings.steps,
            batch_size=settings.batch_size,
            lr=settings.lr,
            warmup_steps=settings.warmup_steps,
            weight_decay=settings.weight_decay,
            seed=settings.seed + 1,
            log_every=100 if verbose else 0,
        )
        t_train = time.time() - t0
        report = evaluate(model, tokenizer, eval_rows(settings), max_new_tokens=settings.max_new_tokens)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    tail = losses[-50:]
    card = {
        "name": name,
        "architecture": "LlamaForCausalLM",
        "settings": dataclasses.asdict(settings),
        "settings_hash": settings.short_hash(),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "prompt_template": PROMPT_TEMPLATE,
        "response_format": "' ' + worked solution ending in \\boxed{<answer>}, then <|endoftext|>",
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "chat_template": None,
        "final_loss": sum(tail) / len(tail),
        "first_loss": losses[0],
        "heldout": report,
        "train_seconds": round(t_train, 1),
        "build_seconds": round(time.time() - t0, 1),
        "torch_threads": num_threads or torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (folder / "README.md").write_text(_readme(card), encoding="utf-8")
    (folder / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")  # last: completeness
    return card


def _readme(card: dict) -> str:
    acc = ", ".join(f"level {k}: {v:.0%}" for k, v in card["heldout"]["accuracy_per_level"].items())
    return (
        "# rlvr_temp tiny model\n\n"
        "Character-level Llama built by `rlvr_temp.data.tiny_model.build_tiny_model` and warm-started on the "
        "synthetic arithmetic task of `rlvr_temp.data.synthetic`.\n\n"
        f"- prompt template: `{card['prompt_template']!r}` (plain text, no chat template, no BOS)\n"
        f"- response: {card['response_format']}\n"
        f"- parameters: {card['n_parameters']:,}; seed {card['settings']['seed']}; "
        f"{card['settings']['steps']} SFT steps; final loss {card['final_loss']:.4f}\n"
        f"- held-out greedy accuracy: {card['heldout']['accuracy']:.0%} ({acc})\n"
        f"- build time: {card['build_seconds']} s on {card['torch_threads']} torch threads\n"
    )


def build_tiny_model(
    out_dir: str | Path | None = None,
    *,
    seed: int = 0,
    settings: TinyModelSettings | None = None,
    force: bool = False,
    num_threads: int | None = 2,
    verbose: bool = False,
) -> Path:
    """Build (or reuse) the tiny model in ``out_dir`` (default: the cache folder of its settings).

    ``settings`` overrides the defaults (its own seed wins over ``seed``). An existing complete folder is
    reused unless ``force``. The build runs in a temporary sibling folder renamed into place at the end, under
    a file lock, so concurrent callers build once and an interrupted build leaves nothing that is reused.
    """
    settings = settings or TinyModelSettings(seed=seed)
    final = Path(out_dir).expanduser() if out_dir is not None else default_model_dir(settings)
    final.parent.mkdir(parents=True, exist_ok=True)
    if is_complete(final) and not force:
        return final
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(final) and not force:
            return final
        if final.exists() and not force and (not final.is_dir() or any(final.iterdir())):
            raise FileExistsError(f"{final} exists and is not a complete tiny model (use force=True)")
        for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        with atomic_dir(final) as tmp:  # a ".<name>.tmp-*" sibling, renamed onto `final` on success
            card = _write_folder(tmp, settings, name=final.name, num_threads=num_threads, verbose=verbose)
            for item in tmp.iterdir():  # some writers create owner-only files
                item.chmod(0o644)
    if verbose:
        keys = ("n_parameters", "final_loss", "heldout", "build_seconds")
        print(json.dumps({k: card[k] for k in keys}, indent=2))
    return final


def ensure_tiny_model(out_dir: str | Path | None = None, *, seed: int = 0, force: bool = False, **kwargs: Any) -> Path:
    """Path of the cached tiny model, built first if missing or incomplete (rebuilt if ``force``).

    Other keyword arguments go to :func:`build_tiny_model` (``settings``, ``num_threads``, ``verbose``).
    """
    return build_tiny_model(out_dir, seed=seed, force=force, **kwargs)


def load_card(path: str | Path) -> dict:
    """The ``tiny_model_card.json`` of a built model."""
    return json.loads((Path(path) / CARD_NAME).read_text(encoding="utf-8"))


def add_cli_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``rlvr-temp make-tiny-model``: ``--out DIR``, ``--seed N``, ``--force``, ``--threads``."""
    parser.add_argument("--out", default=None, help="output folder (default: the cache folder)")
    parser.add_argument("--seed", type=int, default=0, help="build seed (default 0)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete model exists")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the build (default 2)")
    return parser


def make_tiny_model_cli(args: argparse.Namespace) -> int:
    """Run ``make-tiny-model`` from parsed arguments; prints the folder and its card summary."""
    path = build_tiny_model(args.out, seed=args.seed, force=args.force, num_threads=args.threads, verbose=True)
    card = load_card(path)
    print(f"tiny model: {path}")
    heldout = card["heldout"]
    print(f"held-out greedy accuracy {heldout['accuracy']:.1%} {heldout['accuracy_per_level']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rlvr_temp.data.tiny_model [--out DIR] [--seed N] [--force]``."""
    parser = add_cli_arguments(argparse.ArgumentParser(prog="rlvr-temp make-tiny-model", description=__doc__))
    return make_tiny_model_cli(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
