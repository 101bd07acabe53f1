#!/usr/bin/env python3
"""GPU smoke test: one offline command that checks rlvr_temp's learner-side pieces on this machine's device.

    python -m scripts.gpu_smoke --out gpu_smoke.json          # Qwen2.5-1.5B shapes (a GPU machine)
    python -m scripts.gpu_smoke --small --out /tmp/r.json     # CPU-sized shapes (tests/scripts/test_gpu_smoke.py)

(from the repository root, where ``rlvr_temp`` and ``scripts`` are packages whether or not rlvr_temp is installed)

Group 1 needs only torch, transformers, peft, bitsandbytes (and pydantic / omegaconf); group 2 (vLLM, Ray:
scripts/gpu_smoke_vllm.py) is SKIPPED("vLLM not installed") without vLLM. Random weights in Qwen2.5-1.5B's shapes
(``--small``: 2 layers), nothing downloaded. Prints PASS / FAIL / SKIPPED(reason) per check and a summary; rewrites
the JSON report after each check; exits 1 if one FAILED. ``--groups 1`` or ``2`` runs one group (the other SKIPPED).
What each check proves, and how to run this on a lent GPU machine: docs/benchmarks.md, "GPU smoke test".
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import sys
import tempfile
import time
import traceback
import types
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
    os.environ.setdefault(_key, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from scripts.gpu_smoke_vllm import GROUP2, run_group  # noqa: E402  (imports neither vLLM nor Ray)

# Qwen2.5-1.5B's config.json; --small keeps the architecture: q/o 256, k/v 128, gate/up 512, down 256 wide (the tied
# lm_head stays unquantised), all multiples of 32 as bitsandbytes' CPU 4-bit path needs
QWEN25_15B = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12}
QWEN25_15B |= {"num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768}
QWEN25_15B |= {"rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True}
SMALL = QWEN25_15B | {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4}
SMALL |= {"vocab_size": 1024}
# grads: B x T of the gradient check; step: B x T (P prompt tokens) of the learner step; logprobs: the lead shape;
# proc: the processor's batch; lora: rank and alpha (recipes/gpu/qwen_math_base.yaml's for the GPU shapes)
SHAPES = {
    "gpu": dict(grads=(2, 256), step=(8, 2304, 256), logprobs=(8, 512), proc=256, iters=20, lora=(64, 128)),
    "small": dict(grads=(2, 32), step=(4, 64, 16), logprobs=(4, 16), proc=32, iters=10, lora=(16, 32)),
}
DISTRIBUTIONS = ("transformers", "peft", "bitsandbytes", "accelerate", "pydantic", "omegaconf", "ray")
GROUP1 = ["import", "nf4_lora_grads", "learner_step_memory", "logprobs_fp64", "processor_math", "checkpoint_cpu"]


class Outcome(Exception):  # ends a check SKIPPED or FAIL (status), with the metrics it did measure
    def __init__(self, status: str, reason: str, **metrics: Any) -> None:
        super().__init__(reason)
        self.status, self.reason, self.metrics = status, reason, metrics


def _tensors(obj: Any, path: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in nested dicts / lists / tuples, with its path."""
    if isinstance(obj, torch.Tensor):
        return [(path, obj)]
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return [found for k, v in items for found in _tensors(v, f"{path}/{k}")]


def _timer(ctx: Any) -> Any:
    """Start timing now; the returned function gives milliseconds (CUDA events on a GPU, else the wall clock)."""
    if ctx.device.type != "cuda":
        t0 = time.perf_counter()
        return lambda: (time.perf_counter() - t0) * 1e3
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    return lambda: (b.record(), b.synchronize(), a.elapsed_time(b))[-1]


