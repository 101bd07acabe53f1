"""benchmarks/trl_grpo.py and trl_report.py: both systems do the same work per optimizer step (optimizer, batch,
sampling, prompts; TRL's micro-batch variants), and the ratios and tables come out right from a result JSON.

TRL itself is not trained here. The work-parity tests need TRL 1.16 (installed by ``make install``:
requirements-cpu.txt) and save a 25.3M-parameter model (slow); the report tests need neither.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import run_all, trl_grpo, trl_report


def _trl_version() -> str | None:  # not trl_missing(): importing TRL at collection costs seconds
    try:
        return trl_grpo.metadata.version("trl")
    except trl_grpo.metadata.PackageNotFoundError:
        return None


needs_trl = pytest.mark.skipif(_trl_version() != trl_grpo.TRL_VERSION, reason=f"needs trl {trl_grpo.TRL_VERSION}")
LOADS = ("load_1min_start", "load_1min_end")
N = trl_grpo.PROMPTS * trl_grpo.GROUP


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    return trl_grpo.build_model(tmp_path_factory.mktemp("trl_model"))


# ------------------------------------------------------------------------------------------------- work parity
@pytest.mark.slow
def test_model_size_and_tokenizer(model_dir: tuple[Path, int]) -> None:
    from transformers import AutoConfig, AutoTokenizer

    path, n_params = model_dir
    assert round(n_params / 1e6, 1) == 25.3
    cfg = AutoConfig.from_pretrained(path)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (512, 8, 8, 2)
    tok = AutoTokenizer.from_pretrained(path)
    text = "Q: 12 + 3\nA:"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # whitespace kept, one id a char


@pytest.mark.slow
@needs_trl
@pytest.mark.parametrize("arm", trl_grpo.ARMS)
@pytest.mark.parametrize("micro", trl_grpo.TRL_MICRO)
def test_same_batch_sampling_and_loss(model_dir: tuple[Path, int], tmp_path: Path, arm: str, micro: int) -> None:
    path, _ = model_dir
    cfg = trl_grpo.rlvr_config(path, tmp_path / "run", steps=4, arm=arm)
    args = trl_grpo.trl_args(tmp_path / "trl", steps=4, micro=micro)
    # one generation batch of 8 x 8 and one optimizer step per step, whatever TRL's micro-batch
    assert (cfg.rollout.prompts_per_step, cfg.rollout.group_size, cfg.rollout.max_response_len) == (8, 8, 128)
    assert args.num_generations == cfg.rollout.group_size and cfg.learner.mini_batch_size == N == 64
    assert args.per_device_train_batch_size == micro and args.gradient_accumulation_steps == N // micro
    assert args.generation_batch_size == args.per_device_train_batch_size * args.gradient_accumulation_steps == N
    assert args.steps_per_generation == args.gradient_accumulation_steps and args.num_iterations == 1
    # sampling
    assert args.max_completion_length == cfg.rollout.max_response_len
    assert (args.temperature, args.top_p, args.top_k) == (cfg.temperature.base, cfg.rollout.top_p, 0)
    assert cfg.rollout.top_k == -1 and cfg.temperature.mode == "fixed" and not args.use_vllm
    # learner and loss
    assert cfg.learner.mode == "full" and args.learning_rate == cfg.learner.lr
    assert args.lr_scheduler_type == "constant" and cfg.learner.lr_schedule == "constant"
    assert args.warmup_steps == cfg.learner.warmup_steps == 0
    assert args.weight_decay == cfg.learner.weight_decay and args.max_grad_norm == cfg.learner.grad_clip
    assert args.beta == cfg.algorithm.kl_coef == 0.0 and cfg.algorithm.ppo_epochs == 1
    assert (args.epsilon, args.epsilon_high) == (cfg.algorithm.clip_eps_low, cfg.algorithm.clip_eps_high)
    assert args.loss_type == cfg.algorithm.loss == "dapo" and not cfg.algorithm.dynamic_sampling
    assert args.max_steps == cfg.trainer.total_steps == 4


@pytest.mark.slow
def test_defaults_arm_sets_no_micro_batch_key(model_dir: tuple[Path, int], tmp_path: Path) -> None:
    from rlvr_temp.config.training import LearnerConfig

    defaults = trl_grpo.rlvr_config(model_dir[0], tmp_path, 4, arm="defaults").learner
    assert not {"micro_batch_size", "micro_batch_tokens"} & defaults.model_fields_set
    for key in ("micro_batch_size", "micro_batch_tokens"):
        assert getattr(defaults, key) == LearnerConfig.model_fields[key].default
    tuned = trl_grpo.rlvr_config(model_dir[0], tmp_path, 4, arm="tuned").learner
    assert tuned.micro_batch_tokens == trl_grpo.MICRO_BATCH_TOKENS == 1024
    assert trl_grpo.micro_batching(trl_grpo.rlvr_config(model_dir[0], tmp_path, 4)) == "`micro_batch_tokens: 1024`"


@pytest.mark.slow
@needs_trl
def test_same_optimizer_fused_adamw(model_dir: tuple[Path, int], tmp_path: Path) -> None:
    import dataclasses

    import torch
    from transformers import Trainer, TrainingArguments

    from rlvr_temp.learner.learner import Learner

    path, _ = model_dir
    args = trl_grpo.trl_args(tmp_path / "trl", steps=1)
    default = next(f.default for f in dataclasses.fields(TrainingArguments) if f.name == "optim")
    assert args.optim == default == "adamw_torch_fused"  # not overridden: transformers' (and TRL's) default
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert cls is torch.optim.AdamW and kwargs["fused"] is True
    assert kwargs["lr"] == args.learning_rate  # weight decay: per parameter group (Trainer.create_optimizer)
    learner = Learner(str(path), trl_grpo.rlvr_config(path, tmp_path / "run", 1, arm="defaults"))
    assert type(learner.optimizer) is torch.optim.AdamW and learner.optimizer.defaults["fused"] is True
    group = learner.optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (kwargs["lr"], args.weight_decay)
    assert (group["betas"], group["eps"]) == (kwargs["betas"], kwargs["eps"])


@pytest.mark.slow
def test_prompts_are_rlvr_temps(model_dir: tuple[Path, int]) -> None:
    from transformers import AutoTokenizer

    from rlvr_temp.data.prompts import load_train_prompts

    rows = trl_grpo.prompt_rows(model_dir[0])  # what TRL's dataset holds
    cfg = trl_grpo.rlvr_config(model_dir[0], "unused", 1, arm="defaults")
    ours, prompts = load_train_prompts(cfg, AutoTokenizer.from_pretrained(str(model_dir[0])))
    assert [r["prompt"] for r in rows] == [prompts[r["id"]] for r in ours] and len(rows) == trl_grpo.N_TRAIN
    assert [r["ground_truth"] for r in rows] == [r["ground_truth"] for r in ours]
    assert all(r["prompt"].startswith("Q: ") and r["prompt"].endswith("\nA:") for r in rows)


# ------------------------------------------------------------------------------------------------- report
def _system(step: float, tokens: float, steps: int = 4, **extra: object) -> dict:
    """A system's result as the children write it: ``steps`` steps (the first a warm-up) of ``step`` s each."""
    per_step = [{"generate": step / 2, "verify": 0.0, "learn": step / 2, "sync": 0.0, "step": step, "tokens": tokens}]
    per_step = [{**per_step[0], "step": 99.0, "tokens": 1.0}] + per_step * (steps - 1)  # a warm-up to drop
    return {"startup_s": 1.0, "steps": steps, "per_step": per_step, **trl_report.summarise(per_step, N), **extra}


