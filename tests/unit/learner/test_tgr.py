"""Tests of Temperature-Guided Reasoning: the TTM head, its regulariser, GSoT, the sampling-range map, the bundled
WikiQA loader, the SFT batches (labels never on padding) and the CPU SFT recipe (rlvr_temp.temperature.ttm,
rlvr_temp.learner.tgr, rlvr_temp.learner.tgr_recipe)."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import torch

from rlvr_temp.cli import main as cli_main
from rlvr_temp.config.schema import ConfigError, TrainerBase, TrainerConfig, load_config
from rlvr_temp.data.sft import collate_sft
from rlvr_temp.learner.tgr import sft_loss, train_sft
from rlvr_temp.learner.tgr_recipe import (
    RENAMED_KEYS,
    WIKIQA_POSITIVES,
    TGRConfig,
    TGRTrainerConfig,
    encode_examples,
    load_tgr_config,
    load_wikiqa,
)
from rlvr_temp.temperature import (
    TokenTemperatureHead,
    gsot_mask,
    gsot_weights,
    load_head,
    save_head,
    temperature_regularization,
    to_sampling_range,
)

RECIPES = Path(__file__).resolve().parents[3] / "recipes" / "tgr"
CPU_RECIPE = RECIPES / "wikiqa_sft.yaml"


# --------------------------------------------------------------------------------------------------- TTM head
def test_head_shape_and_range() -> None:
    torch.manual_seed(0)
    head = TokenTemperatureHead(32, heads=4, t_min=0.01, t_max=0.99)
    with torch.no_grad():
        head.proj.weight.normal_(0, 5.0)  # saturate the sigmoid both ways
    with torch.no_grad():
        t = head(torch.randn(2, 7, 32) * 10)
    assert t.shape == (2, 7, 4)
    assert float(t.min()) == pytest.approx(0.01) and float(t.max()) == pytest.approx(0.99)
    assert bool(((t >= 0.01) & (t <= 0.99)).all())
    tok = head.token_temperature(torch.randn(2, 7, 32))
    assert tok.shape == (2, 7)


def test_head_initial_output_is_t0() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(3, 11, 64)  # unit-scale, like RMS-normed final hidden states
    head = TokenTemperatureHead(64, heads=8, init_temperature=0.5)
    with torch.no_grad():
        dev = (head(hidden) - 0.5).abs()
    assert float(dev.max()) < 0.02 and float(dev.mean()) < 5e-3
    assert len({tuple(r.tolist()) for r in head.proj.weight}) == 8  # heads differ (symmetry broken)
    exact = TokenTemperatureHead(64, heads=2, init_temperature=0.3, init_std=0.0)
    assert torch.allclose(exact(hidden), torch.full((3, 11, 2), 0.3), atol=1e-6)
    with pytest.raises(ValueError, match="init_temperature"):
        TokenTemperatureHead(64, init_temperature=0.995)


def test_head_clamp_keeps_gradient() -> None:
    head = TokenTemperatureHead(4, heads=1, init_std=0.0)
    with torch.no_grad():
        head.proj.bias.fill_(-6.0)  # sigmoid 0.0025 < t_min
    t = head(torch.zeros(1, 1, 4))
    assert float(t.detach()) == pytest.approx(0.01)
    temperature_regularization(t, 0.5, 1.0).backward()
    assert float(head.proj.bias.grad) < 0  # the regulariser still pulls it back up


def test_head_save_load_roundtrip(tmp_path: Path) -> None:
    head = TokenTemperatureHead(16, heads=3, t_min=0.05, t_max=0.95, init_temperature=0.4)
    path = save_head(head, tmp_path / "ttm_head.safetensors")
    again = load_head(path)
    assert again.settings() == head.settings()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        assert torch.equal(again(x), head(x))


# -------------------------------------------------------------------------------------------- regularisation
def test_regularization_mask_aware() -> None:
    t = torch.tensor([[0.5, 0.7, 0.9]])
    mask = torch.tensor([[1, 1, 0]])  # the 0.9 is padding: ignored
    assert float(temperature_regularization(t, 0.5, 2.0, mask)) == pytest.approx(2.0 * (0.0 + 0.04) / 2)
    assert float(temperature_regularization(t, 0.5, 2.0)) == pytest.approx(2.0 * (0.0 + 0.04 + 0.16) / 3)
    per_head = torch.tensor([[[0.5, 0.7], [0.1, 0.1]]])  # [B=1, L=2, heads=2], second token padding
    assert float(temperature_regularization(per_head, 0.5, 1.0, torch.tensor([[1, 0]]))) == pytest.approx(0.02)
    assert float(temperature_regularization(t, 0.5, 1.0, torch.zeros(1, 3))) == 0.0


# ------------------------------------------------------------------------------------------------------- GSoT
def test_gsot_mask_and_weights() -> None:
    t = torch.tensor([[0.3, 0.5, 0.2, 0.1], [0.45, 0.39, 0.4, 0.9]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    cold = gsot_mask(t, mask, 0.4)
    assert cold.dtype == torch.bool
    assert cold.tolist() == [[True, False, True, False], [False, True, False, False]]  # padding never cold
    per_head = torch.tensor([[[0.1, 0.6], [0.5, 0.5]]])  # means 0.35, 0.5
    assert gsot_mask(per_head, None, 0.4).tolist() == [[True, False]]
    w = gsot_weights(t, mask, 0.4, cold_weight=0.25)
    assert w.tolist() == [[0.25, 1.0, 0.25, 0.0], [1.0, 0.25, 1.0, 1.0]]
    assert gsot_weights(t, mask, 0.4, 0.0)[0].tolist() == [0.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        gsot_weights(t, mask, 0.4, 1.5)


def test_to_sampling_range_endpoints() -> None:
    t = torch.tensor([0.01, 0.99, 0.5, 0.0, 1.0])
    out = to_sampling_range(t, 1.2, 1.6, 0.01, 0.99)
    assert out.tolist() == pytest.approx([1.2, 1.6, 1.4, 1.2, 1.6])  # outside [t_min, t_max] clamped
    assert to_sampling_range(0.01, 0.5, 1.5) == pytest.approx(0.5)
    assert to_sampling_range(0.99, 0.5, 1.5) == pytest.approx(1.5)
    assert to_sampling_range(0.5, 0.5, 1.5) == pytest.approx(1.0)  # t0 = 0.5 maps to plain sampling
    with pytest.raises(ValueError):
        to_sampling_range(0.5, 1.6, 1.2)


# ----------------------------------------------------------------------------------------------------- WikiQA
def test_wikiqa_label1_counts() -> None:
    counts = {split: len(load_wikiqa(split)) for split in ("train", "dev", "test")}
    assert counts == {"train": 1040, "dev": 140, "test": 293} == WIKIQA_POSITIVES
    for split in ("train", "dev", "test"):
        for row in load_wikiqa(split):
            assert row["question"].strip() and row["answer"].strip()
            assert row["text"] == f"Q: {row['question']}\nA: {row['answer']}"
    first = load_wikiqa("train", limit=2)
    assert len(first) == 2 and first[0]["question"] == "how are glacier caves formed ?"
    assert first[0]["answer"].startswith("A glacier cave is a cave formed within the ice of a glacier")
    with pytest.raises(ValueError, match="split"):
        load_wikiqa("validation")


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_labels_never_contain_padding(pad_is_eos: bool) -> None:
    from rlvr_temp.data.tiny_model import build_tokenizer

    tok = build_tokenizer()
    rows = load_wikiqa("dev", limit=6)
    examples = encode_examples(rows, tok, max_len=160)
    pad_id = tok.eos_token_id if pad_is_eos else tok.pad_token_id  # the seed padded with EOS
    batch = collate_sft(examples, pad_id)
    mask, labels = batch["attention_mask"], batch["labels"]
    assert bool((mask == 0).any())  # the batch really has padding
    assert bool((labels[mask == 0] == -100).all())
    for row, (seq, n_prompt) in enumerate(examples):
        assert bool((labels[row, :n_prompt] == -100).all())  # prompt tokens are not trained on
        assert labels[row, n_prompt : len(seq)].tolist() == seq[n_prompt:]
        prompt = tok.decode(seq[:n_prompt])
        assert prompt == f"Q: {rows[row]['question']}\nA:"
    n_answer = sum(len(seq) - n for seq, n in examples)
    assert int((labels != -100).sum()) == n_answer
    assert int((labels[:, 1:] == tok.eos_token_id).sum()) <= len(examples)  # at most one real EOS per row


def _tiny(t0: float) -> tuple[torch.nn.Module, TokenTemperatureHead, dict, object]:
    from rlvr_temp.data.tiny_model import TinyModelSettings, build_tokenizer, make_model

    tok = build_tokenizer()
    model = make_model(TinyModelSettings(num_layers=1), tok)
    head = TokenTemperatureHead(128, heads=2, init_temperature=t0, init_std=0.0)
    batch = collate_sft(encode_examples(load_wikiqa("dev", limit=3), tok, 96), tok.pad_token_id)
    return model, head, batch, tok


def test_sft_loss_gsot_weighting() -> None:
    torch.manual_seed(0)
    model, head, batch, _ = _tiny(t0=0.2)  # every token starts cold (threshold 0.4)
    cfg = TGRConfig()
    cfg.gsot.cold_weight = 0.5
    _, parts = sft_loss(model, head, batch, cfg)
    assert parts["cold_share"] == 1.0
    assert parts["lm_loss_gsot"] == pytest.approx(parts["lm_loss"], rel=1e-5)  # uniform weights: normalised away
    cfg.gsot.cold_weight = 0.0
    loss, parts = sft_loss(model, head, batch, cfg)
    assert parts["lm_loss_gsot"] == 0.0 and parts["lm_loss"] > 0
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())  # cold tokens excluded, head detached
    assert head.proj.bias.grad is not None and bool(head.proj.bias.grad.abs().sum() > 0)  # calibration trains it


# ----------------------------------------------------------------------------------------------------- recipes
def test_recipes_validate(tmp_path: Path) -> None:
    cfg = load_tgr_config(CPU_RECIPE)
    assert cfg.model.path == "tiny-wikiqa" and cfg.learner.mode in ("full", "lora")
    gpu = load_tgr_config(RECIPES / "wikiqa_sft_gpu.yaml")
    assert gpu.learner.mode == "qlora" and gpu.model.dtype == "bfloat16" and gpu.model.path.startswith("/models/")
    unset = tmp_path / "unset.yaml"
    unset.write_text("model:\n  path: ???\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"model\.path is required"):
        load_tgr_config(unset)


def test_malformed_recipe_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {CPU_RECIPE}\ngsot:\n  treshold: 0.3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml: gsot\.treshold: unknown key"):
        load_tgr_config(bad)
    bad.write_text(f"base: {CPU_RECIPE}\nttm:\n  heads: many\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"ttm\.heads: .*integer"):
        load_tgr_config(bad)
    with pytest.raises(ConfigError, match=r"learner\.mode"):
        load_tgr_config(CPU_RECIPE, ["learner.mode=int8"])


SHARED = {
    "trainer.total_steps": 3,
    "trainer.seed": 7,
    "trainer.run_dir": "/runs/x",  # relative ones are made absolute (rlvr_temp.config.recipe)
    "model.path": "/m",
    "model.dtype": "bfloat16",
}


def _get(cfg: object, dotted: str) -> object:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_rl_and_tgr_recipes_share_keys() -> None:
    overrides = [f"{key}={value}" for key, value in SHARED.items()]
    rl, tgr = load_config(None, overrides), load_tgr_config(CPU_RECIPE, overrides)
    for key, value in SHARED.items():
        assert _get(rl, key) == _get(tgr, key) == value, key
    assert issubclass(TrainerConfig, TrainerBase) and issubclass(TGRTrainerConfig, TrainerBase)
    assert set(TrainerBase.model_fields) == {"total_steps", "seed", "run_dir"}
    assert TGRConfig().trainer.total_steps == 40
    assert TGRConfig().trainer.run_dir == str(Path.cwd() / "runs/tgr/wikiqa_sft")
    for key in ("checkpoint.every", "learner.lr", "learner.warmup_steps", "learner.micro_batch_size"):
        assert _get(rl, key) is not None and _get(tgr, key) is not None  # optimizer keys: the RL learner's names
    assert "training" not in TGRConfig.model_fields


def test_old_keys_fail_naming_the_new_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    msg = "override 'training.steps=3': training.steps was renamed trainer.total_steps"
    with pytest.raises(ConfigError, match=f"^{re.escape(msg)}$"):
        load_tgr_config(CPU_RECIPE, ["training.steps=3"])
    assert cli_main(["sft", str(CPU_RECIPE), "training.steps=3"]) == 2  # fails before any training
    assert capsys.readouterr().err == f"rlvr-temp: error: {msg}\n"
    old_recipe = tmp_path / "old.yaml"
    for old, new in RENAMED_KEYS.items():
        section, key = old.split(".")
        with pytest.raises(
            ConfigError, match=f"^override '{re.escape(old)}=1': {re.escape(old)} was renamed {re.escape(new)}$"
        ):
            load_tgr_config(CPU_RECIPE, [f"{old}=1"])
        old_recipe.write_text(f"base: {CPU_RECIPE}\n{section}:\n  {key}: 1\n", encoding="utf-8")
        with pytest.raises(
            ConfigError, match=f"^{re.escape(str(old_recipe))}: {re.escape(old)} was renamed {re.escape(new)}$"
        ):
            load_tgr_config(old_recipe)
    with pytest.raises(ConfigError, match=r"^override 'training\.foo=4': the training section was removed"):
        load_tgr_config(CPU_RECIPE, ["training.foo=4"])


# -------------------------------------------------------------------------------------------------- SFT run
def _run(tmp_path: Path, overrides: list[str]) -> tuple[Path, list[dict], float]:
    cfg = load_tgr_config(CPU_RECIPE, [f"trainer.run_dir={tmp_path / 'run'}", "trainer.log_every=0", *overrides])
    start = time.time()
    ckpt = train_sft(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return ckpt, rows, time.time() - start


def test_cpu_sft_recipe_few_steps(tmp_path: Path) -> None:
    ckpt, rows, _ = _run(
        tmp_path,
        [
            "trainer.total_steps=8",
            "learner.micro_batch_size=4",
            "data.max_len=128",
            "data.limit=64",
            "data.eval_limit=8",
        ],
    )
    assert [r["step"] for r in rows] == list(range(1, 9))
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("loss", "lm_loss", "reg", "temp_mean", "cold_share"))
    assert rows[-1]["lm_loss"] < rows[0]["lm_loss"] - 0.3  # falls from ln(128) = 4.85
    assert (ckpt / "policy" / "model.safetensors").is_file()
    assert load_head(ckpt / "ttm_head.safetensors").heads == 8
    assert load_tgr_config(ckpt / "config.yaml").trainer.total_steps == 8  # resolved config is itself a recipe
    info = json.loads((ckpt / "checkpoint.json").read_text())
    assert info["step"] == 8 and info["eval"]["examples"] == 8


def test_sft_cli_takes_the_rl_step_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    small = ["data.limit=16", "data.eval_limit=0", "data.max_len=64", "learner.micro_batch_size=2"]
    assert cli_main(["sft", str(CPU_RECIPE), "trainer.total_steps=3", f"trainer.run_dir={run}", *small]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert f"TGR checkpoint: {run / 'checkpoint'}" in capsys.readouterr().out


@pytest.mark.slow
def test_cpu_sft_recipe_as_shipped(tmp_path: Path) -> None:
    ckpt, rows, seconds = _run(tmp_path, [])
    first, last = rows[0], rows[-1]
    assert len(rows) == load_tgr_config(CPU_RECIPE).trainer.total_steps
    assert sum(r["lm_loss"] for r in rows[-5:]) / 5 < first["lm_loss"] - 1.0
    assert 0.01 <= last["temp_mean"] <= 0.99
    assert seconds < 240  # the recipe's budget is 2 minutes on 2 idle cores; CI machines are shared
    assert (ckpt / "ttm_head.safetensors").is_file() and (ckpt.parent / "eval.json").is_file()