def _save_model(ctx: Any) -> Path:
    """The random-weight Qwen2 model, saved once in the temp dir (groups 1 and 2 use the same folder)."""
    from transformers import Qwen2ForCausalLM

    if (ctx.tmp / "model" / "config.json").exists():
        return ctx.tmp / "model"
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(ctx.device):  # initialising 1.5B weights is far quicker on the GPU
        net = Qwen2ForCausalLM(ctx.qcfg)
    ctx.model_info["parameters"] = sum(p.numel() for p in net.parameters())
    net.to(ctx.dtype).save_pretrained(ctx.tmp / "model")
    del net
    ctx.model_info["build_seconds"] = round(time.perf_counter() - t0, 2)
    return ctx.tmp / "model"


def _build_and_load(ctx: Any) -> Any:
    """Save the random-weight model, then load it with rlvr_temp.learner.policy.load_policy (QLoRA)."""
    from rlvr_temp.config.schema import LearnerConfig, ModelConfig
    from rlvr_temp.learner.policy import load_policy

    _save_model(ctx)
    t0 = time.perf_counter()
    r, alpha = ctx.shapes["lora"]
    ctx.model_cfg = ModelConfig(path=str(ctx.tmp / "model"), dtype=str(ctx.dtype).removeprefix("torch."))
    ctx.policy_cfg = LearnerConfig(mode="qlora", lora_r=r, lora_alpha=alpha, gradient_checkpointing=True)
    policy = load_policy(ctx.model_cfg.path, ctx.model_cfg, ctx.policy_cfg, ctx.device)
    ctx.model_info["load_seconds"] = round(time.perf_counter() - t0, 2)
    return policy


def _policy(ctx: Any) -> Any:
    if ctx.learner is None:
        raise Outcome("SKIPPED", "rlvr_temp.learner.learner did not import (see the import check)")
    if ctx.policy is None and ctx.policy_error is None:
        try:
            ctx.policy = _build_and_load(ctx)
        except Exception as exc:
            ctx.policy_error = f"{type(exc).__name__}: {exc}"
            raise
    if ctx.policy is None:
        raise Outcome("SKIPPED", f"needs the NF4 policy, which did not load ({ctx.policy_error})")
    return ctx.policy


# ------------------------------------------------------------------------------------------------ group 1
def check_import(ctx: Any) -> dict[str, Any]:
    """The modules the checks use import, and neither vLLM nor Ray is imported with them."""
    metrics: dict[str, Any] = {"vllm_or_ray_loaded": "no"}
    for name in (
        "rlvr_temp.temperature",
        "rlvr_temp.config.schema",
        "rlvr_temp.checkpoint",
        "rlvr_temp.learner.policy",
        "rlvr_temp.learner.learner",
    ):
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            raise Outcome("FAIL", f"{name}: {type(exc).__name__}: {exc}", **metrics) from exc
        metrics[f"{name}_s"] = round(time.perf_counter() - t0, 2)
        loaded = [m for m in ("vllm", "ray") if m in sys.modules]
        if loaded and metrics["vllm_or_ray_loaded"] == "no":
            metrics["vllm_or_ray_loaded"] = f"{'/'.join(loaded)}, by importing {name}"
        if name == "rlvr_temp.learner.learner":
            ctx.learner = module
    if metrics["vllm_or_ray_loaded"] != "no":
        raise Outcome("FAIL", f"{metrics['vllm_or_ray_loaded']} (must import without vLLM and Ray)", **metrics)
    return metrics


