"""rlvr_temp's GRPO step against TRL's ``GRPOTrainer`` on the same model, prompts, sampling, reward and loss.

The issue's setting: a 25.3M-parameter model of Qwen2's shape with random weights and the character tokenizer,
8 prompts x 8 responses per step, <= 128 response tokens, temperature 1.0 (no top-p / top-k), full fine-tuning,
AdamW at a constant lr, no KL, one pass per batch, DAPO's token-mean loss; reward for both: the project's verifier
on the synthetic arithmetic prompts (a random model never writes ``\\boxed{}``: every reward is 0, and both still
run the whole update). :func:`rlvr_config` and :func:`trl_args` hold the matched settings. The model is a
``LlamaForCausalLM`` of Qwen2's shape (``transformers`` 5 forces ``Qwen2Tokenizer`` on a ``qwen2`` checkpoint, which
drops the character tokenizer's whitespace), so without Qwen2's q/k/v biases; intermediate size 1626 makes 25.3M.

Each system runs in its own process, all started together; their steps interleave (benchmarks/interleave.py):

* TRL 1.16 ``GRPOTrainer``, ``use_vllm=False`` (``transformers`` ``generate``), 2 torch threads, one optimizer step
  per 64 responses. *generate*: ``GRPOTrainer._generate``; *verify*: ``_calculate_rewards``; *learn*: the rest of
  the optimizer step; *step*: ``on_step_begin`` to ``on_step_end``.
* rlvr_temp's ``Trainer`` (Ray, one vLLM rollout worker, the learner actor, 2 CPUs), ``train_step()``, phases from
  its ``time/*`` metrics, in the first ``resources.layout`` the config knows (``colocated``; as shipped without);
  ``--layouts colocated split`` adds systems.

Medians over the measured steps after one warm-up; the ratio is TRL s/step / rlvr_temp s/step. Left out: start-up
is timed but not compared (the start-ups overlap); the idle processes' threads and Ray daemons still run beside.
Without TRL 1.16 it prints one SKIP line and exits 0.

    python -m benchmarks.trl_grpo                 # 1 warm-up + 5 measured steps per system
    python -m benchmarks.trl_grpo --quick         # 1 measured step
    python -m benchmarks.trl_grpo --systems trl   # one system only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.common import write_json
from benchmarks.interleave import Baton, run_interleaved

ROOT = Path(__file__).resolve().parents[1]

TRL_VERSION = "1.16.0"
PROMPTS, GROUP, MAX_TOKENS = 8, 8, 128
LR, SEED, THREADS = 1e-6, 0, 2
MICRO_BATCH_TOKENS = 1024
N_TRAIN = 64  # synthetic problems: 8 steps' worth, so no prompt repeats within a run
PHASES = ("generate", "verify", "learn", "sync", "step")
SHAPE = {
    "vocab_size": 128,
    "hidden_size": 512,
    "intermediate_size": 1626,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


def trl_missing() -> str | None:
    """Why TRL cannot run here (one line), or None."""
    try:
        version = metadata.version("trl")
    except metadata.PackageNotFoundError:
        return "trl is not installed (pip install -e .[bench])"
    if version != TRL_VERSION:
        return f"trl {version} is installed; this benchmark is written for trl {TRL_VERSION} (pip install -e .[bench])"
    try:
        from trl import GRPOConfig, GRPOTrainer  # noqa: F401  (a dependency of trl may be missing)
    except ImportError as exc:
        return f"trl {version} does not import: {exc}"
    return None


# ------------------------------------------------------------------------------------------------- setting
def build_model(out_dir: str | Path) -> tuple[Path, int]:
    """Save the random-weight model (seeded) and the character tokenizer to ``out_dir``; returns (path, params)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlvr_temp.data.tiny_model import build_tokenizer

    out = Path(out_dir)
    tok = build_tokenizer(SHAPE["vocab_size"])
    ids = {"bos_token_id": tok.eos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    config = LlamaConfig(**SHAPE, **ids, tie_word_embeddings=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6)
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).float()
    for key, value in ids.items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def rlvr_config(model_path: str | Path, run_dir: str | Path, steps: int, layout: str | None = None) -> Any:
    """The rlvr_temp ``RunConfig`` of the comparison (``layout``: a ``resources.layout`` value, None = as shipped)."""
    from rlvr_temp.config.schema import RunConfig
    from rlvr_temp.data.synthetic import PROMPT_TEMPLATE

    tree: dict[str, Any] = {
        "model": {"path": str(model_path), "dtype": "float32", "max_model_len": 256},
        "data": {
            "train": "synthetic",
            "prompt_template": PROMPT_TEMPLATE,
            "use_chat_template": False,
            "synthetic": {"levels": [1, 2, 3], "n_train": N_TRAIN},
        },
        "rollout": {
            "prompts_per_step": PROMPTS,
            "group_size": GROUP,
            "max_response_len": MAX_TOKENS,
            "top_p": 1.0,
            "top_k": -1,
            "engine": {"kv_cache_gib": 1, "max_num_seqs": PROMPTS * GROUP},
        },
        "temperature": {"mode": "fixed", "base": 1.0},
        "algorithm": {
            "advantage": "grpo",
            "loss": "dapo",
            "clip_eps_low": 0.2,
            "clip_eps_high": 0.28,
            "kl_coef": 0.0,
            "dynamic_sampling": False,
            "ppo_epochs": 1,
        },
        "reward": {"mode": "binary"},
        "learner": {
            "mode": "full",
            "lr": LR,
            "warmup_steps": 0,
            "lr_schedule": "constant",
            "weight_decay": 0.0,
            "grad_clip": 1.0,
            "mini_batch_size": PROMPTS * GROUP,
            "micro_batch_size": PROMPTS * GROUP,
            # verl's dynamic batch size: responses sorted by length into micro-batches of <= 1,024 padded tokens
            # (same gradient; TRL's GRPOTrainer pads the 64 responses to the longest). 1,024 was the fastest of
            # 1,024 / 1,536 / 2,048 / 4,096 / none on the 2-core CPU: 4.4 / 4.5 / 4.8 / 5.1 / 8.0 s per update.
            # With learner.share_prompts (the default) each group's prompt runs once and the budget counts
            # response tokens: 3.7 s (512: 3.7 s, 2,048: 4.2 s; measured before the padding-aware cut)
            "micro_batch_tokens": MICRO_BATCH_TOKENS,
        },
        "trainer": {"total_steps": steps, "seed": SEED, "run_dir": str(run_dir)},
        "logging": {"progress": False, "tensorboard": False},
        "eval": {"every": 0},
        "ray": {"num_cpus": THREADS, "rollout_cpus": 1, "learner_cpus": 1},
    }
    if layout is not None:
        tree["resources"] = {"layout": layout}
    return RunConfig.model_validate(tree)


