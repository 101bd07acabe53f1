"""The embedded tiny model and its synthetic task: tokenizer, generator, cache, transformers, vLLM, 4-bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from rlvr_temp.data import synthetic
from rlvr_temp.data import tiny_model as tm

# Small settings for the cache/determinism tests (seconds, not minutes).
SMALL = tm.TinyModelSettings(
    hidden_size=64,
    num_layers=1,
    num_heads=2,
    num_kv_heads=2,
    intermediate_size=128,
    n_train=256,
    steps=4,
    batch_size=16,
    warmup_steps=2,
    n_eval_per_level=3,
    max_new_tokens=8,
)


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    """The default tiny model (built once into the cache, then reused)."""
    return tm.ensure_tiny_model()


@pytest.fixture(scope="module")
def heldout() -> list[dict]:
    return synthetic.generate(50, levels=(1, 2, 3), seed=123, split="test")


# ------------------------------------------------------------------------------------------- synthetic task
def test_generate_is_deterministic_and_correct() -> None:
    a = synthetic.generate(300, levels=(1, 2, 3, 4, 5), seed=7)
    assert a == synthetic.generate(300, levels=(1, 2, 3, 4, 5), seed=7)
    assert a != synthetic.generate(300, levels=(1, 2, 3, 4, 5), seed=8)
    assert [r["level"] for r in a[:5]] == [1, 2, 3, 4, 5]
    assert len({r["id"] for r in a}) == len(a)
    for row in a:
        assert set(row) >= {"id", "question", "answer", "level", "solution"}
        assert str(eval(row["question"])) == row["answer"]  # questions are plain integer arithmetic
        assert row["solution"].endswith(synthetic.boxed(row["answer"]))
        assert tm.boxed_answer(synthetic.target_of(row)) == row["answer"]
        # every worked step is true
        for step in row["solution"].split(". ")[0].split(", "):
            lhs, rhs = step.split("=")
            assert eval(lhs) == int(rhs), (row, step)
    assert len({r["question"] for r in a if r["level"] == 2}) == 60  # distinct while unseen problems remain


def test_generate_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        synthetic.generate(3, levels=(9,))
    with pytest.raises(ValueError):
        synthetic.generate(3, split="dev")


def test_make_splits_never_overlap(tmp_path: Path) -> None:
    train_path, test_path = synthetic.make_splits(tmp_path, n_train=3000, n_test=300, seed=3)
    train, test = synthetic.read_jsonl(train_path), synthetic.read_jsonl(test_path)
    assert (len(train), len(test)) == (3000, 300)
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert all(synthetic.split_of(r["question"]) == "test" for r in test)
    # another seed's test set is disjoint from this train set too (fixed partition of the problem space)
    other = synthetic.generate(300, seed=99, split="test")
    assert not {r["question"] for r in train} & {r["question"] for r in other}
    for line in test_path.read_text().splitlines():  # generic jsonl loaders see question/answer strings
        row = json.loads(line)
        assert isinstance(row["question"], str) and isinstance(row["answer"], str)
    again = synthetic.make_splits(tmp_path / "again", 3000, 300, (1, 2, 3), 3)
    assert again[1].read_text() == test_path.read_text()


# ---------------------------------------------------------------------------------------------- tokenizer
ROUND_TRIP = [
    "Q: 12+7\nA: 10+0=10, 2+7=9. \\boxed{19}",
    "  two  spaces,\ttab\n\nnewlines ",
    "caf\u00e9 \u00e0 la carte",
    "".join(chr(c) for c in range(32, 127)),
]


def test_tokenizer_round_trip(tiny_dir: Path) -> None:
    fresh = tm.build_tokenizer()
    loaded = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    for tok in (fresh, loaded):
        assert len(tok) == 128
        assert (tok.pad_token, tok.eos_token) == (tm.PAD_TOKEN, tm.EOS_TOKEN)
        assert (tok.pad_token_id, tok.eos_token_id) == (0, 1)
        for text in ROUND_TRIP[:2] + ROUND_TRIP[3:]:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert len(ids) == len(text)  # one token per character, no BOS
            assert tok.decode(ids) == text
            assert tok.decode([*ids, tok.eos_token_id], skip_special_tokens=True) == text
        # characters outside ASCII become <unk>, one each
        assert tok.decode(tok(ROUND_TRIP[2])["input_ids"]) == "caf<unk> <unk> la carte"
    assert fresh("Q: 3+4\nA:")["input_ids"] == loaded("Q: 3+4\nA:")["input_ids"]
    assert loaded.chat_template is None


# ------------------------------------------------------------------------------------------------ build/cache
def test_small_build_is_deterministic_and_cached(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    a = tm.build_tiny_model(tmp_path / "a", settings=SMALL)
    b = tm.build_tiny_model(tmp_path / "b", settings=SMALL)
    assert tm.is_complete(a) and tm.is_complete(b)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    card = tm.load_card(a)
    assert card["settings"]["steps"] == 4 and card["prompt_template"] == synthetic.PROMPT_TEMPLATE
    stamp = (a / "model.safetensors").stat().st_mtime_ns
    assert tm.build_tiny_model(a, settings=SMALL) == a  # reused, not rebuilt
    assert (a / "model.safetensors").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["a", "b"]
    other = tm.TinyModelSettings(**{**SMALL.__dict__, "seed": 1})
    assert other.short_hash() != SMALL.short_hash()


def test_interrupted_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> dict:
        raise KeyboardInterrupt

    monkeypatch.setattr(tm, "_write_folder", boom)
    with pytest.raises(KeyboardInterrupt):
        tm.build_tiny_model(tmp_path / "m", settings=SMALL)
    assert not tm.is_complete(tmp_path / "m")
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        tm.build_tiny_model(tmp_path / "mine", settings=SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_default_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RLVR_TEMP_CACHE", str(tmp_path))
    path = tm.default_model_dir()
    assert path.parent == tmp_path and path.name == f"tiny-llama-{tm.TinyModelSettings().short_hash()}"


# ------------------------------------------------------------------------------------------------ the model
def test_card_reports_partial_heldout_accuracy(tiny_dir: Path) -> None:
    card = tm.load_card(tiny_dir)
    assert 0.15 <= card["heldout"]["accuracy"] <= 0.65
    assert set(card["heldout"]["accuracy_per_level"]) == {"1", "2", "3"}
    assert card["prompt_template"] == "Q: {question}\nA:"
    assert (tiny_dir / "README.md").is_file()


def _hf_greedy(model, tok, prompts: list[str], max_new_tokens: int = 48) -> list[str]:
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.fixture(scope="module")
def hf_outputs(tiny_dir: Path, heldout: list[dict]) -> list[str]:
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    assert model.config.tie_word_embeddings and model.config.intermediate_size % 32 == 0
    return _hf_greedy(model, tok, [synthetic.prompt_of(r) for r in heldout])


def test_transformers_greedy_is_partially_correct(tiny_dir: Path, heldout: list[dict], hf_outputs: list[str]) -> None:
    correct = sum(tm.boxed_answer(o) == r["answer"] for o, r in zip(hf_outputs, heldout, strict=True))
    assert 0 < correct < len(heldout)
    assert all(o.startswith(" ") for o in hf_outputs)
    # the project's own batched greedy decode agrees with transformers' generate
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    ours = tm.greedy_generate(model, tok, [synthetic.prompt_of(r) for r in heldout[:16]], batch_size=7)
    assert ours == hf_outputs[:16]


_VLLM_SCRIPT = r"""
import json, sys, time
from vllm import LLM, SamplingParams
path, prompts = sys.argv[1], json.loads(sys.argv[2])
llm = LLM(model=path, dtype="float32", enforce_eager=True, max_model_len=256, seed=0)
sp = SamplingParams(temperature=0.0, max_tokens=48)
llm.generate(prompts[:4], sp, use_tqdm=False)
t0 = time.perf_counter()
outs = llm.generate(prompts, sp, use_tqdm=False)
dt = time.perf_counter() - t0
n = sum(len(o.outputs[0].token_ids) for o in outs)
print("RESULT " + json.dumps({"texts": [o.outputs[0].text for o in outs], "tokens": n, "seconds": dt}))
"""


@pytest.mark.slow
def test_vllm_greedy_matches_transformers(tiny_dir: Path, heldout: list[dict], hf_outputs: list[str]) -> None:
    import vllm  # noqa: F401  (a required dependency: fail here, in the parent, if it is missing)

    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    env["HF_HUB_OFFLINE"] = "1"
    prompts = [synthetic.prompt_of(r) for r in heldout]
    proc = subprocess.run(
        [sys.executable, "-c", _VLLM_SCRIPT, str(tiny_dir), json.dumps(prompts)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    res = json.loads(lines[-1][len("RESULT ") :])
    rate = res["tokens"] / res["seconds"]
    print(f"vLLM greedy: {res['tokens']} tokens in {res['seconds']:.2f} s = {rate:.0f} tok/s")
    correct = sum(tm.boxed_answer(o) == r["answer"] for o, r in zip(res["texts"], heldout, strict=True))
    assert 0 < correct < len(heldout)
    same = sum(a == b for a, b in zip(res["texts"], hf_outputs, strict=True))
    assert same == len(prompts), list(zip(res["texts"], hf_outputs))


def test_loads_in_4bit_with_finite_logits(tiny_dir: Path) -> None:
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    auto = transformers.AutoModelForCausalLM
    model = auto.from_pretrained(tiny_dir, quantization_config=quant, device_map="cpu")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    enc = tok(["Q: 3+4\nA:", "Q: 47+38\nA: 40+30=70"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape[:2] == enc["input_ids"].shape and torch.isfinite(logits.float()).all()
