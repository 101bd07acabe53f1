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
import contextlib
import functools
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import math
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

import numpy as np  # noqa: E402
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


# ------------------------------------------------------------------------------------------------ processor_math
# The vLLM names the processor adapters import, for a machine without vLLM (the lent GPU machine): interface types
# only (a batch-update record, a base class, an enum; V2's interface module with the signatures its import guard
# checks). Used only where vLLM cannot be imported, and removed again after processor_math.
_VLLM_STUB = {
    "vllm": "__version__ = 'smoke-stub'",
    "vllm.version": "__version__ = 'smoke-stub'",
    "vllm.v1": "",
    "vllm.v1.sample": "",
    "vllm.v1.sample.logits_processor": """
import enum
from dataclasses import dataclass
from typing import Any

class MoveDirectionality(enum.Enum):
    UNIDIRECTIONAL = enum.auto()
    SWAP = enum.auto()

@dataclass
class BatchUpdate:
    batch_size: int
    removed: Any
    added: Any
    moved: Any

class LogitsProcessor:
    @classmethod
    def validate_params(cls, sampling_params):
        return None
""",
    "vllm.v1.worker": "",
    "vllm.v1.worker.gpu": "",
    "vllm.v1.worker.gpu.sample": "",
    "vllm.v1.worker.gpu.sample.logits_processor": "",
    "vllm.v1.worker.gpu.sample.logits_processor.interface": """
from dataclasses import dataclass
from typing import Any

@dataclass(frozen=True)
class LogitsProcRequestState:
    device: Any
    max_num_reqs: int
    prompt_len: Any
    prefill_len: Any

@dataclass(frozen=True)
class LogitsContext:
    idx_mapping_np: Any
    seq_lens_upper_bound_np: Any

class LogitsProcessor:
    def __init__(self, vllm_config, req_states):
        pass

    @classmethod
    def validate_params(cls, sampling_params):
        return None

    def add_request(self, req_idx, sampling_params):
        return False

    def apply(self, logits, ctx):
        return logits
""",
}
_ADAPTERS = ("rlvr_temp.engine.processor_v1", "rlvr_temp.engine.processor_v2")


@contextlib.contextmanager
def _processor_modules() -> Any:
    """(V1 module, V2 module or an error string, "vllm" | "stub"): the real adapters, over vLLM's interface where
    vLLM is installed, else over :data:`_VLLM_STUB` (removed again on exit, with the adapters bound to it)."""
    stub = importlib.util.find_spec("vllm") is None
    try:
        for name, source in _VLLM_STUB.items() if stub else ():
            module = sys.modules[name] = types.ModuleType(name)
            module.__dict__.update(__smoke_stub__=True, __path__=[])  # packages, so that the deeper names import
            exec(compile(source, f"<gpu_smoke vLLM stub {name}>", "exec"), module.__dict__)
        v1 = importlib.import_module(_ADAPTERS[0])
        try:
            v2: Any = importlib.import_module(_ADAPTERS[1])
        except ImportError as exc:  # its guard: the installed vLLM lacks the V2 interface
            v2 = f"{type(exc).__name__}: {exc}"
        yield v1, v2, "stub" if stub else "vllm"
    finally:
        if stub:
            for name in [*_VLLM_STUB, *_ADAPTERS]:
                sys.modules.pop(name, None)