def rlvr_layouts() -> list[str | None]:
    """The ``resources.layout`` values to run (colocated first), or ``[None]`` where the config has no layouts."""
    from typing import get_args

    from rlvr_temp.config.schema import RunConfig

    field = RunConfig.model_fields.get("resources")
    sub = getattr(field, "annotation", None) if field else None
    layout = getattr(sub, "model_fields", {}).get("layout") if sub else None
    if layout is None:
        return [None]
    values = list(get_args(layout.annotation)) or [layout.default]
    return sorted(values, key=lambda v: v != "colocated")


def trl_args(out_dir: str | Path, steps: int) -> Any:
    """TRL's ``GRPOConfig`` matching :func:`rlvr_config` (one optimizer step per 8 x 8 responses)."""
    from trl import GRPOConfig

    # grouped by concern: rlvr_config's rollout, learner and algorithm sections, then TRL's own housekeeping
    batch = dict(per_device_train_batch_size=PROMPTS * GROUP, gradient_accumulation_steps=1, num_generations=GROUP)
    sampling = dict(max_completion_length=MAX_TOKENS, temperature=1.0, top_p=1.0, top_k=0, use_vllm=False)
    optim = dict(learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0)
    loss = dict(beta=0.0, num_iterations=1, epsilon=0.2, epsilon_high=0.28, loss_type="dapo", scale_rewards="group")
    quiet = dict(logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, log_completions=False)
    return GRPOConfig(
        output_dir=str(out_dir),
        max_steps=steps,
        seed=SEED,
        use_cpu=True,
        bf16=False,
        optim="adamw_torch",
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        remove_unused_columns=False,  # the reward function reads the ground_truth column
        **batch,
        **sampling,
        **optim,
        **loss,
        **quiet,
    )


