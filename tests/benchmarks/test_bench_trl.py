"""benchmarks/trl_grpo.py: the matched setting of both systems and its docs section (TRL itself is not run).

Skipped without TRL 1.16 (``pip install -e .[bench]``). Slow: it saves a 25.3M-parameter model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("trl")

from benchmarks import run_all, trl_grpo

pytestmark = pytest.mark.slow
LOADS = ("load_1min_start", "load_1min_end")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    return trl_grpo.build_model(tmp_path_factory.mktemp("trl_model"))


def test_model_size_and_tokenizer(model_dir: tuple[Path, int]) -> None:
    from transformers import AutoConfig, AutoTokenizer

    path, n_params = model_dir
    assert round(n_params / 1e6, 1) == 25.3
    cfg = AutoConfig.from_pretrained(path)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (512, 8, 8, 2)
    tok = AutoTokenizer.from_pretrained(path)
    text = "Q: 12 + 3\nA:"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # whitespace kept, one id a char


def test_both_systems_get_the_same_setting(model_dir: tuple[Path, int], tmp_path: Path) -> None:
    path, _ = model_dir
    layout = trl_grpo.rlvr_layouts()[0]
    cfg = trl_grpo.rlvr_config(path, tmp_path / "run", steps=4, layout=layout)
    args = trl_grpo.trl_args(tmp_path / "trl", steps=4)
    assert (cfg.rollout.prompts_per_step, cfg.rollout.group_size, cfg.rollout.max_response_len) == (8, 8, 128)
    assert args.num_generations == cfg.rollout.group_size
    assert args.generation_batch_size == args.per_device_train_batch_size == 64  # one optimizer step per 8 x 8
    assert args.gradient_accumulation_steps == 1 and cfg.learner.mini_batch_size == 64
    assert args.max_completion_length == cfg.rollout.max_response_len
    assert (args.temperature, args.top_p, args.top_k) == (cfg.temperature.base, cfg.rollout.top_p, 0)
    assert cfg.rollout.top_k == -1 and cfg.temperature.mode == "fixed" and not args.use_vllm
    assert cfg.learner.mode == "full" and args.learning_rate == cfg.learner.lr
    assert args.lr_scheduler_type == "constant" and cfg.learner.lr_schedule == "constant"
    assert args.weight_decay == cfg.learner.weight_decay and args.max_grad_norm == cfg.learner.grad_clip
    assert args.beta == cfg.algorithm.kl_coef == 0.0 and args.num_iterations == cfg.algorithm.ppo_epochs == 1
    assert (args.epsilon, args.epsilon_high) == (cfg.algorithm.clip_eps_low, cfg.algorithm.clip_eps_high)
    assert args.loss_type == cfg.algorithm.loss == "dapo" and not cfg.algorithm.dynamic_sampling
    assert args.max_steps == cfg.trainer.total_steps == 4
    if layout is not None:
        assert cfg.resources.layout == "colocated"


def test_prompts_are_rlvr_temps(model_dir: tuple[Path, int]) -> None:
    rows = trl_grpo.prompt_rows(model_dir[0])
    assert len(rows) == trl_grpo.N_TRAIN
    assert all(r["prompt"].startswith("Q: ") and r["prompt"].endswith("\nA:") for r in rows)
    assert all(r["ground_truth"].lstrip("-").isdigit() for r in rows)


def _result(step_trl: float, step_ours: float) -> dict:
    def system(name: str, step: float, **extra: str) -> dict:
        phases = {"generate": step / 2, "verify": 0.0, "learn": step / 2, "sync": 0.0, "step": step}
        return {"system": name, "phases_s": phases, "startup_s": 1.0, "response_length_mean": 80.0, **extra}

    rlvr = [system("rlvr_temp Trainer", step_ours, layout="colocated")]
    return {"steps": 4, "n_params": 25_297_408, "trl": system("TRL", step_trl), "rlvr": rlvr}


def test_section_ratio_and_target() -> None:
    res = _result(6.0, 2.0)
    assert trl_grpo.speedup(res) == pytest.approx(3.0)
    text = "\n".join(trl_grpo.markdown_section(res, "some CPU, 2 cores", "_ran 1 s_"))
    assert text.startswith(trl_grpo.HEADING) and "**3.00×**" in text and "not met" not in text
    assert "not met" in "\n".join(trl_grpo.markdown_section(_result(3.0, 2.0), "cpu", ""))
    assert trl_grpo.speedup({"steps": 4, "rlvr": res["rlvr"]}) is None


def test_run_all_keeps_the_previous_section_when_trl_did_not_run() -> None:
    mach = {"cpu": "cpu", "cores": 2, "date": "today"}
    old = "# Benchmarks\n\n## One demo GRPO step\n\nx\n\n" + trl_grpo.HEADING + "\n\nold figures\n\n## GPU\n\ny\n"
    assert run_all._trl_section(None, mach, old) == [trl_grpo.HEADING + "\n\nold figures", ""]
    skipped = {"data": {"skipped": "trl is not installed"}, "wall_s": 1, **dict.fromkeys(LOADS, 0.5)}
    assert run_all._trl_section(skipped, mach, old) == [trl_grpo.HEADING + "\n\nold figures", ""]
    assert run_all._trl_section(skipped, mach, "")[2].startswith("SKIPPED: trl is not installed")
    assert run_all._trl_section(None, mach, "") == []
    fresh = run_all._trl_section({"data": _result(6.0, 2.0), "wall_s": 1, **dict.fromkeys(LOADS, 0.5)}, mach, old)
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
