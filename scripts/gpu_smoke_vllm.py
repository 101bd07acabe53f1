"""Group 2 of scripts/gpu_smoke.py: the vLLM checks, through rlvr_temp's own engine code.

One :class:`rlvr_temp.engine.worker.RolloutWorker` (vLLM's multiprocess mode, V1 model runner) on the smoke model
(random weights in Qwen2.5-1.5B's shapes; ``--small``: 2 layers, vocabulary 1,024; the tiny model's character
tokenizer, so nothing is downloaded) serves checks 1-5; check 2 (V2 runner, CUDA only) starts a second engine for a
moment, and ``trainer_step`` closes the first one and runs :class:`rlvr_temp.driver.trainer.Trainer` (Ray, its own
engine and NF4 learner, colocated on one device) for one step. Importing this module imports neither vLLM nor Ray
(group 1 runs on machines without them); every check is SKIPPED("vLLM not installed") when vLLM cannot be imported.

Checks added after the GPU review (docs/cluster.md, smoke section), each of which a failure found there would
fail: ``capped_logprobs_finite`` (NaN log-prob of a length-capped response's last token under async scheduling),
``rollout_throughput_seeded`` (per-request seeds on CUDA: FAIL below ``SEEDED_TARGET`` of the unseeded tokens/s),
``weight_transfer_small_bucket`` (a tensor larger than one bucket / packed IPC buffer), ``colocated_sync_plan`` (a
colocated 2-rank recipe must sync over ipc, never two NCCL ranks on one GPU; rlvr_temp.driver.plan, no GPU used).
A check whose rlvr_temp module does not exist is SKIPPED("not available ...") (ImportError only).

Left out: tensor parallelism (tests/e2e/test_engine_tp.py), learned mode's TTM head, and several engines.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
GROUP2 = {
    "vllm_engine_v1": "a RolloutWorker engine starts with TemperatureProcessor on the V1 model runner",
    "vllm_engine_v2": "a RolloutWorker engine starts with TemperatureProcessorV2 on the V2 model runner",
    "records_aligned": "per-token temperatures / entropies / log-probs align with the tokens; hot share = configured",
    "rollout_vs_transformers_logprobs": "vLLM's processed log-probs equal transformers' at the recorded temperatures",
    "capped_logprobs_finite": "length-capped responses (ignore_eos, max_tokens reached): every log-prob finite",
    "rollout_throughput": "token mode tokens/s against plain vLLM on the same engine (interleaved, medians)",
    "rollout_throughput_seeded": "token mode seeded as rollouts seed it against unseeded (interleaved, medians)",
    "weight_transfer": "weights.sender.trainer_engine moves the weights; greedy output then equals transformers'",
    "weight_transfer_small_bucket": "the same through a bucket smaller than the largest tensor (the embedding)",
    "colocated_sync_plan": "driver.plan: a colocated 2-rank recipe syncs over ipc, no NCCL group shares a GPU",
    "trainer_step": "one Trainer.train_step, learner and engine colocated on one device",
}
# prompts x responses x tokens of records_aligned; prompts x tokens x repetitions of rollout_throughput
# capped: prompts x responses x max_tokens of capped_logprobs_finite
SETTINGS = {
    "gpu": dict(records=(64, 4, 256), throughput=(256, 256, 5), lp_rollouts=32, max_model_len=1024, greedy=16),
    "small": dict(records=(16, 4, 48), throughput=(64, 32, 5), lp_rollouts=32, max_model_len=256, greedy=16),
}
SETTINGS["gpu"]["capped"], SETTINGS["small"]["capped"] = (64, 4, 96), (16, 2, 24)
RULE = dict(t_low=0.8, t_high=1.2, hot_fraction=0.2, window=100_000, scope="global")  # benchmarks/bench_rollout.py's
HOT_TOLERANCE = 0.05
# max |vLLM - transformers| of per-token log-probs: fp32 on the CPU; bf16 engine against an fp32 reference on CUDA
LOGPROB_TOL = {"cpu": 1e-5, "cuda": 0.1}  # cpu: fp32 round-off (measured max ~1.4e-6)
# greedy after an update: equal tokens, or (bf16 on CUDA) every engine token within this of transformers' best logit
GREEDY_GAP_TOL = {"cpu": 0.0, "cuda": 0.05}
THROUGHPUT_TARGET = {"cpu": 0.9, "cuda": 0.97}
# seeded / unseeded token mode: per-request seeds made vLLM's V1 sampler draw row by row on CUDA (one kernel per
# seeded row and step: review S2); the worker seeds the engine instead there. The CPU sampler takes the seeds.
SEEDED_TARGET = {"cpu": 0.8, "cuda": 0.95}
SMALL_BUCKET = 1 << 20  # weight_transfer_small_bucket: 1 MiB, or half the largest tensor where that is less
GPU_MEMORY = 0.25  # gpu_memory_utilization of each smoke engine (two at once while vllm_engine_v2 runs)


def skip_reason() -> str | None:
    """Why group 2 cannot run here, or None."""
    return "vLLM not installed" if importlib.util.find_spec("vllm") is None else None


def run_group(ctx: Any, run_check: Callable[[str, int, Callable[[Any], dict]], None]) -> None:
    """Every group-2 check through ``run_check(name, group, fn)`` (the driver's timing, recording, error capture)."""
    reason = skip_reason()
    ctx.settings = SETTINGS["small" if ctx.small else "gpu"]
    ctx.__dict__.update(worker=None, rollouts=None, reference=None, kind=ctx.device.type)
    try:
        for name in GROUP2:
            fn = globals()[f"check_{name}"] if reason is None else _skipped(reason)
            run_check(name, 2, fn)
    finally:
        _close(ctx)


def _skipped(reason: str) -> Callable[[Any], dict]:
    def fn(ctx: Any) -> dict:
        raise ctx.Outcome("SKIPPED", reason)

    return fn


def _close(ctx: Any) -> None:
    if ctx.worker is not None:
        ctx.worker.close()
        ctx.worker = None
    ctx.reference = None
    gc.collect()


def _model_dir(ctx: Any) -> str:
    """The smoke model's folder (group 1's random Qwen2, built here if group 1 did not), with a tokenizer."""
    from rlvr_temp.data.tiny_model import build_tokenizer

    path = ctx.save_model()
    if not (path / "tokenizer.json").exists():
        build_tokenizer().save_pretrained(path)  # 128 tokens; ids above are decoded as nothing
    return str(path)


def _need(ctx: Any, attr: str, what: str) -> Any:
    if getattr(ctx, attr) is None:
        raise ctx.Outcome("SKIPPED", f"needs {what}, which did not run or failed")
    return getattr(ctx, attr)


def _worker(ctx: Any, runner: str) -> Any:
    from rlvr_temp.config.schema import EngineConfig, ModelConfig
    from rlvr_temp.engine.worker import RolloutWorker

    path, s = _model_dir(ctx), ctx.settings
    ctx.sync_backend = "gloo" if ctx.kind != "cuda" else "nccl" if torch.cuda.device_count() > 1 else "ipc"
    model = ModelConfig(path=path, dtype=str(ctx.dtype).removeprefix("torch."), max_model_len=s["max_model_len"])
    engine = EngineConfig(model_runner=runner, weight_sync=ctx.sync_backend, gpu_memory_utilization=GPU_MEMORY)
    # one OpenMP thread on the CPU, as the demo's rollout actor (spinning OpenMP barriers dominate a busy machine)
    return RolloutWorker(path, model, engine, seed=0, num_threads=1 if ctx.kind != "cuda" else None)


def _engine(ctx: Any, runner: str) -> tuple[Any, dict[str, Any]]:
    """Start an engine; its engine_info() and a short token-mode generation, checked for the runner asked for."""
    t0 = time.perf_counter()
    worker = _worker(ctx, runner)
    info, seconds = worker.engine_info(), time.perf_counter() - t0
    rank0 = info["ranks"][0]
    metrics = {"start_seconds": seconds, "model_runner": info["model_runner"], "runner_class": rank0["model_runner"]}
    metrics |= {"processor": rank0["processor"], "vllm": info["vllm"], "multiprocess": info["multiprocess"]}
    metrics |= {"async_scheduling": info["async_scheduling"], "engine_device": info["device"]}
    groups = worker.generate(["Q: 1+2\nA:"], [[1.0, 1.1]], max_tokens=8, strategy=_token_strategy(), seed=0)
    metrics["tokens"] = sum(len(r.token_ids) for r in groups[0])
    worker.reset_temperature_state()
    v2 = rank0["model_runner"] == "vllm.v1.worker.gpu.model_runner"  # Model Runner V2's module
    want = "TemperatureProcessorV2" if runner == "v2" else "TemperatureProcessor"
    if info["model_runner"] != runner or v2 != (runner == "v2") or rank0["processor"] != want:
        worker.close()
        raise ctx.Outcome("FAIL", f"asked for {runner} with {want}, the engine runs {rank0}", **metrics)
    if not _aligned(groups):
        worker.close()
        raise ctx.Outcome("FAIL", "per-token records do not align with the tokens", **metrics)
    return worker, metrics


def _token_strategy() -> Any:
    from rlvr_temp.config.schema import TemperatureConfig, TokenRuleConfig
    from rlvr_temp.temperature import make_strategy

    return make_strategy(TemperatureConfig(mode="token", token=TokenRuleConfig(**RULE)))


def _aligned(groups: list[list[Any]]) -> bool:
    return all(
        len(r.token_ids) == len(r.token_temperatures) == len(r.token_entropies) == len(r.token_logprobs) > 0
        for g in groups
        for r in g
    )


def _prompts(n: int) -> list[str]:
    return [f"Q: {(7 * i) % 97 + 3}{'+-*'[i % 3]}{(13 * i) % 89 + 2}\nA:" for i in range(n)]


# ------------------------------------------------------------------------------------------------ checks
def check_vllm_engine_v1(ctx: Any) -> dict[str, Any]:
    ctx.worker, metrics = _engine(ctx, "v1")
    return metrics


def check_vllm_engine_v2(ctx: Any) -> dict[str, Any]:
    if ctx.kind != "cuda":
        raise ctx.Outcome("SKIPPED", "the V2 model runner needs CUDA (vLLM's CPU build runs V1 only)")
    worker, metrics = _engine(ctx, "v2")
    worker.close()
    return metrics


def check_records_aligned(ctx: Any) -> dict[str, Any]:
    """Natural stops (records cut to the returned tokens) and ``ignore_eos`` (hot share over n x g x m tokens)."""
    worker = _need(ctx, "worker", "the V1 engine")
    n, g, m = ctx.settings["records"]
    prompts, temps, strategy = _prompts(n), [[1.0] * g] * n, _token_strategy()
    worker.reset_temperature_state()
    natural = worker.generate(prompts, temps, max_tokens=m, strategy=strategy, seed=1)
    full = worker.generate(prompts, temps, max_tokens=m, strategy=strategy, seed=2, ignore_eos=True)
    ctx.rollouts = [r for gr in natural + full for r in gr]
    values = [round(t, 5) for gr in full for r in gr for t in r.token_temperatures]  # recorded in float32
    hot = sum(t == RULE["t_high"] for t in values) / max(len(values), 1)
    metrics: dict[str, Any] = {"responses": len(ctx.rollouts), "tokens": sum(len(r.token_ids) for r in ctx.rollouts)}
    metrics |= {"natural_stops": sum(r.finish_reason == "stop" for gr in natural for r in gr)}
    metrics |= {"hot_share": hot, "hot_share_target": RULE["hot_fraction"], "hot_share_tokens": len(values)}
    metrics["temperature_values"] = sorted(set(values))
    if not _aligned(natural + full):
        raise ctx.Outcome("FAIL", "a response's per-token records differ in length from its tokens", **metrics)
    if any(len(r.token_ids) != m for gr in full for r in gr):
        raise ctx.Outcome("FAIL", f"an ignore_eos response is not {m} tokens long", **metrics)
    if not set(values) <= {RULE["t_low"], RULE["t_high"]}:
        raise ctx.Outcome("FAIL", f"temperatures outside the rule's {RULE['t_low']} / {RULE['t_high']}", **metrics)
    if abs(hot - RULE["hot_fraction"]) > HOT_TOLERANCE:
        raise ctx.Outcome(
            "FAIL", f"hot share {hot:.3f} not within {HOT_TOLERANCE} of {RULE['hot_fraction']}", **metrics
        )
    return metrics


def check_capped_logprobs_finite(ctx: Any) -> dict[str, Any]:
    """Responses cut at ``max_tokens`` (``ignore_eos``), as long ones are in a run: the last token of each is never
    scheduled again, so a per-token log-prob recorded one step late must still arrive (NaN = FAIL)."""
    worker = _need(ctx, "worker", "the V1 engine")
    n, g, m = ctx.settings["capped"]
    worker.reset_temperature_state()
    groups = worker.generate(_prompts(n), [[1.0] * g] * n, max_tokens=m, strategy=_token_strategy(), seed=3,
                             ignore_eos=True)  # fmt: skip
    responses = [r for gr in groups for r in gr]
    values = [v for r in responses for v in r.token_logprobs]
    bad = [i for i, r in enumerate(responses) if not all(math.isfinite(v) for v in r.token_logprobs)]
    last = [r.token_logprobs[-1] for r in responses if r.token_logprobs]
    metrics: dict[str, Any] = {"responses": len(responses), "max_tokens": m, "tokens": len(values)}
    metrics |= {"length_finished": sum(r.finish_reason == "length" for r in responses)}
    metrics |= {"non_finite": sum(not math.isfinite(v) for v in values), "responses_non_finite": len(bad)}
    metrics["last_token_non_finite"] = sum(not math.isfinite(v) for v in last)
    if any(len(r.token_ids) != m for r in responses) or not _aligned(groups):
        raise ctx.Outcome("FAIL", f"a capped response is not {m} tokens long, or its records do not align", **metrics)
    if bad:
        raise ctx.Outcome("FAIL", f"{len(bad)} length-capped responses have non-finite log-probs", **metrics)
    return metrics


def _reference(ctx: Any) -> Any:
    """transformers' model of the smoke weights, fp32 on the device (the reference the engine is held to)."""
    if ctx.reference is None:
        from transformers import AutoModelForCausalLM

        ctx.reference = AutoModelForCausalLM.from_pretrained(_model_dir(ctx), dtype=torch.float32).to(ctx.device)
        ctx.reference.eval()
    return ctx.reference


@torch.no_grad()
def _logits(model: Any, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """fp32 logits that predicted each of ``tokens`` after ``prompt``."""
    ids = torch.tensor([prompt + tokens], device=model.device)
    return model(input_ids=ids, use_cache=False).logits[0, len(prompt) - 1 : -1].float()


def check_rollout_vs_transformers_logprobs(ctx: Any) -> dict[str, Any]:
    rollouts = _need(ctx, "rollouts", "records_aligned's rollouts")
    picked = rollouts[:: max(1, len(rollouts) // ctx.settings["lp_rollouts"])][: ctx.settings["lp_rollouts"]]
    model, lp_diff, h_diff, n = _reference(ctx), [], [], 0
    for r in picked:
        logits = _logits(model, r.prompt_token_ids, r.token_ids)
        temps = torch.tensor(r.token_temperatures, device=logits.device)[:, None]
        tok = torch.tensor(r.token_ids, device=logits.device)[:, None]
        ref = torch.log_softmax(logits / temps, -1).gather(1, tok)[:, 0]  # at the temperature each token had
        ent = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)  # entropy at T = 1
        lp_diff.append((ref.cpu() - torch.tensor(r.token_logprobs)).abs())
        h_diff.append((ent.cpu() - torch.tensor(r.token_entropies)).abs())
        n += len(r.token_ids)
    lp, h, tol = torch.cat(lp_diff), torch.cat(h_diff), LOGPROB_TOL[ctx.kind]
    metrics = {"responses": len(picked), "tokens": n, "engine_dtype": str(ctx.dtype).removeprefix("torch.")}
    metrics |= {"max_abs_diff": lp.max().item(), "mean_abs_diff": lp.mean().item(), "tolerance": tol}
    metrics |= {"entropy_max_abs_diff": h.max().item()}
    if not lp.max().item() <= tol:
        raise ctx.Outcome("FAIL", f"log-probs differ from transformers' by {lp.max().item():.3g} > {tol}", **metrics)
    return metrics


def _interleaved(ctx: Any, arms: dict[str, Any], reps: int, expected: int) -> dict[str, list[float]]:
    """Tokens per second of each arm (a call returning its token count): one warm-up call each, then ``reps``
    repetitions, the arms' order alternating, back to back; every call must generate ``expected`` tokens."""
    for fn in arms.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in arms}
    for rep in range(reps):
        for name in arms if rep % 2 == 0 else reversed(list(arms)):
            t0 = time.perf_counter()
            tokens = arms[name]()
            samples[name].append(tokens / (time.perf_counter() - t0))
            if tokens != expected:
                raise ctx.Outcome("FAIL", f"{name}: {tokens} tokens generated, expected {expected}")
    return samples


def _ratio(
    ctx: Any, samples: dict[str, list[float]], base: str, arm: str, shape: tuple, target: float, *words: str
) -> dict[str, Any]:
    """The metrics of an :func:`_interleaved` measurement: ``arm``'s median tokens/s over ``base``'s (FAIL below
    ``target``), and each repetition's ratio (the two run back to back: less exposed to a busy machine)."""
    n, m, reps = shape
    b, a = statistics.median(samples[base]), statistics.median(samples[arm])
    metrics = {"prompts": n, "tokens_each": m, "repetitions": reps, f"{base}_tokens_per_s": b}
    metrics |= {f"{arm}_tokens_per_s": a, "ratio": a / b, "target": target}
    metrics["paired_ratio"] = statistics.median(x / y for x, y in zip(samples[arm], samples[base]))
    metrics |= {f"{k}_samples": [round(x, 1) for x in v] for k, v in samples.items()}
    if metrics["ratio"] < target:
        raise ctx.Outcome("FAIL", f"{words[0]} at {metrics['ratio']:.3f}x {words[1]}, target >= {target}", **metrics)
    return metrics


def check_rollout_throughput(ctx: Any) -> dict[str, Any]:
    """``plain``: SamplingParams(temperature=1) without extra_args (the processor passes the rows through);
    ``token``: RolloutWorker.generate in token mode (global window). Warm-up of each, then interleaved repetitions."""
    from vllm import SamplingParams

    worker = _need(ctx, "worker", "the V1 engine")
    n, m, reps = ctx.settings["throughput"]
    prompts, strategy = _prompts(n), _token_strategy()
    plain_params = SamplingParams(temperature=1.0, max_tokens=m, ignore_eos=True, logprobs=0)

    def plain() -> int:
        return sum(len(o.outputs[0].token_ids) for o in worker.llm.generate(prompts, plain_params, use_tqdm=False))

    def token() -> int:
        groups = worker.generate(prompts, [[1.0]] * n, max_tokens=m, strategy=strategy, ignore_eos=True)
        return sum(len(r.token_ids) for g in groups for r in g)

    samples = _interleaved(ctx, {"plain": plain, "token": token}, reps, n * m)
    return _ratio(ctx, samples, "plain", "token", (n, m, reps), THROUGHPUT_TARGET[ctx.kind], "token mode", "plain vLLM")


def check_rollout_throughput_seeded(ctx: Any) -> dict[str, Any]:
    """Token mode as the rollout calls it (``generate(..., seed=...)``: one derived seed per response where the
    worker passes seeds) against the same call unseeded; warm-up of each, then interleaved repetitions."""
    worker = _need(ctx, "worker", "the V1 engine")
    n, m, reps = ctx.settings["throughput"]
    prompts, strategy = _prompts(n), _token_strategy()

    def arm(seed: int | None) -> int:
        groups = worker.generate(prompts, [[1.0]] * n, max_tokens=m, strategy=strategy, seed=seed, ignore_eos=True)
        return sum(len(r.token_ids) for g in groups for r in g)

    samples = _interleaved(ctx, {"unseeded": lambda: arm(None), "seeded": lambda: arm(0)}, reps, n * m)
    return _ratio(ctx, samples, "unseeded", "seeded", (n, m, reps), SEEDED_TARGET[ctx.kind], "seeded", "unseeded")


class _WorkerClient:
    """vLLM's ``VLLMWeightSyncClient`` over the in-process RolloutWorker (one engine; Ray's is RayEnginesClient)."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.world_size = 1 + worker.engine_info()["tensor_parallel_size"]

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.worker.init_weight_transfer_engine(init_info)

    def start_weight_update(self) -> None:
        self.worker.start_weight_update()

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self.worker.update_weights(update_info)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.worker.finish_weight_update()


def _greedy(worker: Any, prompts: list[str], m: int) -> list[Any]:
    return [g[0] for g in worker.generate(prompts, [[0.0]] * len(prompts), max_tokens=m)]


def check_weight_transfer(ctx: Any) -> dict[str, Any]:
    """Perturbed weights (rounded to the engine's dtype) on the device, sent with the run's backend; the engine's
    greedy tokens after the update against transformers' greedy choice on the same weights (teacher-forced)."""
    return _transfer(ctx, None, 7)


def check_weight_transfer_small_bucket(ctx: Any) -> dict[str, Any]:
    """weight_transfer again (weights perturbed anew) with ``bucket_bytes`` below the largest tensor's size (the
    embedding: 467 MB at 1.5B against vLLM's 256 MiB packed IPC buffer), through rlvr_temp.weights.sender."""
    return _transfer(ctx, SMALL_BUCKET, 8)


def _transfer(ctx: Any, bucket: int | None, seed: int) -> dict[str, Any]:
    try:
        from rlvr_temp.weights.sender import send, trainer_engine
        from rlvr_temp.weights.source import PolicySource
    except ImportError as exc:
        raise ctx.Outcome("SKIPPED", f"not available ({exc})") from exc

    worker, model = _need(ctx, "worker", "the V1 engine"), _reference(ctx)
    prompts, m = _prompts(8), ctx.settings["greedy"]
    before = _greedy(worker, prompts, m)
    largest = max(p.numel() * ctx.dtype.itemsize for p in model.parameters())
    kwargs = {} if bucket is None else {"bucket_bytes": min(bucket, largest // 2)}
    gen = torch.Generator(device=ctx.device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # move every weight, then keep only what the engine's dtype can hold
            p.add_(0.3 * p.std() * torch.randn(p.shape, device=p.device, generator=gen))
            p.copy_(p.to(ctx.dtype).float())
    t0 = time.perf_counter()
    engine = trainer_engine(ctx.sync_backend, _WorkerClient(worker), PolicySource(model, ctx.dtype), **kwargs)
    connect = time.perf_counter() - t0
    stats = send(engine)
    after = _greedy(worker, prompts, m)
    gaps, equal = [], 0
    for r in after:
        logits = _logits(model, r.prompt_token_ids, r.token_ids)
        chosen = logits.gather(1, torch.tensor(r.token_ids, device=logits.device)[:, None])[:, 0]
        gaps.append((logits.max(-1).values - chosen).max().item())
        want = model.generate(
            torch.tensor([r.prompt_token_ids], device=model.device), max_new_tokens=m, do_sample=False
        )
        equal += want[0, len(r.prompt_token_ids) :].tolist() == r.token_ids
    moved = sum(a.token_ids != b.token_ids for a, b in zip(after, before))
    metrics = {"backend": ctx.sync_backend, "gb": stats["bytes"] / 1e9, "seconds": stats["seconds"]}
    metrics |= {"gb_per_s": stats["bytes"] / 1e9 / stats["seconds"], "params": int(stats["params"])}
    metrics |= {"connect_seconds": connect, "learner_device": str(model.device), "dtype": str(ctx.dtype)[6:]}
    metrics |= {"greedy_equal": f"{equal}/{len(after)}", "max_greedy_logit_gap": max(gaps)}
    metrics |= {"responses_changed_by_update": moved, "largest_tensor_bytes": largest}
    metrics |= {"bucket_bytes_asked": kwargs.get("bucket_bytes", "default")}
    if not moved:
        raise ctx.Outcome("FAIL", "no greedy response changed: the update did not reach the engine", **metrics)
    if equal < len(after) and max(gaps) > GREEDY_GAP_TOL[ctx.kind]:
        raise ctx.Outcome("FAIL", f"greedy output differs from transformers' (gap {max(gaps):.3g})", **metrics)
    return metrics


def check_colocated_sync_plan(ctx: Any) -> dict[str, Any]:
    """rlvr_temp.driver.plan.plan_run of recipes/gpu/qwen_math_token_8gpu.yaml cut to 2 engines + 2 learner ranks
    (colocated) on 1 node x 2 GPUs of 80 GiB: the weight sync resolves to ipc (an NCCL group with a learner rank
    and an engine on one GPU fails at start-up: "Duplicate GPU detected"), and no NCCL group has two members on one
    GPU. The smoke model's shapes; no GPU is used."""
    try:
        from rlvr_temp.driver.plan import PlanError, plan_run
    except ImportError as exc:
        raise ctx.Outcome("SKIPPED", f"not available ({exc})") from exc
    from rlvr_temp.config.schema import load_config

    overrides = [f"model.path={_model_dir(ctx)}", "rollout.num_workers=2", "resources.learner_ranks=2"]
    overrides += ["resources.layout=colocated", "rollout.engine.weight_sync=auto"]
    cfg = load_config(ROOT / "recipes" / "gpu" / "qwen_math_token_8gpu.yaml", overrides)
    try:
        plan = plan_run(cfg, nodes=1, gpus_per_node=2, gpu_mem_gib=80)
    except PlanError as exc:
        raise ctx.Outcome("FAIL", f"PlanError: {exc}", weight_sync=cfg.weight_sync_backend()) from exc
    shared = []
    for g in plan.groups:
        gpus = [gpu for _, gpu in g.members]
        if g.backend == "nccl" and len(set(gpus)) < len(gpus):
            shared.append(f"{g.name}: {g.members}")
    metrics: dict[str, Any] = {"weight_sync": plan.weight_sync, "config_weight_sync": cfg.weight_sync_backend()}
    metrics |= {
        "groups": [f"{g.name} ({g.backend}): {', '.join(f'{a}@{b}' for a, b in g.members)}" for g in plan.groups]
    }
    metrics["gpus"] = [f"{u.gpu}: {', '.join(u.procs)}" for u in plan.gpus]
    if plan.weight_sync != "ipc" or cfg.weight_sync_backend() != "ipc":
        raise ctx.Outcome("FAIL", f"colocated 2-rank weight sync resolves to {plan.weight_sync}, not ipc", **metrics)
    if shared:
        raise ctx.Outcome("FAIL", f"NCCL group members share a GPU: {'; '.join(shared)}", **metrics)
    return metrics


def check_trainer_step(ctx: Any) -> dict[str, Any]:
    """recipes/demo/token.yaml on the smoke model, colocated, without dynamic sampling (a random model's rewards are
    all 0, and the step must still learn and sync); its own Ray cluster, engine and learner."""
    import ray

    from rlvr_temp.config.schema import load_config
    from rlvr_temp.driver.trainer import Trainer

    _close(ctx)  # the checks' engine and reference model make room for the run's
    run_dir = ctx.tmp / "trainer_step"  # group 1 wrote its checkpoint to run/
    overrides = [f"model.path={_model_dir(ctx)}", f"model.dtype={str(ctx.dtype)[6:]}", f"trainer.run_dir={run_dir}"]
    overrides += ["trainer.total_steps=1", "logging.progress=false", "logging.tensorboard=false"]
    overrides += ["algorithm.dynamic_sampling=false", "rollout.prompts_per_step=4", "rollout.group_size=4"]
    overrides += ["resources.layout=colocated", f"model.max_model_len={ctx.settings['max_model_len']}"]
    if ctx.kind == "cuda":
        overrides += [
            "resources.bundle_gpus=1",
            "ray.num_cpus=4",
            f"rollout.engine.gpu_memory_utilization={GPU_MEMORY}",
        ]
        overrides += ["rollout.max_response_len=256"]
    cfg = load_config(ROOT / "recipes" / "demo" / "token.yaml", overrides)
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    startup = time.perf_counter() - t0
    try:
        m = trainer.train_step()
    finally:
        trainer.close()
        ray.shutdown()
    engines = json.loads((run_dir / "engines.json").read_text())
    metrics = {"startup_seconds": startup, "weight_sync": cfg.weight_sync_backend(), "layout": "colocated"}
    metrics |= {"model_runner": engines[0]["model_runner"], "engine_device": engines[0]["device"]}
    metrics |= {k: m[k] for k in sorted(m) if k.startswith(("time/", "sync/", "train/", "actor/"))}
    bad = [k for k, v in m.items() if isinstance(v, float) and math.isinf(v)]
    if "time/learn" not in m or "time/sync" not in m or bad:
        raise ctx.Outcome("FAIL", f"the step did not learn and sync, or gave infinite metrics {bad}", **metrics)
    return metrics