def prompt_rows(model_path: str | Path) -> list[dict[str, str]]:
    """The synthetic training prompts exactly as rlvr_temp formats them: ``prompt`` and ``ground_truth``."""
    from transformers import AutoTokenizer

    from rlvr_temp.data.prompts import load_train_prompts

    cfg = rlvr_config(model_path, "unused", 1)
    rows, prompts = load_train_prompts(cfg, AutoTokenizer.from_pretrained(str(model_path)))
    return [{"prompt": prompts[r["id"]], "ground_truth": r["ground_truth"]} for r in rows]


# ------------------------------------------------------------------------------------------------- systems
def _medians(per_step: list[dict[str, float]]) -> dict[str, float]:
    timed = per_step[1:] if len(per_step) > 1 else per_step  # step 0 is the warm-up
    return {p: statistics.median(s[p] for s in timed) if all(p in s for s in timed) else float("nan") for p in PHASES}


def run_trl(model_path: str, steps: int, baton: Baton) -> dict[str, Any]:
    """``steps`` optimizer steps of TRL's ``GRPOTrainer``, each when ``baton`` says; per-step phase times."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    from rlvr_temp.reward.verify import Verifier
    from rlvr_temp.utils import timed

    torch.set_num_threads(THREADS)
    from datasets import Dataset

    rows = prompt_rows(model_path)
    verifier = Verifier(num_workers=2)
    phase: dict[str, float] = {}
    per_step: list[dict[str, float]] = []

    def reward(completions: list[str], ground_truth: list[str], **_: Any) -> list[float]:
        return verifier.score_batch(completions, ground_truth)

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            baton.wait_turn()
            phase.clear()
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            step = time.perf_counter() - self.t0
            gen, ver = phase.get("generate", 0.0), phase.get("verify", 0.0)
            per_step.append({"generate": gen, "verify": ver, "learn": step - gen - ver, "sync": 0.0, "step": step})
            baton.done()

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix="rlvr_bench_trl_") as tmp:
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[reward],
            args=trl_args(tmp, steps),
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            callbacks=[StepTimer()],
        )
        for name, method in (("generate", "_generate"), ("verify", "_calculate_rewards")):
            original = getattr(trainer, method)

            def wrapped(*a: Any, _f: Any = original, _n: str = name, **k: Any) -> Any:
                with timed(phase, _n):
                    return _f(*a, **k)

            setattr(trainer, method, wrapped)  # the instance attribute shadows the method TRL calls on self
        startup = time.perf_counter() - t0
        try:
            trainer.train()
        finally:
            verifier.close()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return {
        "system": f"TRL {metadata.version('trl')} GRPOTrainer",
        "startup_s": startup,
        "per_step": per_step,
        "phases_s": _medians(per_step),
        "response_length_mean": statistics.median(lengths[1:] or lengths) if lengths else float("nan"),
        "torch_threads": torch.get_num_threads(),
    }


def run_rlvr(model_path: str, steps: int, layout: str | None, baton: Baton) -> dict[str, Any]:
    """``steps`` calls of rlvr_temp's ``Trainer.train_step()``, each when ``baton`` says; per-step ``time/*``."""
    import ray

    from rlvr_temp.driver.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="rlvr_bench_trl_") as tmp:
        cfg = rlvr_config(model_path, Path(tmp) / "run", steps, layout)
        t0 = time.perf_counter()
        trainer = Trainer(cfg)
        startup = time.perf_counter() - t0
        metrics = []
        try:
            for _ in range(steps):
                baton.wait_turn()
                metrics.append(trainer.train_step())
                baton.done()
        finally:
            trainer.close()
            ray.shutdown()
    per_step = [{p: m.get(f"time/{p}", 0.0) for p in PHASES} for m in metrics]
    lengths = [m.get("response/length_mean", float("nan")) for m in metrics]
    return {
        "system": "rlvr_temp Trainer",
        "layout": layout or "as shipped",
        "startup_s": startup,
        "per_step": per_step,
        "phases_s": _medians(per_step),
        "response_length_mean": statistics.median(lengths[1:] or lengths),
    }