def check_nf4_lora_grads(ctx: Any) -> dict[str, Any]:
    """LoRA gradients through the NF4 policy against a plain fp32 model of the dequantised weights."""
    import bitsandbytes as bnb
    import peft
    from bitsandbytes.functional import dequantize_4bit
    from transformers import Qwen2ForCausalLM

    q = _policy(ctx)
    base, state, n4 = q.get_base_model(), {}, 0
    for name, module in base.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            key, w, n4 = name.removesuffix(".base_layer"), module.weight, n4 + 1
            state[f"{key}.weight"] = dequantize_4bit(w.data, w.quant_state).float()
            if module.bias is not None:
                state[f"{key}.bias"] = module.bias.detach().float()
    rest = {n.replace(".base_layer", ""): p for n, p in base.named_parameters() if "lora_" not in n}
    state = {k: v.detach().float() for k, v in rest.items()} | state  # the dequantised weights win
    with torch.device(ctx.device):
        ref = Qwen2ForCausalLM(ctx.qcfg).float()
    missing, unexpected = ref.load_state_dict(state, strict=False)
    del state
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise Outcome("FAIL", f"reference state mismatch: missing {missing[:4]}, unexpected {unexpected[:4]}")
    pc = ctx.policy_cfg
    lora = peft.LoraConfig(r=pc.lora_r, lora_alpha=pc.lora_alpha, target_modules=pc.lora_targets)
    ref = peft.get_peft_model(ref, lora)
    qp, rp = ({n: p for n, p in m.named_parameters() if "lora_" in n} for m in (q, ref))
    if qp.keys() != rp.keys() or not qp:
        raise Outcome("FAIL", f"LoRA parameters differ: {sorted(set(qp) ^ set(rp))[:4]}")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in qp.items():
            if "lora_B" in name:  # peft starts B at zero, which would leave lora_A without a gradient
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            rp[name].copy_(p)
    ids = torch.randint(0, ctx.qcfg.vocab_size, ctx.shapes["grads"], generator=gen).to(ctx.device)

    def grads(model: torch.nn.Module, params: dict[str, torch.nn.Parameter]) -> tuple[float, dict[str, torch.Tensor]]:
        model.eval()  # a no-grad eval forward first, as a training step does (it set off bitsandbytes' CPU repack)
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
        model.train()
        logits = model(input_ids=ids, use_cache=False).logits.float()
        loss = -torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).mean()
        loss.backward()
        out = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().double() for n, p in params.items()}
        model.zero_grad(set_to_none=True)
        return loss.item(), out

    q_loss, qg = grads(q, qp)
    ref_loss, rg = grads(ref, rp)
    del ref, rp
    names = sorted(qg)
    a, b = torch.cat([qg[n].flatten() for n in names]), torch.cat([rg[n].flatten() for n in names])
    cos = functools.partial(torch.nn.functional.cosine_similarity, dim=0)
    metrics = {"compute_dtype": str(ctx.dtype).removeprefix("torch."), "linear4bit_modules": n4}
    metrics |= {"lora_tensors": len(names), "loss_nf4": q_loss, "loss_reference_fp32": ref_loss}
    worst = min(cos(qg[n].flatten(), rg[n].flatten()).item() for n in names)
    metrics |= {"cosine": cos(a, b).item(), "min_tensor_cosine": worst}
    zero = [n for n in names if not (qg[n].abs().sum() > 0 and rg[n].abs().sum() > 0)]
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()) or zero:
        raise Outcome("FAIL", f"non-finite or zero LoRA gradients ({zero[:3]})", **metrics)
    if not n4 or metrics["cosine"] < 0.99:
        raise Outcome("FAIL", f"gradient cosine {metrics['cosine']:.5f} < 0.99 (Linear4bit: {n4})", **metrics)
    return metrics


