"""rlvr_temp's GRPO step against TRL's ``GRPOTrainer`` on the same model, prompts, sampling, reward, loss and optimizer.

The issue's setting: a 25.3M-parameter model of Qwen2's shape (a ``LlamaForCausalLM``: ``transformers`` 5 forces
``Qwen2Tokenizer`` on a ``qwen2`` checkpoint, which drops the character tokenizer's whitespace; so no q/k/v biases),
random weights, the character tokenizer; 8 prompts x 8 responses per step, <= 128 response tokens, temperature 1.0,
full fine-tuning, fused AdamW at a constant lr, no KL, one pass, DAPO's token-mean loss, one optimizer step per 64
responses; reward: the project's verifier (a random model never answers: every reward is 0, both still run the whole
update). :func:`rlvr_config` and :func:`trl_args` hold the matched settings.

The two systems sample differently, so they generate different numbers of tokens: each step's generated response
tokens are counted from what each generated, and the headline is TRL / rlvr_temp per generated token
(benchmarks/trl_report.py), beside per step.

* TRL 1.16 ``GRPOTrainer`` at its defaults beyond that: ``optim`` unset (``adamw_torch_fused``), ``use_vllm=False``
  (``transformers`` ``generate``), 2 torch threads (not pinned). Micro-batch: ``per_device_train_batch_size`` in
  ``--trl-micro`` (8, 16, 32, 64), ``gradient_accumulation_steps`` = 64 / that (``generation_batch_size`` stays 64:
  one generation batch per optimizer step). A pre-pass runs the variants interleaved, ``--sweep-steps`` measured steps
  each after a warm-up, and keeps the fastest per generated token for the main run (four full runs would not fit).
  Phases: ``_generate``, ``_calculate_rewards``, *learn* the rest; *step*: ``on_step_begin`` to ``on_step_end``.
* rlvr_temp's ``Trainer`` (Ray, one vLLM rollout worker, its threads pinned, the learner actor, 2 CPUs),
  ``train_step()``, phases from ``time/*``, twice: *defaults* (no ``learner.micro_batch_*`` key) and *tuned*
  (``learner.micro_batch_tokens: 1024``).

Main run: the best TRL variant and both rlvr_temp arms, each in its own process, steps interleaved
(benchmarks/interleave.py); medians over ``--steps`` measured steps after a warm-up. 10 steps: the whole comparison,
pre-pass included, should take 10-11 minutes on 2 quiet cores (estimated from earlier quiet runs' ~16 s per TRL
step and 8-10 s per rlvr_temp step; not yet measured). Start-up is timed, not compared (the start-ups overlap);
the idle processes' threads and Ray daemons still run beside. Without TRL 1.16: one SKIP line, exit 0.

    python -m benchmarks.trl_grpo                 # pre-pass 4 x (1 + 2) steps, then 1 warm-up + 10 measured steps
    python -m benchmarks.trl_grpo --quick         # pre-pass 4 x (1 + 1), then 1 + 1
    python -m benchmarks.trl_grpo --systems trl   # TRL only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.common import write_json
from benchmarks.interleave import Baton, run_interleaved
from benchmarks.trl_report import (  # noqa: F401  (run_all reads the report through this module)
    ARMS,
    HEADING,
    PHASES,
    TARGET_RATIO,
    best_trl,
    markdown_section,
    speedup,
    summarise,
    to_markdown,
)

ROOT = Path(__file__).resolve().parents[1]

TRL_VERSION = "1.16.0"
PROMPTS, GROUP, MAX_TOKENS = 8, 8, 128
LR, SEED, THREADS = 1e-6, 0, 2
MICRO_BATCH_TOKENS = 1024  # the tuned arm's budget
TRL_MICRO = (8, 16, 32, 64)  # TRL's per_device_train_batch_size variants (x 64 / that accumulation steps)
N_TRAIN = 128  # synthetic problems: 16 steps' worth, so no prompt repeats within a run
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


def rlvr_config(model_path: str | Path, run_dir: str | Path, steps: int, arm: str = "tuned") -> Any:
    """The rlvr_temp ``RunConfig`` of the comparison; ``arm`` ``defaults`` sets no ``learner.micro_batch_*`` key."""
    from rlvr_temp.config.schema import RunConfig
    from rlvr_temp.data.synthetic import PROMPT_TEMPLATE

    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, not {arm!r}")
    learner: dict[str, Any] = dict(mode="full", lr=LR, warmup_steps=0, lr_schedule="constant", weight_decay=0.0)
    learner |= dict(grad_clip=1.0, mini_batch_size=PROMPTS * GROUP)  # one optimizer step per step
    if arm == "tuned":
        # verl's dynamic batch size: responses sorted by length into micro-batches of <= 1,024 padded response tokens
        # (the same gradient). 1,024 was the fastest of 512 / 1,024 / 1,536 / 2,048 / 4,096 / none on the 2-core CPU
        learner["micro_batch_tokens"] = MICRO_BATCH_TOKENS
    tree: dict[str, Any] = {
        "model": {"path": str(model_path), "dtype": "float32", "max_model_len": 256},
        "data": dict(train="synthetic", prompt_template=PROMPT_TEMPLATE, use_chat_template=False)
        | {"synthetic": {"levels": [1, 2, 3], "n_train": N_TRAIN}},
        "rollout": dict(prompts_per_step=PROMPTS, group_size=GROUP, max_response_len=MAX_TOKENS, top_p=1.0, top_k=-1)
        | {"engine": {"kv_cache_gib": 1, "max_num_seqs": PROMPTS * GROUP}},
        "temperature": {"mode": "fixed", "base": 1.0},
        "algorithm": dict(advantage="grpo", loss="dapo", clip_eps_low=0.2, clip_eps_high=0.28, kl_coef=0.0)
        | dict(dynamic_sampling=False, ppo_epochs=1),
        "reward": {"mode": "binary"},
        "learner": learner,
        "trainer": {"total_steps": steps, "seed": SEED, "run_dir": str(run_dir)},
        "logging": {"progress": False, "tensorboard": False},
        "eval": {"every": 0},
        "ray": {"num_cpus": THREADS, "rollout_cpus": 1, "learner_cpus": 1},
    }
    return RunConfig.model_validate(tree)


def micro_batching(cfg: Any) -> str:
    """How ``cfg``'s learner forms micro-batches, for the page."""
    lc = cfg.learner
    if lc.micro_batch_tokens is not None:
        return f"`micro_batch_tokens: {lc.micro_batch_tokens}`"
    return f"`micro_batch_size: {lc.micro_batch_size}`"