# ------------------------------------------------------------------------------------------------- report
def to_markdown(res: dict[str, Any]) -> str:
    """The comparison table: one column per system, TRL / rlvr_temp ratios per rlvr_temp layout."""
    trl, ours = res.get("trl"), res.get("rlvr", [])
    cols = ([trl] if trl else []) + ours
    names = [c["system"] + (f" ({c['layout']})" if "layout" in c else "") for c in cols]
    head = "| phase | " + " | ".join(f"{n} s" for n in names)
    head += "".join(f" | TRL / rlvr_temp ({o['layout']})" for o in ours) if trl else ""
    lines = [head + " |", "|---|" + "---:|" * (len(cols) + (len(ours) if trl else 0))]
    steps = res["steps"]
    for p in PHASES:
        cells = [f"{c['phases_s'][p]:.2f}" for c in cols]
        if trl:
            cells += [
                f"**{trl['phases_s'][p] / o['phases_s'][p]:.2f}×**" if o["phases_s"][p] > 0 else "—" for o in ours
            ]
        lines.append(f"| {p} (median of steps 2–{steps}) | " + " | ".join(cells) + " |")
    cells = [f"{c['startup_s']:.1f}" for c in cols] + ([""] * len(ours) if trl else [])
    lines.append("| start-up (not compared) | " + " | ".join(cells) + " |")
    cells = [f"{c['response_length_mean']:.1f}" for c in cols] + ([""] * len(ours) if trl else [])
    lines.append("| mean response length (tokens) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def speedup(res: dict[str, Any]) -> float | None:
    """TRL s/step / rlvr_temp s/step for the first (preferred) rlvr_temp layout, or None."""
    if not res.get("trl") or not res.get("rlvr"):
        return None
    return res["trl"]["phases_s"]["step"] / res["rlvr"][0]["phases_s"]["step"]


HEADING = "## rlvr_temp vs TRL GRPOTrainer (`trl_grpo.py`)"
TARGET_RATIO = 2.0  # the issue: rlvr_temp's step at least twice as fast as TRL's on this setting


def markdown_section(res: dict[str, Any], machine: str, context: str) -> list[str]:
    """The docs/benchmarks.md section (``machine``: CPU, cores and date; ``context``: wall time and load)."""
    out = [HEADING, ""]
    if "skipped" in res:
        return [*out, f"SKIPPED: {res['skipped']}.", ""]
    ours = res["rlvr"][0] if res.get("rlvr") else None
    ratio = speedup(res)
    out += [
        f"Ran on {machine}. Model: {res['n_params']:,} parameters ({res['n_params'] / 1e6:.1f}M), Qwen2's shape "
        f"(hidden {SHAPE['hidden_size']}, {SHAPE['num_hidden_layers']} layers, {SHAPE['num_attention_heads']} query / "
        f"{SHAPE['num_key_value_heads']} key-value heads, intermediate {SHAPE['intermediate_size']}, tied "
        "embeddings) as a `LlamaForCausalLM` (no q/k/v biases: `transformers` 5 forces `Qwen2Tokenizer` on a "
        "`qwen2` checkpoint), random weights, the character tokenizer (vocabulary 128).",
        f"Both systems: {PROMPTS} prompts × {GROUP} responses per step, ≤ {MAX_TOKENS} response tokens, temperature "
        f"1.0 (no top-p / top-k), full fine-tuning, AdamW lr {LR:g} constant, no weight decay, clip-norm 1.0, no KL, "
        "one pass per batch, DAPO token-mean loss (clip 0.2 / 0.28), one optimizer step per step (TRL: the 64 "
        "responses in one micro-batch padded to the longest; rlvr_temp: sorted by length into micro-batches of "
        f"≤ {MICRO_BATCH_TOKENS:,} padded response tokens, verl's dynamic batch size, each group's prompt run "
        "once (`learner.share_prompts`), the same gradient); reward: the "
        "project's verifier on the synthetic arithmetic prompts (the random model "
        "never answers, so every reward is 0 — both still run the whole update).",
        f"TRL: `GRPOTrainer`, `use_vllm=False` (`transformers` `generate`), {THREADS} torch threads; *learn* is the "
        "optimizer step minus generation and reward. rlvr_temp: `Trainer.train_step()` (Ray, one vLLM rollout "
        f"worker, the learner actor, {THREADS} CPUs), per `resources.layout`. Each system in its own process, steps "
        "interleaved (one step of one system at a time, order reversed every step: `benchmarks/interleave.py`); "
        f"medians of steps 2–{res['steps']} (step 1 is a warm-up).",
        "",
        to_markdown(res),
        "",
        context,
        "",
    ]
    if ratio is not None and ours is not None:
        met = "met" if ratio >= TARGET_RATIO else "**not met**"
        out += [
            f"TRL s/step ÷ rlvr_temp s/step ({ours['layout']}): **{ratio:.2f}×** (target ≥ {TARGET_RATIO:.0f}×: "
            f"{met}).",
            "",
        ]
    return out


# ------------------------------------------------------------------------------------------------- main
def _child(args: argparse.Namespace) -> int:
    """One system in this process (``--system``), stepping when ``--gate`` says; its result as JSON in ``--json``."""
    baton = Baton(args.gate, args.json.stem)
    if args.system == "trl":
        res = run_trl(args.model, args.steps + 1, baton)
    else:
        res = run_rlvr(args.model, args.steps + 1, None if args.layout == "shipped" else args.layout, baton)
    args.json.write_text(json.dumps(res, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="measured steps per system, after 1 warm-up (default 5)")
    parser.add_argument("--quick", action="store_true", help="1 measured step")
    parser.add_argument("--systems", nargs="+", choices=("trl", "rlvr"), default=["rlvr", "trl"])
    parser.add_argument(
        "--layouts",
        nargs="+",
        default=None,
        help="rlvr_temp resources.layout values (default: the first, colocated; every extra system's idle processes "
        "load the 2-core machine during the others' steps)",
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)  # children: the model built by the parent
    parser.add_argument("--system", choices=("trl", "rlvr"), help=argparse.SUPPRESS)
    parser.add_argument("--layout", default="shipped", help=argparse.SUPPRESS)
    parser.add_argument("--gate", type=Path, help=argparse.SUPPRESS)  # children: the interleaving folder
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    steps = 1 if args.quick else args.steps
    if steps < 1:
        parser.error("--steps must be >= 1")
    if args.system:
        args.steps = steps
        return _child(args)
    skip = trl_missing()
    if skip:
        print(f"SKIP trl_grpo: {skip}", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"skipped": skip}))
        return 0
    layouts = args.layouts or [v or "shipped" for v in rlvr_layouts()[:1]]
    with tempfile.TemporaryDirectory(prefix="rlvr_bench_trl_model_") as tmp:
        model, n_params = build_model(tmp)
        print(f"model: {n_params:,} parameters ({n_params / 1e6:.1f}M), {json.dumps(SHAPE)}", flush=True)
        jobs = {f"rlvr_{lay}": ["--system", "rlvr", "--layout", lay] for lay in layouts if "rlvr" in args.systems}
        jobs |= {"trl": ["--system", "trl"]} if "trl" in args.systems else {}
        gate = Path(tmp) / "gate"
        gate.mkdir()
        base = [sys.executable, "-m", "benchmarks.trl_grpo", "--model", str(model), "--steps", str(steps)]
        base += ["--gate", str(gate)]
        out = run_interleaved(
            {name: [*base, "--json", str(gate / f"{name}.json"), *extra] for name, extra in jobs.items()},
            gate,
            steps + 1,
        )
    res: dict[str, Any] = {"steps": steps + 1, "n_params": n_params, "shape": SHAPE, "trl": out.get("trl")}
    res["rlvr"] = [r for name, r in out.items() if name != "trl"]
    print(to_markdown(res))
    if (ratio := speedup(res)) is not None:
        print(f"TRL s/step / rlvr_temp s/step: {ratio:.2f}x")
    return write_json(args.json, res)


if __name__ == "__main__":
    raise SystemExit(main())