def check_learner_step_memory(ctx: Any) -> dict[str, Any]:
    """One forward + backward as the learner's policy_logprobs does it (logits of the response only, token_logprobs)."""
    from rlvr_temp.temperature import token_logprobs

    q, (b, t, p), dev = _policy(ctx), ctx.shapes["step"], ctx.device
    r, gen, cuda = t - p, torch.Generator().manual_seed(3), dev.type == "cuda"
    ids = torch.randint(0, ctx.qcfg.vocab_size, (b, t), generator=gen).to(dev)
    mask, positions = torch.ones_like(ids), torch.arange(t, device=dev).expand(b, t)
    temps, adv = (0.5 + 1.1 * torch.rand(b, r, generator=gen)).to(dev), torch.randn(b, 1, generator=gen).sign().to(dev)
    q.train()

    def step() -> float:
        q.zero_grad(set_to_none=True)
        out = q(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=r + 1)
        loss = -(token_logprobs(out.logits[:, :r], ids[:, p:], temps) * adv).mean()
        loss.backward()
        return loss.item()

    step()  # warm-up (kernels, allocator)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_mem = torch.cuda.memory_allocated()
    end = _timer(ctx)
    loss = step()
    seconds = end() / 1e3
    grads = [x.grad for n, x in q.named_parameters() if "lora_" in n and x.grad is not None]
    metrics: dict[str, Any] = {"batch": f"{b} x {t} tokens ({p} prompt + {r} response)", "seconds": seconds}
    metrics["tokens_per_s"] = b * t / seconds
    if cuda:
        metrics["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        metrics["peak_above_start_gib"] = (torch.cuda.max_memory_allocated() - start_mem) / 2**30
    else:  # ru_maxrss is in KiB on Linux: the whole process's peak, not this step's
        metrics["process_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if not (grads and all(torch.isfinite(g).all() for g in grads) and torch.isfinite(torch.tensor(loss))):
        raise Outcome("FAIL", "no LoRA gradients, or non-finite loss / gradients", **metrics)
    return metrics


def check_logprobs_fp64(ctx: Any) -> dict[str, Any]:
    """token_logprobs at per-token temperatures in [0.5, 1.6] against log_softmax in float64 (values, gradient)."""
    from rlvr_temp.temperature import token_logprobs

    lead, vocab, dev = ctx.shapes["logprobs"], ctx.vocab, ctx.device
    gen = torch.Generator(device=dev).manual_seed(4)
    logits = (4 * torch.randn(*lead, vocab, device=dev, generator=gen)).requires_grad_(True)
    ids = torch.randint(0, vocab, lead, device=dev, generator=gen)
    ids[: lead[0] // 2] = logits[: lead[0] // 2].argmax(-1)  # likely tokens and arbitrary ones
    temps = 0.5 + 1.1 * torch.rand(lead, device=dev, generator=gen)
    end = _timer(ctx)
    lp, ms = token_logprobs(logits, ids, temps), end()
    (grad,) = torch.autograd.grad(lp.sum(), logits)
    ref_in = logits.detach().double().requires_grad_(True)
    ref = torch.log_softmax(ref_in / temps.double()[..., None], dim=-1).gather(-1, ids[..., None]).squeeze(-1)
    (ref_grad,) = torch.autograd.grad(ref.sum(), ref_in)
    metrics = {"shape": f"{list(lead)} x {vocab}", "max_abs_diff": (lp.detach().double() - ref).abs().max().item()}
    metrics |= {"grad_max_abs_diff": (grad.double() - ref_grad).abs().max().item(), "forward_ms": ms}
    if not metrics["max_abs_diff"] <= 1e-4 or not metrics["grad_max_abs_diff"] <= 1e-4:
        raise Outcome("FAIL", "log-probs or their gradient differ from float64 by more than 1e-4", **metrics)
    return metrics


def check_processor_math(ctx: Any) -> dict[str, Any]:
    """TemperatureProcessor.apply's math on device tensors (engine.processor_v1 imports vLLM, so it is restated here):
    sanitise, entropy at T = 1, the global-window rule, the division, top-p truncation of every row."""
    import rlvr_temp.temperature as rt

    batch, vocab, dev = ctx.shapes["proc"], ctx.vocab, ctx.device
    gen = torch.Generator(device=dev).manual_seed(5)
    base = 3 * torch.randn(batch, vocab, device=dev, generator=gen)
    base[0, :3], base[1, 0] = float("nan"), float("inf")  # something for sanitize_logits to do
    rule = rt.TokenTemperatureRule(t_low=1.2, t_high=1.6, hot_fraction=0.2, window=100_000, scope="global")
    pos = torch.arange(batch, device=dev)
    top_p, top_k = torch.full((batch,), 0.95, device=dev), torch.full((batch,), -1, dtype=torch.long, device=dev)

    def step(sub: torch.Tensor) -> torch.Tensor:
        rt.sanitize_logits(sub, inplace=True)
        temps = rule.step(rt.entropy_from_logits(sub), 1.0).clamp_(min=rt.MIN_TEMPERATURE)
        sub.div_(temps.to(dev, non_blocking=True).unsqueeze(1))
        sub[pos] = rt.truncate_logits(sub[pos], top_p, top_k)
        return sub

    for _ in range(3):
        step(base.clone())
    times = []
    for _ in range(ctx.shapes["iters"]):
        sub = base.clone()  # before the timer starts: apply() works on logits vLLM already holds
        end = _timer(ctx)
        step(sub)
        times.append(end())
    times.sort()
    metrics: dict[str, Any] = {"shape": f"{batch} x {vocab}", "ms_per_step_median": times[len(times) // 2]}
    metrics["ms_per_step_min"] = times[0]
    if not torch.isfinite(sub.max(dim=-1).values).all():
        raise Outcome("FAIL", "a row lost its most likely token", **metrics)
    if dev.type != "cuda":
        raise Outcome("SKIPPED", "no CUDA: the no-host-sync part needs a GPU; the step was timed on the CPU", **metrics)
    sub, error = base.clone(), None
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(sub)
    except RuntimeError as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        error = f"{str(exc).splitlines()[0]} at {os.path.relpath(frame.filename, ROOT)}:{frame.lineno} ({frame.name})"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    with warnings.catch_warnings(record=True) as caught:  # every synchronising call, not only the first
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(base.clone())
        finally:
            torch.cuda.set_sync_debug_mode(0)
    metrics["sync_sites"] = sorted(
        {f"{os.path.relpath(w.filename, ROOT)}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)}
    )
    if error is not None:
        raise Outcome("FAIL", f"host synchronisation in the step: {error}", **metrics)
    return metrics


def check_checkpoint_cpu(ctx: Any) -> dict[str, Any]:
    """Learner.get_state's tensors after one AdamW step, and after save_checkpoint / load_checkpoint: all on CPU."""
    from rlvr_temp.checkpoint import load_checkpoint, save_checkpoint
    from rlvr_temp.config.schema import RunConfig

    q = _policy(ctx)
    opt = torch.optim.AdamW([p for p in q.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    ids = torch.randint(0, ctx.qcfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(6)).to(ctx.device)
    q.train()
    q.zero_grad(set_to_none=True)
    q(input_ids=ids, use_cache=False).logits.float().logsumexp(-1).mean().backward()
    opt.step()
    sched.step()
    q.zero_grad(set_to_none=True)
    # the learner's own get_state (and what it calls), on a Learner holding only what they read (rank 0, unsharded)
    learner = object.__new__(ctx.learner.Learner)
    learner.__dict__.update(model=q, ttm_head=None, optimizer=opt, scheduler=sched, step=1, rank=0, sharded=False)
    state = learner.get_state()
    found = _tensors(state)
    off = [f"{k} ({v.device})" for k, v in found if v.device.type != "cpu"]
    path = save_checkpoint(ctx.tmp / "run", 1, learner_state=state, trainer_state={"step": 1}, config=RunConfig())
    loaded = _tensors(load_checkpoint(path)["learner_state"])
    off_loaded = [f"{k} ({v.device})" for k, v in loaded if v.device.type != "cpu"]
    metrics = {"tensors": len(found), "not_on_cpu": len(off)}
    metrics |= {"tensors_loaded": len(loaded), "not_on_cpu_after_load": len(off_loaded)}
    if off or off_loaded:
        raise Outcome("FAIL", f"checkpoint tensors not on the CPU: {(off or off_loaded)[:3]}", **metrics)
    return metrics


# ------------------------------------------------------------------------------------------------ driver
def _fmt(metrics: dict[str, Any]) -> str:
    """The metrics on one line (a traceback, only an unexpected error's, as it is)."""
    shown = {k: f"{v:.6g}" if isinstance(v, float) else v for k, v in metrics.items() if k != "traceback"}
    line = "  ".join(f"{k}={', '.join(map(str, v)) or 'none' if isinstance(v, list) else v}" for k, v in shown.items())
    return line + metrics.get("traceback", "").rstrip().replace("\n", "\n      ")


def _environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    env |= {d: importlib.metadata.version(d) if importlib.util.find_spec(d) else None for d in DISTRIBUTIONS}
    env["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return env | {"torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_smoke.json"), help="JSON report (default: %(default)s)")
    ap.add_argument("--small", action="store_true", help="CPU-sized shapes (hidden 256, 2 layers, vocab 1024)")
    ap.add_argument("--groups", choices=("1", "2", "1,2"), default="1,2", help="checks to run (default: %(default)s)")
    args = ap.parse_args(argv)
    groups = tuple(map(int, args.groups.split(",")))
    from transformers import Qwen2Config

    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    config = SMALL if args.small else QWEN25_15B
    report: dict[str, Any] = {"argv": sys.argv[1:] if argv is None else argv, "environment": _environment(device)}
    report |= {"shapes": "small" if args.small else "Qwen2.5-1.5B", "model": {"config": config}, "checks": []}
    print(f"gpu_smoke: {report['shapes']} shapes on {report['environment']['device']} ({device})", flush=True)

    def record(name: str, group: int, status: str, reason: str | None, seconds: float, metrics: dict) -> None:
        row = dict(name=name, group=group, status=status, reason=reason, seconds=seconds, metrics=metrics)
        report["checks"].append(row)
        line = f"[{group}] {name:<33} {f'SKIPPED({reason})' if status == 'SKIPPED' else status}  ({seconds:.1f} s)"
        line += f"\n      {reason}" if status == "FAIL" else ""
        print(line + (f"\n      {_fmt(metrics)}" if metrics else ""), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")

    def run_check(name: str, group: int, fn: Any) -> None:
        t0, metrics, status, reason = time.perf_counter(), {}, "PASS", None
        try:
            if group not in groups:
                raise Outcome("SKIPPED", f"not selected (--groups {args.groups})")
            metrics = fn(ctx)
        except Outcome as out:
            status, reason, metrics = out.status, out.reason, out.metrics
        except Exception as exc:
            status, reason = "FAIL", f"{type(exc).__name__}: {str(exc)[:500]}"
            metrics = {"traceback": traceback.format_exc(limit=-8)}
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        metrics = metrics or ({"checks": GROUP2[name]} if status == "SKIPPED" and group == 2 else {})
        record(name, group, status, reason, round(time.perf_counter() - t0, 2), metrics)

    with tempfile.TemporaryDirectory(prefix="gpu_smoke-") as tmp:
        ctx = types.SimpleNamespace(small=args.small, shapes=SHAPES["small" if args.small else "gpu"], device=device)
        ctx.__dict__.update(dtype=torch.bfloat16 if device.type == "cuda" else torch.float32, tmp=Path(tmp))
        ctx.__dict__.update(vocab=config["vocab_size"], learner=None, policy=None, policy_error=None)
        ctx.__dict__.update(model_info=report["model"], qcfg=Qwen2Config(**config), Outcome=Outcome)
        ctx.save_model = functools.partial(_save_model, ctx)
        for name in GROUP1:
            run_check(name, 1, globals()[f"check_{name}"])
        ctx.policy = None
        run_group(ctx, run_check)  # group 2 (scripts/gpu_smoke_vllm.py)
    counts = {s: sum(c["status"] == s for c in report["checks"]) for s in ("PASS", "FAIL", "SKIPPED")}
    code = 1 if counts["FAIL"] else 0
    report["summary"] = dict(counts, seconds=round(time.perf_counter() - started, 1), exit_code=code)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    print(f"gpu_smoke: {summary} in {report['summary']['seconds']} s on {device} -> {args.out}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