def trl_args(out_dir: str | Path, steps: int, micro: int = PROMPTS * GROUP) -> Any:
    """TRL's ``GRPOConfig`` matching :func:`rlvr_config`: micro-batches of ``micro`` responses, accumulated over
    64 / ``micro`` of them, so one generation batch of 64 and one optimizer step per step."""
    from trl import GRPOConfig

    n = PROMPTS * GROUP
    if n % micro:
        raise ValueError(f"micro must divide {n}")
    # grouped by concern: rlvr_config's rollout, learner and algorithm sections, then TRL's own housekeeping;
    # `optim` is left at its default (adamw_torch_fused, as rlvr_temp's learner)
    batch = dict(per_device_train_batch_size=micro, gradient_accumulation_steps=n // micro, num_generations=GROUP)
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
def run_trl(model_path: str, steps: int, baton: Baton, micro: int = PROMPTS * GROUP) -> dict[str, Any]:
    """``steps`` optimizer steps of TRL's ``GRPOTrainer``, each when ``baton`` says; per-step phase times and
    generated completion tokens."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    from rlvr_temp.reward.verify import Verifier
    from rlvr_temp.utils import timed

    torch.set_num_threads(THREADS)
    rows = prompt_rows(model_path)
    verifier = Verifier(num_workers=2)
    phase: dict[str, float] = {}
    per_step: list[dict[str, float]] = []

    def reward(completions: list[str], ground_truth: list[str], **_: Any) -> list[float]:
        return verifier.score_batch(completions, ground_truth)

    class StepTimer(TrainerCallback):  # on_step_begin: the first micro-batch of an optimizer step
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            baton.wait_turn()
            phase.clear()
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            step = time.perf_counter() - self.t0
            gen, ver = phase.get("generate", 0.0), phase.get("verify", 0.0)
            per_step.append(
                {"generate": gen, "verify": ver, "learn": step - gen - ver, "sync": 0.0, "step": step}
                | {"tokens": phase.get("tokens", 0.0)}
            )
            baton.done()

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix="rlvr_bench_trl_") as tmp:
        args = trl_args(tmp, steps, micro)
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[reward],
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            callbacks=[StepTimer()],
        )
        for name, method in (("generate", "_generate"), ("verify", "_calculate_rewards")):
            original = getattr(trainer, method)

            def wrapped(*a: Any, _f: Any = original, _n: str = name, **k: Any) -> Any:
                with timed(phase, _n):
                    out = _f(*a, **k)
                if _n == "generate":  # (prompt_ids, completion_ids, ...): count what was generated
                    phase["tokens"] = phase.get("tokens", 0.0) + sum(len(ids) for ids in out[1])
                return out

            setattr(trainer, method, wrapped)  # the instance attribute shadows the method TRL calls on self
        startup = time.perf_counter() - t0
        try:
            trainer.train()
        finally:
            verifier.close()
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    return {
        "system": f"TRL {metadata.version('trl')} GRPOTrainer",
        "version": metadata.version("trl"),
        "micro_batch": args.per_device_train_batch_size,
        "grad_accum": args.gradient_accumulation_steps,
        "generation_batch_size": args.generation_batch_size,
        "optim": getattr(args.optim, "value", str(args.optim)),
        "optimizer": f"{type(opt).__module__}.{type(opt).__name__}(fused={opt.defaults.get('fused')})",
        "startup_s": startup,
        "steps": len(per_step),
        "per_step": per_step,
        **summarise(per_step, PROMPTS * GROUP),
        "torch_threads": torch.get_num_threads(),
    }


def run_rlvr(model_path: str, steps: int, arm: str, baton: Baton) -> dict[str, Any]:
    """``steps`` calls of rlvr_temp's ``Trainer.train_step()``, each when ``baton`` says; per-step ``time/*`` and
    generated response tokens (``response/length_mean`` x responses)."""
    import ray

    from rlvr_temp.driver.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="rlvr_bench_trl_") as tmp:
        cfg = rlvr_config(model_path, Path(tmp) / "run", steps, arm)
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
    n = PROMPTS * GROUP
    per_step = [
        {p: m.get(f"time/{p}", 0.0) for p in PHASES} | {"tokens": m.get("response/length_mean", 0.0) * n}
        for m in metrics
    ]
    return {
        "system": "rlvr_temp Trainer",
        "arm": arm,
        "layout": cfg.resources.layout,
        "micro_batching": micro_batching(cfg),
        "learner_metrics": {k: v for k, v in metrics[-1].items() if "micro" in k} if metrics else {},
        "startup_s": startup,
        "steps": len(per_step),
        "per_step": per_step,
        **summarise(per_step, n),
    }


# ------------------------------------------------------------------------------------------------- main
def _child(args: argparse.Namespace) -> int:
    """One system in this process (``--system``), stepping when ``--gate`` says; its result as JSON in ``--json``."""
    baton = Baton(args.gate, args.json.stem)
    if args.system == "trl":
        res = run_trl(args.model, args.steps + 1, baton, args.micro)
    else:
        res = run_rlvr(args.model, args.steps + 1, args.arm, baton)
    args.json.write_text(json.dumps(res, indent=2))
    return 0


def _interleave(model: Path, folder: Path, steps: int, jobs: dict[str, list[str]]) -> dict[str, Any]:
    folder.mkdir()
    base = [sys.executable, "-m", "benchmarks.trl_grpo", "--model", str(model), "--steps", str(steps)]
    cmds = {
        name: [*base, "--gate", str(folder), "--json", str(folder / f"{name}.json"), *x] for name, x in jobs.items()
    }
    return run_interleaved(cmds, folder, steps + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="measured steps per system, after 1 warm-up")
    parser.add_argument("--sweep-steps", type=int, default=2, help="TRL pre-pass: measured steps per micro-batch")
    parser.add_argument("--trl-micro", type=int, nargs="+", default=list(TRL_MICRO), help="TRL micro-batch sizes")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="rlvr_temp arms")
    parser.add_argument("--quick", action="store_true", help="1 measured step (pre-pass: 1 each)")
    parser.add_argument("--systems", nargs="+", choices=("trl", "rlvr"), default=["rlvr", "trl"])
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)  # children: the model built by the parent
    parser.add_argument("--system", choices=("trl", "rlvr"), help=argparse.SUPPRESS)
    parser.add_argument("--arm", choices=ARMS, default="tuned", help=argparse.SUPPRESS)
    parser.add_argument("--micro", type=int, default=PROMPTS * GROUP, help=argparse.SUPPRESS)
    parser.add_argument("--gate", type=Path, help=argparse.SUPPRESS)  # children: the interleaving folder
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    steps, sweep_steps = (1, 1) if args.quick else (args.steps, args.sweep_steps)
    if steps < 1 or sweep_steps < 1:
        parser.error("--steps and --sweep-steps must be >= 1")
    if args.system:
        args.steps = steps
        return _child(args)
    skip = trl_missing()
    if skip:
        print(f"SKIP trl_grpo: {skip}", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"skipped": skip}))
        return 0
    micro = args.trl_micro
    setting = dict(prompts=PROMPTS, group=GROUP, max_tokens=MAX_TOKENS, lr=LR, threads=THREADS, n_train=N_TRAIN)
    setting |= dict(tuned_micro_batch_tokens=MICRO_BATCH_TOKENS, trl_micro_batches=micro)
    sweep: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rlvr_bench_trl_model_") as tmp:
        model, n_params = build_model(tmp)
        setting["layout"] = rlvr_config(model, "unused", 1).resources.layout
        print(f"model: {n_params:,} parameters ({n_params / 1e6:.1f}M), {json.dumps(SHAPE)}", flush=True)
        if "trl" in args.systems and len(micro) > 1:
            jobs = {f"trl_{m}": ["--system", "trl", "--micro", str(m)] for m in micro}
            sweep = list(_interleave(model, Path(tmp) / "sweep", sweep_steps, jobs).values())
            best = best_trl(sweep)["micro_batch"]
            print(f"TRL pre-pass: ms per generated token {[round(r['ms_per_token'], 2) for r in sweep]}", flush=True)
        else:
            best = micro[0]
        jobs = {f"rlvr_{arm}": ["--system", "rlvr", "--arm", arm] for arm in args.arms if "rlvr" in args.systems}
        jobs |= {"trl": ["--system", "trl", "--micro", str(best)]} if "trl" in args.systems else {}
        out = _interleave(model, Path(tmp) / "main", steps, jobs)
    res: dict[str, Any] = {"steps": steps + 1, "n_params": n_params, "shape": SHAPE, "setting": setting}
    res |= {"trl": out.get("trl"), "trl_sweep": sweep, "rlvr": [r for name, r in out.items() if name != "trl"]}
    print(to_markdown(res))
    for arm in args.arms:
        if (tok := speedup(res, arm)) is not None:
            print(f"TRL / rlvr_temp {arm}: {tok:.2f}x per generated token, {speedup(res, arm, 'step'):.2f}x per step")
    return write_json(args.json, res)


if __name__ == "__main__":
    raise SystemExit(main())