def _trl(micro: int, step: float, tokens: float, steps: int = 4) -> dict:
    return _system(step, tokens, steps, system="TRL", version="1.16.0", micro_batch=micro, grad_accum=N // micro)


def _result(trl_step: float, trl_tokens: float, ours_step: float, ours_tokens: float) -> dict:
    setting = dict(prompts=8, group=8, max_tokens=128, lr=1e-6, threads=2, n_train=128, layout="colocated")
    setting |= dict(tuned_micro_batch_tokens=1024, trl_micro_batches=[8, 16, 32, 64])
    trl = _trl(16, trl_step, trl_tokens) | {"optim": "adamw_torch_fused"}
    rlvr = [
        _system(ours_step, ours_tokens, arm="defaults", micro_batching="`micro_batch_tokens: auto`")
        | {"learner_metrics": {"actor/micro_batch_tokens": 1536.0}},
        _system(ours_step / 2, ours_tokens, arm="tuned", micro_batching="`micro_batch_tokens: 1024`")
        | {"learner_metrics": {"actor/micro_batch_tokens": 1024.0}},
    ]
    sweep = [_trl(m, trl_step + (m != 16), trl_tokens, steps=2) for m in (8, 16, 32, 64)]
    res = {"steps": 4, "n_params": 25_297_408, "shape": trl_grpo.SHAPE, "setting": setting}
    return res | {"trl": trl, "rlvr": rlvr, "trl_sweep": sweep}


def test_summarise_drops_the_warm_up_and_counts_tokens() -> None:
    per_step = [{p: 50.0 for p in trl_report.PHASES} | {"tokens": 64.0}]
    per_step += [{p: s for p in trl_report.PHASES} | {"tokens": t} for s, t in ((8.0, 4000.0), (6.0, 6000.0))]
    out = trl_report.summarise(per_step, 64)
    assert out["phases_s"]["step"] == 7.0 and out["tokens_per_step"] == 5000.0
    assert out["response_length_mean"] == pytest.approx(5000 / 64)
    assert out["ms_per_token"] == pytest.approx((2.0 + 1.0) / 2)  # medians of 8 s / 4000 and 6 s / 6000


def test_per_token_ratio_is_the_headline() -> None:
    res = _result(trl_step=16.0, trl_tokens=5120.0, ours_step=8.0, ours_tokens=4480.0)  # lengths 80 / 70
    assert trl_report.speedup(res, "defaults", "step") == pytest.approx(2.0)
    per_token = (16.0 / 5120) / (8.0 / 4480)
    assert trl_report.speedup(res) == trl_report.speedup(res, "defaults") == pytest.approx(per_token)  # 1.75
    assert trl_report.speedup(res, "tuned") == pytest.approx(2 * per_token)
    assert trl_report.speedup({"steps": 4, "rlvr": res["rlvr"]}) is None
    assert trl_report.best_trl(res["trl_sweep"])["micro_batch"] == 16
    table = trl_report.to_markdown(res)
    assert "| mean response length (tokens) | 80.0 | 70.0 | 70.0 |  |  |" in table
    assert "| generated response tokens (mean) | 5120 | 4480 | 4480 |  |  |" in table
    assert f"**{per_token:.2f}×** | **{2 * per_token:.2f}×** |" in table
    assert "| step s (median of steps 2–4) | 16.00 | 8.00 | 4.00 | 2.00× | 4.00× |" in table
    assert table.splitlines()[0].startswith("| per step | TRL 16 × 4 | rlvr_temp defaults | rlvr_temp tuned |")
    # the target is judged per generated token with rlvr_temp's defaults: 2.00x per step but 1.75x per token
    text = "\n".join(trl_report.markdown_section(res, "some CPU, 2 cores", "_ran 1 s_"))
    assert text.startswith(trl_report.HEADING) and f"**{per_token:.2f}×** with rlvr_temp's defaults" in text
    assert "not met" in text and "per step 2.00×" in text
    assert "not met" not in "\n".join(trl_report.markdown_section(_result(16.0, 4480.0, 8.0, 4480.0), "cpu", ""))


def test_section_states_how_each_side_ran() -> None:
    text = "\n".join(trl_report.markdown_section(_result(16.0, 5120.0, 8.0, 4480.0), "cpu", "_ran 1 s_"))
    for said in (
        "`adamw_torch_fused`",  # TRL's optimizer, its default
        "`torch.optim.AdamW(fused=True)`",
        "`use_vllm=False`",  # the engines
        "vLLM CPU rollout worker",
        "not pinned",  # threads on each side
        "pinned to cores",
        "8, 16, 32, 64",  # micro-batching on each side
        "(16 × 4)",
        "defaults: `micro_batch_tokens: auto` (the learner used 1,536); tuned: `micro_batch_tokens: 1024`;",
        "every reward and advantage is 0",
        "medians of steps 2–4",
        "1 measured step(s) each",
        "| 16 × 4 | 16.00 | 8.00 | 5120 | 3.12 | fastest |",
    ):
        assert said in text, said


def test_run_all_targets_and_sections() -> None:
    data = _result(16.0, 5120.0, 8.0, 4480.0)
    rows = [r for r in run_all._targets({"trl": {"data": data}}, {"available": True}) if "TRL" in r]
    ratio = f"{trl_report.speedup(data):.2f}×"
    assert len(rows) == 1 and "per generated token" in rows[0] and f"| {ratio} (tuned: " in rows[0]
    assert rows[0].endswith("| **no** |")
    mach = {"cpu": "cpu", "cores": 2, "date": "today"}
    old = "# Benchmarks\n\n## One demo GRPO step\n\nx\n\n" + trl_grpo.HEADING + "\n\nold figures\n\n## GPU\n\ny\n"
    assert run_all._trl_section(None, mach, old) == [trl_grpo.HEADING + "\n\nold figures", ""]
    skipped = {"data": {"skipped": "trl is not installed"}, "wall_s": 1, **dict.fromkeys(LOADS, 0.5)}
    assert run_all._trl_section(skipped, mach, old) == [trl_grpo.HEADING + "\n\nold figures", ""]
    assert run_all._trl_section(skipped, mach, "")[2].startswith("SKIPPED: trl is not installed")
    assert run_all._trl_section(None, mach, "") == []
    fresh = run_all._trl_section({"data": data, "wall_s": 1, **dict.fromkeys(LOADS, 0.5)}, mach, old)
    assert "old figures" not in "\n".join(fresh) and "cpu, 2 cores" in fresh[2]


def test_skip_trl_keeps_the_pages_trl_and_smoke_sections(tmp_path: Path) -> None:
    page = tmp_path / "bench.md"
    page.write_text(f"# Benchmarks\n\n{trl_grpo.HEADING}\n\nold figures\n\n## GPU\n\nx\n\n## GPU smoke test\n\nsmoke\n")
    assert run_all.main(["--out", str(page), "--only", "trl", "--skip-trl"]) == 0  # nothing left to run
    text = page.read_text()
    assert f"{trl_grpo.HEADING}\n\nold figures\n" in text and text.rstrip().endswith("## GPU smoke test\n\nsmoke")
    assert text.index(trl_grpo.HEADING) < text.index("## GPU\n")


def test_without_trl_one_skip_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    def version(name: str) -> str:
        raise trl_grpo.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(trl_grpo.metadata, "version", version)
    assert trl_grpo.main(["--json", str(tmp_path / "r.json")]) == 0
    assert capsys.readouterr().out == "SKIP trl_grpo: trl is not installed (pip install -e .[bench])\n"
    assert json.loads((tmp_path / "r.json").read_text()) == {
        "skipped": "trl is not installed (pip install -e .[bench])"
    }