class _OnDevice(torch.Tensor):
    """Marks the logits (and, through torch's function overrides, everything computed from them) as device tensors
    on a machine without CUDA: inside :func:`_host_reads` every call that would copy one to the host (``.cpu()``,
    ``.to("cpu")``, ``.item()``, ``.tolist()``, ``.numpy()``, ``bool()``, ``float()``, ...) is recorded with the
    processor line that made it; the result is a plain (host) tensor, as after a real copy."""

    sites: list[str] | None = None

    @classmethod
    def __torch_function__(cls, func: Any, types_: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if _OnDevice.sites is not None and name in _HOST_READS and (name != "to" or _to_host(args[1:], kwargs)):
            _OnDevice.sites.append(_call_site())
            with torch._C.DisableTorchFunctionSubclass():
                out = func(*args, **kwargs)
            return out.as_subclass(torch.Tensor) if isinstance(out, torch.Tensor) else out
        return super().__torch_function__(func, types_, args, kwargs)


_HOST_READS = {"cpu", "to", "item", "tolist", "numpy", "__array__", "__bool__", "__float__", "__int__", "__index__"}


def _to_host(args: Any, kwargs: dict[str, Any]) -> bool:
    """Whether ``Tensor.to(*args, **kwargs)`` names the host (a device argument of ``cpu``, or a host tensor)."""
    for a in (*args, kwargs.get("device")):
        if isinstance(a, (str, torch.device)):
            return torch.device(a).type == "cpu"
        if isinstance(a, torch.Tensor):
            return not isinstance(a, _OnDevice)
    return False


def _call_site() -> str:
    """The innermost rlvr_temp line on the stack (else the innermost outside torch), relative to the repository."""
    frames = traceback.extract_stack()[:-2]
    ours = [f for f in frames if f"{os.sep}rlvr_temp{os.sep}" in f.filename]
    f = (ours or [f for f in frames if f"{os.sep}torch{os.sep}" not in f.filename] or frames)[-1]
    path = os.path.relpath(f.filename, ROOT) if f.filename.startswith(str(ROOT)) else f.filename
    return f"{path}:{f.lineno} ({f.name})"


@contextlib.contextmanager
def _host_reads(ctx: Any, sites: list[str], strict: bool = False) -> Any:
    """Collect, into ``sites``, where the code inside waits for the device: CUDA's sync debug mode (``strict``:
    ``"error"``, raising at the first one; else ``"warn"``, every one), or :class:`_OnDevice`'s record elsewhere."""
    if ctx.device.type != "cuda":
        _OnDevice.sites = sites
        try:
            yield
        finally:
            _OnDevice.sites = None
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("error" if strict else "warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(0)
    for w in caught:
        if "synchroniz" in str(w.message):
            path = os.path.relpath(w.filename, ROOT) if w.filename.startswith(str(ROOT)) else w.filename
            sites.append(f"{path}:{w.lineno}")


# requests of the synthetic batch, by row % 8: a token rule (T_req 1.0 or 0.9; 5: also top-p 0.9), 6: a per-request
# temperature only, 7: no spec (vLLM's own request: the processor must leave its row alone)
_PROC_RULE = dict(t_low=1.2, t_high=1.6, hot_fraction=0.2, scope="global", base_temperature=1.0)
_PROC_VERIFIED_STEPS = 4  # steps whose logits are kept for the float64 comparison (the rest: records and syncs)


def _proc_requests(batch: int) -> list[dict[str, Any] | None]:
    from rlvr_temp.temperature.request import extra_args, request_spec, token_rule_spec, with_truncation

    n_rule = sum(i % 8 < 6 for i in range(batch))
    # a window that wraps within the run and a warm-up the first step does not meet (all cold), the second does
    rule = token_rule_spec(**_PROC_RULE, window=3 * n_rule + 5, warmup_tokens=n_rule + 1)
    out: list[dict[str, Any] | None] = []
    for i in range(batch):
        kind = i % 8
        if kind == 7:
            out.append(None)
            continue
        spec = request_spec(0.7) if kind == 6 else request_spec(1.0 if i % 2 == 0 else 0.9, token_rule=rule)
        out.append(extra_args(f"r{i}", with_truncation(spec, 0.9, -1) if kind == 5 else spec))
    return out


def _drive_processor(ctx: Any, mod: Any, version: str) -> dict[str, Any]:
    """Decode steps of the V1 (``TemperatureProcessor``: ``update_state`` + ``apply``) or V2
    (``TemperatureProcessorV2``: ``add_request`` + ``apply``) processor on a synthetic batch, as vLLM calls them
    (tokens sampled from what ``apply`` returns, appended to the requests' output lists); then ``drain`` /
    ``drain_logprobs``, checked against float64 references; then one more decode step under
    ``set_sync_debug_mode("error")`` (CUDA)."""
    batch, vocab, dev, cuda = ctx.shapes["proc"], ctx.vocab, ctx.device, ctx.device.type == "cuda"
    reqs, steps = _proc_requests(batch), ctx.shapes["iters"] + 2  # step 0 adds the requests, the last removes one
    params = [types.SimpleNamespace(temperature=1.0, extra_args=r) for r in reqs]
    outputs: list[list[int]] = [[] for _ in reqs]
    layout = list(range(batch))  # logits row -> request (V2: its slot)
    prompt = 5
    if version == "v1":
        proc = mod.TemperatureProcessor(None, dev, False)
        iface = importlib.import_module("vllm.v1.sample.logits_processor")  # vLLM's, or the stub's
        BatchUpdate, Move = iface.BatchUpdate, iface.MoveDirectionality
    else:
        lens = types.SimpleNamespace(np=np.full(batch, prompt, dtype=np.int32))
        req_states = types.SimpleNamespace(device=dev, max_num_reqs=batch, prompt_len=lens, prefill_len=lens)
        proc = mod.TemperatureProcessorV2(None, req_states)
    if hasattr(proc, "device_windows"):  # the global windows on the device, as on CUDA (else the rule's host window)
        proc.device_windows = True
    gen = torch.Generator(device=dev).manual_seed(5)
    kept, times, steady, change, removed = [], [], [], [], 2  # request 2 (a token-rule row) leaves at the last step

    def step(s: int, sites: list[str], strict: bool = False) -> tuple[list[int], torch.Tensor, torch.Tensor, float]:
        if s == steps - 1:
            layout[removed] = layout.pop()  # vLLM condenses the batch: the last row moves into the hole
        logits = 3 * torch.randn(len(layout), vocab, device=dev, generator=gen)
        if s == 1:
            logits[0, :3], logits[1, 0] = float("nan"), float("inf")  # something for the sanitising to do
        inp = logits.clone()
        if not cuda:
            logits = logits.as_subclass(_OnDevice)
        update = None
        if version == "v1" and s == 0:
            update = BatchUpdate(batch, [], [(i, params[i], [1] * prompt, outputs[i]) for i in layout], [])
        elif version == "v1" and s == steps - 1:
            update = BatchUpdate(batch - 1, [removed], [], [(batch - 1, removed, Move.UNIDIRECTIONAL)])
        elif version == "v2" and s == 0:
            for i in layout:
                proc.add_request(i, params[i])
        end = _timer(ctx)
        with _host_reads(ctx, sites, strict):
            if version == "v1":
                proc.update_state(update)
                out = proc.apply(logits)
            else:
                slots = np.array(layout, dtype=np.int32)
                seq = np.array([prompt + len(outputs[i]) for i in layout], dtype=np.int32)
                out = proc.apply(logits, types.SimpleNamespace(idx_mapping_np=slots, seq_lens_upper_bound_np=seq))
        ms = end()
        out = out.as_subclass(torch.Tensor)
        tokens = torch.multinomial(out.double().softmax(-1), 1)[:, 0].tolist()  # vLLM's sampler
        for row, i in enumerate(layout):
            outputs[i].append(tokens[row])
        return list(layout), inp, out, ms

    for s in range(steps):
        sites: list[str] = []
        rows, inp, out, ms = step(s, sites)
        (change if s in (0, steps - 1) else steady).extend(sites)
        if 0 < s < steps - 1:
            times.append(ms)
        if s < _PROC_VERIFIED_STEPS:
            kept.append((rows, inp, out.clone(), [outputs[i][-1] for i in rows]))
    records, logprobs = proc.drain(), proc.drain_logprobs()
    metrics: dict[str, Any] = {"shape": f"{batch} x {vocab}", "steps": steps}
    times.sort()
    metrics |= {"ms_per_step_median": times[len(times) // 2], "ms_per_step_min": times[0]}
    metrics |= _verify_processor(ctx, reqs, layout, removed, steps, kept, records, logprobs, version)
    metrics["host_syncs_steady"] = sorted(set(steady))
    metrics["host_syncs_batch_change"] = sorted(set(change))
    if cuda:  # the definitive check: a decode step with CUDA raising at the first host synchronisation
        error: list[str] = []
        try:
            step(steps, error, strict=True)
            metrics["strict_step"] = "no host"
        except RuntimeError as exc:
            frame = next(
                (f for f in reversed(traceback.extract_tb(exc.__traceback__)) if "rlvr_temp" in f.filename),
                traceback.extract_tb(exc.__traceback__)[-1],
            )
            where = f"{os.path.relpath(frame.filename, ROOT)}:{frame.lineno} ({frame.name})"
            metrics["strict_step"] = f"{str(exc).splitlines()[0]} at {where}"
        proc.drain(), proc.drain_logprobs()
    return metrics


def _sanitized64(x: torch.Tensor) -> torch.Tensor:
    """The processor's documented sanitising (NaN -> -50, +-inf and the rest clipped to [-50, 50]), in float64."""
    x = x.double()
    return torch.where(x.isnan(), -50.0, x).clamp(-50.0, 50.0)


def _verify_processor(
    ctx: Any,
    reqs: list,
    layout: list[int],
    removed: int,
    steps: int,
    kept: list,
    records: dict,
    logprobs: dict,
    version: str,
) -> dict[str, Any]:
    """The records against independent references: each row's entropy at T = 1 (float64, of the sanitised logits);
    the global rule replayed in numpy over the recorded entropies in the order the rows reach the processor
    (``sorted(window)[int((1 - p) * (len - 1))]``, warm-up, ring of ``window`` values); ``apply``'s output rows
    against ``sanitised / T`` in float64 (top-p rows: the kept set is the 0.9 nucleus); the sampled tokens'
    log-probs (V1) against float64 ``log_softmax`` of the tempered (truncated) row; every record finite."""
    problems: list[str] = []
    uid = [r["rlvr_temp"]["uid"] if r else None for r in reqs]
    want_len = [0 if u is None else steps - (i == removed) for i, u in enumerate(uid)]
    got_len = [len(records.get(u, ([], []))[0]) if u else 0 for u in uid]
    if got_len != want_len or any(u in records for u in uid if u is None) or None in records:
        problems.append(f"record lengths {got_len[:8]}..., expected {want_len[:8]}...")
        return {"problems": problems}
    # the order in which rows reach the window: per step, rows ascending; request `removed`'s row is refilled by the
    # last request at the last step
    order = [list(range(len(reqs)))] * (steps - 1)
    last = list(range(len(reqs)))
    last[removed] = last.pop()
    order.append(last)
    spec = next(r["rlvr_temp"]["token_rule"] for r in reqs if r and r["rlvr_temp"].get("token_rule"))
    cap, warm, p = spec["window"], max(spec["warmup_tokens"], 1), spec["hot_fraction"]
    window: list[np.float32] = []
    hot_tokens = rule_tokens = 0
    t_err = 0.0
    for s, rows in enumerate(order):
        ids = [i for i in rows if reqs[i] and reqs[i]["rlvr_temp"].get("token_rule")]
        h = [np.float32(records[uid[i]][1][s]) for i in ids]
        window = (window + h)[-cap:]
        th = sorted(window)[int((1.0 - p) * (len(window) - 1))] if len(window) >= warm else None
        for i in rows:
            if reqs[i] is None:
                continue
            r = reqs[i]["rlvr_temp"]
            t_req, got = r["temperature"], records[uid[i]][0][s]
            if r.get("token_rule"):
                hot = th is not None and np.float32(records[uid[i]][1][s]) >= th
                hot_tokens, rule_tokens = hot_tokens + hot, rule_tokens + 1
                want = (spec["t_high"] if hot else spec["t_low"]) + t_req - spec["base_temperature"]
            else:
                want = t_req
            t_err = max(t_err, abs(got - want))
    metrics: dict[str, Any] = {"temperature_max_abs_diff": t_err, "hot_share": hot_tokens / max(rule_tokens, 1)}
    if t_err > 1e-5:
        problems.append(f"temperatures differ from the replayed rule by {t_err:.3g}")
    h_err = z_err = lp_err = 0.0
    untouched, nucleus = True, True
    for s, (rows, inp, out, tokens) in enumerate(kept):
        x = _sanitized64(inp)
        logp1 = x.log_softmax(-1)
        ent = -(logp1.exp() * logp1).sum(-1)
        for row, i in enumerate(rows):
            if reqs[i] is None:
                untouched &= bool(torch.equal(out[row], inp[row]))
                continue
            r, (temps, ents) = reqs[i]["rlvr_temp"], records[uid[i]]
            h_err = max(h_err, abs(ents[s] - ent[row].item()) / max(1.0, ent[row].item()))
            z = x[row] / temps[s]
            o = out[row].double()
            keep = torch.isfinite(o)
            if r.get("top_p", 1.0) < 1.0:  # the kept tokens: the most likely ones, the fewest that reach top_p
                probs = z.softmax(-1)
                k = int(keep.sum())
                top = probs.sort(descending=True).values.cumsum(0)
                nucleus &= bool(top[k - 1] >= r["top_p"] - 1e-3 and (k == 1 or top[k - 2] < r["top_p"] + 1e-3))
                nucleus &= bool(probs[keep].min() >= probs[~keep].max()) if k < len(probs) else True
                z = torch.where(keep, z, -math.inf)
            else:
                nucleus &= bool(keep.all())
            z_err = max(z_err, ((o - z)[keep].abs() / z[keep].abs().clamp(min=1.0)).max().item())
            if version == "v1":
                lp_err = max(lp_err, abs(logprobs[uid[i]][s] - z.log_softmax(-1)[tokens[row]].item()))
    metrics |= {"entropy_max_rel_diff": h_err, "logits_max_rel_diff": z_err}
    if h_err > 1e-4:
        problems.append(f"entropies differ from float64 by {h_err:.3g} (relative)")
    if z_err > 1e-5:
        problems.append(f"tempered logits differ from float64 sanitised / T by {z_err:.3g} (relative)")
    if not untouched:
        problems.append("a row without an rlvr_temp request was modified")
    if not nucleus:
        problems.append("a top-p row's kept tokens are not the 0.9 nucleus of the tempered distribution")
    flat = [v for u in uid if u for seq in records[u] for v in seq]
    if version == "v1":
        metrics["logprob_max_abs_diff"] = lp_err
        lengths = [len(logprobs.get(u, [])) for u in uid if u]
        flat += [v for u in uid if u for v in logprobs.get(u, [])]
        if lengths != [n for n in want_len if n]:
            problems.append(f"sampled log-probs recorded for {sum(lengths)} tokens, expected {sum(want_len)}")
        if lp_err > 1e-4:
            problems.append(f"sampled tokens' log-probs differ from float64 by {lp_err:.3g}")
    if not all(math.isfinite(v) for v in flat):
        problems.append("a recorded temperature, entropy or log-prob is not finite")
    return metrics | {"problems": problems}


def check_processor_math(ctx: Any) -> dict[str, Any]:
    """The processors vLLM runs (rlvr_temp.engine.processor_v1 / _v2 around processor.ProcessorCore), driven
    through their vLLM-facing methods on a synthetic batch of device logits: values against float64 references,
    and where the decode step waits for the device (CUDA: sync debug mode, one step under ``"error"``; elsewhere
    the host reads of device data that :class:`_OnDevice` sees, reported only)."""
    metrics: dict[str, Any] = {}
    with _processor_modules() as (v1, v2, origin):
        metrics["vllm_interface"] = origin
        for version, mod in (("v1", v1), ("v2", v2)):
            if isinstance(mod, str):
                metrics[f"{version}_skipped"] = mod
                continue
            got = _drive_processor(ctx, mod, version)
            metrics |= {f"{version}_{k}" if k not in ("shape", "steps") else k: v for k, v in got.items()}
    metrics["ms_per_step_median"] = metrics["v1_ms_per_step_median"]
    problems = [f"{v}: {p}" for v in ("v1", "v2") for p in metrics.pop(f"{v}_problems", [])]
    strict = [f"{v}: {m}" for v in ("v1", "v2") if (m := metrics.get(f"{v}_strict_step", "no host")) != "no host"]
    if problems:
        raise Outcome("FAIL", "; ".join(problems), **metrics)
    if strict:
        raise Outcome("FAIL", f"host synchronisation in a decode step: {'; '.join(strict)}", **metrics)
    if ctx.device.type != "cuda":
        metrics["host_sync_check"] = "emulated on the CPU (host_syncs_*: reported, not asserted)"
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
