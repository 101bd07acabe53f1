"""The learner: a transformers (+ peft, + bitsandbytes NF4) policy updated with GRPO/DAPO-style losses, whose
log-probs are recomputed at the per-token temperatures the rollout sampled with (on-policy, SPEC §2).

Policy modes: ``full`` (all weights), ``lora`` (LoRA adapters on a plain-dtype base) and ``qlora`` (LoRA on an
NF4, double-quantised base, Dettmers et al. 2023 — the seeds' 4-bit setup). For weight sync the learner exports a
plain-dtype state dict with Hugging Face names: LoRA deltas merged into the dequantised base, never packed 4-bit
tensors (trl#4973). The dequantised base is computed once (it is frozen); each export adds ``scale * B @ A``.

Batches are dicts of lists (Ray-serialisable), one entry per response:
``prompt_ids``, ``response_ids``, ``token_temperatures``, ``rollout_logprobs``, ``advantages`` (one float per
response) and optionally ``token_entropies`` (for Archer). Prompts are left-padded and responses right-padded so
that every response starts at the same column; position ids follow the attention mask, as in vLLM.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from rlvr_temp.losses import ClipSettings, get_policy_loss
from rlvr_temp.temperature import (
    TokenTemperatureHead,
    temperature_regularization,
    to_sampling_range,
    token_entropies,
    token_logprobs,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LearnerSettings:
    """The learner's part of the run config (``learner``, ``algorithm``, ``temperature.logprobs``)."""

    mode: str = "qlora"
    dtype: str = "float32"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lr: float = 1e-6
    warmup_steps: int = 10
    lr_schedule: str = "constant"
    total_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    mini_batch_size: int = 64
    micro_batch_size: int = 16
    gradient_checkpointing: bool = False
    loss: str = "dapo"
    loss_agg: str | None = None
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.28
    dual_clip_c: float | None = None
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    archer: bool = False
    ppo_epochs: int = 1
    logprobs: str = "on_policy"
    seed: int = 0
    trust_remote_code: bool = False
    learned: dict[str, float] | None = None  # temperature.learned (+ "base") when temperature.mode == "learned"

    @classmethod
    def from_config(cls, cfg: Any) -> LearnerSettings:
        """Build from a :class:`rlvr_temp.config.RunConfig`."""
        lc, ac = cfg.learner, cfg.algorithm
        return cls(
            mode=lc.mode, dtype=cfg.model.dtype, lora_r=lc.lora_r, lora_alpha=lc.lora_alpha,
            lora_dropout=lc.lora_dropout, lora_targets=tuple(lc.lora_targets), lr=lc.lr,
            warmup_steps=lc.warmup_steps, lr_schedule=lc.lr_schedule, total_steps=cfg.trainer.total_steps,
            weight_decay=lc.weight_decay, grad_clip=lc.grad_clip, mini_batch_size=lc.mini_batch_size,
            micro_batch_size=lc.micro_batch_size, gradient_checkpointing=lc.gradient_checkpointing,
            loss=ac.loss, loss_agg=ac.loss_agg, clip_eps_low=ac.clip_eps_low, clip_eps_high=ac.clip_eps_high,
            dual_clip_c=ac.dual_clip_c, kl_coef=ac.kl_coef, entropy_coef=ac.entropy_coef, archer=ac.archer,
            ppo_epochs=ac.ppo_epochs, logprobs=cfg.temperature.logprobs, seed=cfg.trainer.seed,
            trust_remote_code=cfg.model.trust_remote_code,
            learned=({**cfg.temperature.learned.model_dump(), "base": cfg.temperature.base}
                     if cfg.temperature.mode == "learned" else None),
        )  # fmt: skip


def lr_factor(step: int, s: LearnerSettings) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to 0 at ``total_steps``."""
    w = s.warmup_steps
    if w and step < w:
        return (step + 1) / w
    if s.lr_schedule == "cosine":
        span = max(1, s.total_steps - w)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - w) / span)))
    return 1.0


def load_policy(model_path: str, s: LearnerSettings, device: torch.device) -> torch.nn.Module:
    """Load the policy in the requested mode (``full`` / ``lora`` / ``qlora``)."""
    from transformers import AutoModelForCausalLM

    dtype = DTYPES[s.dtype]
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": s.trust_remote_code}
    if s.mode == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if s.mode != "qlora":
        model.to(device)
    if s.mode == "full":
        if s.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if s.mode == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=s.gradient_checkpointing)
        disable_cpu_4bit_repacking(model)
    elif s.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
        target_modules=list(s.lora_targets), bias="none", task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(model, lora)


def disable_cpu_4bit_repacking(model: torch.nn.Module) -> int:
    """Work around silently wrong LoRA gradients on CPU (STACK_NOTES): bitsandbytes repacks 4-bit weights on the
    first no-grad forward, after which backward runs through a kernel without autograd. Returns modules touched."""
    import bitsandbytes as bnb

    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def collate(batch: dict[str, list], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Left-pad prompts, right-pad responses; all responses start at column ``P``."""
    prompts, responses = batch["prompt_ids"], batch["response_ids"]
    n = len(prompts)
    p_len = max(len(p) for p in prompts)
    r_len = max(1, max(len(r) for r in responses))
    ids = torch.full((n, p_len + r_len), pad_id, dtype=torch.long)
    attn = torch.zeros((n, p_len + r_len), dtype=torch.long)
    mask = torch.zeros((n, r_len), dtype=torch.float32)
    temps = torch.ones((n, r_len), dtype=torch.float32)
    old = torch.zeros((n, r_len), dtype=torch.float32)
    ent = torch.zeros((n, r_len), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, p_len - len(p) : p_len] = torch.tensor(p, dtype=torch.long)
        ids[i, p_len : p_len + len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, p_len - len(p) : p_len + len(r)] = 1
        mask[i, : len(r)] = 1
        temps[i, : len(r)] = torch.tensor(batch["token_temperatures"][i], dtype=torch.float32)
        if "rollout_logprobs" in batch:
            old[i, : len(r)] = torch.tensor(batch["rollout_logprobs"][i], dtype=torch.float32)
        if batch.get("token_entropies"):
            ent[i, : len(r)] = torch.nan_to_num(torch.tensor(batch["token_entropies"][i], dtype=torch.float32))
    out = {
        "input_ids": ids, "attention_mask": attn, "position_ids": (attn.cumsum(-1) - 1).clamp(min=0),
        "response_ids": ids[:, p_len:], "mask": mask, "temperatures": temps, "rollout_logprobs": old,
        "entropies": ent, "advantages": torch.tensor(batch.get("advantages", [0.0] * n), dtype=torch.float32),
    }  # fmt: skip
    out = {k: v.to(device) for k, v in out.items()}
    out["prompt_len"] = p_len
    return out


class Learner:
    """Owns the policy, the optimizer and the LR schedule. Run it as a Ray actor (:func:`remote_learner`)."""

    def __init__(self, model_path: str, settings: LearnerSettings, *, num_threads: int | None = None) -> None:
        if num_threads:
            torch.set_num_threads(num_threads)
        self.s = settings
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(settings.seed)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.model = load_policy(model_path, settings, self.device)
        self.export_dtype = DTYPES[settings.dtype]
        self.ttm_head: TokenTemperatureHead | None = None
        if settings.learned:
            lc = settings.learned
            self.ttm_head = TokenTemperatureHead(
                self.model.config.hidden_size, heads=int(lc["heads"]), t_min=lc["t_min"], t_max=lc["t_max"],
                init_temperature=lc["init_temperature"],
            ).to(self.device)  # fmt: skip
        params = self._trainable()
        if not params:
            raise RuntimeError("the policy has no trainable parameters")
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        # a plain function, not a bound method: LambdaLR pickles a non-function's __dict__ into its state, which
        # would carry Ray's method wrappers into checkpoints
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, settings))
        self.loss_fn = get_policy_loss(settings.loss)
        self.clip = ClipSettings(settings.clip_eps_low, settings.clip_eps_high, settings.dual_clip_c)
        self._base_cache: dict[str, torch.Tensor] | None = None
        self.step = 0

    def _trainable(self) -> list[torch.nn.Parameter]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return params + (list(self.ttm_head.parameters()) if self.ttm_head is not None else [])

    # ------------------------------------------------------------------------------------------ log-probs
    def _forward(self, mb: dict[str, Any], base_temperature: float, with_entropy: bool = False):
        """(log-probs, entropies or None, TTM head temperatures or None) of the responses, ``[B, L]``.

        In ``learned`` mode (on-policy) the sampling temperature is the TTM head's output on the final hidden
        states, mapped into ``[t_low, t_high]``, kept in the graph: the policy gradient trains the head."""
        learned = self.ttm_head is not None and self.s.logprobs == "on_policy"
        out = self.model(
            input_ids=mb["input_ids"], attention_mask=mb["attention_mask"], position_ids=mb["position_ids"],
            use_cache=False, output_hidden_states=learned,
        )  # fmt: skip
        p = mb["prompt_len"]
        r_len = mb["response_ids"].shape[1]
        logits = out.logits[:, p - 1 : p - 1 + r_len, :]
        head_t = None
        if learned:
            lc = self.s.learned
            head_t = self.ttm_head.token_temperature(out.hidden_states[-1][:, p - 1 : p - 1 + r_len, :])
            temps = to_sampling_range(head_t, lc["t_low"], lc["t_high"], lc["t_min"], lc["t_max"])
            temps = (temps + (base_temperature - lc["base"])).clamp(min=1e-4)
            scaled = torch.log_softmax(logits.float() / temps.unsqueeze(-1), dim=-1)
            logp = scaled.gather(-1, mb["response_ids"].unsqueeze(-1)).squeeze(-1)
            temps_data: torch.Tensor | float = temps.detach()
        else:
            temps_data = self._temps(mb, base_temperature)
            logp = token_logprobs(logits, mb["response_ids"], temps_data)
        ent = token_entropies(logits.detach(), temps_data) if with_entropy else None
        return logp, ent, head_t

    def _temps(self, mb: dict[str, Any], base_temperature: float) -> torch.Tensor | float:
        return mb["temperatures"] if self.s.logprobs == "on_policy" else float(base_temperature)

    def _micro(self, full: dict[str, Any], idx: torch.Tensor) -> dict[str, Any]:
        return {k: (v[idx] if isinstance(v, torch.Tensor) else v) for k, v in full.items()}

    @torch.no_grad()
    def compute_logprobs(self, batch: dict[str, list], base_temperature: float = 1.0) -> list[list[float]]:
        """Per-token log-probs of the responses under the current policy (in eval mode, no dropout)."""
        full = collate(batch, self.pad_id, self.device)
        self.model.eval()
        out = self._logprobs_all(full, base_temperature)
        return [out[i, : len(r)].tolist() for i, r in enumerate(batch["response_ids"])]

    @torch.no_grad()
    def _logprobs_all(self, full: dict[str, Any], base_temperature: float, ref: bool = False) -> torch.Tensor:
        n = full["input_ids"].shape[0]
        chunks = []
        for start in range(0, n, self.s.micro_batch_size):
            mb = self._micro(full, torch.arange(start, min(n, start + self.s.micro_batch_size)))
            if ref:
                with self.model.disable_adapter():
                    lp, _, _ = self._forward(mb, base_temperature)
            else:
                lp, _, _ = self._forward(mb, base_temperature)
            chunks.append(lp.float())
        return torch.cat(chunks)

    # ------------------------------------------------------------------------------------------ update
    def train_step(self, batch: dict[str, list], base_temperature: float = 1.0) -> dict[str, float]:
        """One policy update on a batch of scored responses; returns metrics."""
        full = collate(batch, self.pad_id, self.device)
        mask = full["mask"]
        n = mask.shape[0]
        self.model.eval()  # no dropout: the old log-probs must match the rollout's
        old = self._logprobs_all(full, base_temperature)
        diff = (old - full["rollout_logprobs"]).abs() * mask
        tokens = mask.sum().clamp(min=1)
        metrics = {
            "logprob/mismatch_mean": float(diff.sum() / tokens),
            "logprob/mismatch_max": float(diff.max()) if n else 0.0,
        }
        need_ref = self.s.kl_coef > 0 or self.s.archer
        if need_ref and self.s.mode == "full":
            raise ValueError("KL / Archer against the frozen base needs a LoRA policy (learner.mode lora or qlora)")
        ref = self._logprobs_all(full, base_temperature, ref=True) if need_ref else None
        agg = self.s.loss_agg
        self.model.train()
        gen = torch.Generator().manual_seed(self.s.seed * 100_003 + self.step)
        stats_sum: dict[str, float] = {}
        n_updates, grad_norms = 0, []
        for _ in range(self.s.ppo_epochs):
            order = torch.randperm(n, generator=gen)
            for m_start in range(0, n, self.s.mini_batch_size):
                mini = order[m_start : m_start + self.s.mini_batch_size]
                mini_tokens = mask[mini].sum().clamp(min=1)
                self.optimizer.zero_grad(set_to_none=True)
                for u_start in range(0, len(mini), self.s.micro_batch_size):
                    idx = mini[u_start : u_start + self.s.micro_batch_size]
                    mb = self._micro(full, idx)
                    want_ent = self.s.entropy_coef > 0
                    logp, ent, head_t = self._forward(mb, base_temperature, with_entropy=want_ent)
                    loss, stats = self.loss_fn(
                        logp, old[idx], mb["advantages"], mb["mask"], agg=agg, clip=self.clip,
                        ref_logp=None if ref is None else ref[idx], kl_coef=self.s.kl_coef, entropy=ent,
                        entropy_coef=self.s.entropy_coef, archer_entropy=mb["entropies"] if self.s.archer else None,
                    )  # fmt: skip
                    if head_t is not None:
                        lc = self.s.learned
                        stats["ttm/head_temperature_mean"] = float(
                            (head_t.detach() * mb["mask"]).sum() / mb["mask"].sum().clamp(min=1)
                        )
                        if lc["reg_weight"] > 0:
                            reg = temperature_regularization(
                                head_t, lc["init_temperature"], lc["reg_weight"], mb["mask"]
                            )
                            loss = loss + reg
                            stats["ttm/reg"] = reg.item()
                    token_share = float(mb["mask"].sum() / mini_tokens)
                    weight = token_share if (agg or "token-mean") == "token-mean" else len(idx) / len(mini)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"non-finite loss at learner step {self.step}")
                    (loss * weight).backward()
                    stats["actor/loss"] = loss.item()
                    for k, v in stats.items():
                        stats_sum[k] = stats_sum.get(k, 0.0) + v * weight
                params = self._trainable()
                grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, self.s.grad_clip)))
                self.optimizer.step()
                n_updates += 1
        self.scheduler.step()
        self.step += 1
        metrics.update({k: v / max(1, n_updates) for k, v in stats_sum.items()})
        metrics["actor/grad_norm"] = sum(grad_norms) / max(1, len(grad_norms))
        metrics["actor/lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["actor/updates"] = n_updates
        return metrics

    # ------------------------------------------------------------------------------------------ export
    def _base_weights(self) -> dict[str, torch.Tensor]:
        """Frozen base weights (dequantised for NF4), HF names, export dtype; computed once."""
        if self._base_cache is None:
            import bitsandbytes as bnb
            from bitsandbytes.functional import dequantize_4bit

            inner = self.model.get_base_model()
            cache: dict[str, torch.Tensor] = {}
            for name, module in inner.named_modules():
                if name.endswith(".base_layer") or ".lora_" in name:
                    continue
                base = getattr(module, "base_layer", module)
                if isinstance(base, bnb.nn.Linear4bit):
                    w = dequantize_4bit(base.weight.data, base.weight.quant_state)
                    cache[f"{name}.weight"] = w.to(self.export_dtype).cpu()
                    if base.bias is not None:
                        cache[f"{name}.bias"] = base.bias.detach().to(self.export_dtype).cpu()
                    continue
                target = base if base is not module else module
                for pname, p in target.named_parameters(recurse=False):
                    key = f"{name}.{pname}" if name else pname
                    cache[key] = p.detach().to(self.export_dtype).cpu().clone()
            self._base_cache = cache
        return self._base_cache

    @torch.no_grad()
    def export_weights(self) -> dict[str, torch.Tensor]:
        """Plain-dtype Hugging Face state dict of the current policy (LoRA merged; never packed 4-bit)."""
        head = {}
        if self.ttm_head is not None:
            head = {f"ttm_head.{n}": p.detach().to(self.export_dtype).cpu().clone()
                    for n, p in self.ttm_head.named_parameters()}  # fmt: skip
        if self.s.mode == "full":
            sd = {k: v.detach().to(self.export_dtype).cpu().clone() for k, v in self.model.state_dict().items()}
            return sd | head
        from peft.tuners.lora import LoraLayer

        out = dict(self._base_weights())
        for name, module in self.model.get_base_model().named_modules():
            if isinstance(module, LoraLayer) and "default" in module.lora_A:
                a = module.lora_A["default"].weight.float()
                b = module.lora_B["default"].weight.float()
                delta = (b @ a) * module.scaling["default"]
                key = f"{name}.weight"
                out[key] = (out[key].float() + delta.cpu()).to(self.export_dtype)
        return out | head

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Trainable parameters only (adapter or full weights, TTM head), for checkpoints and tests."""
        out = {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        if self.ttm_head is not None:
            out.update({f"ttm_head.{n}": p.detach().cpu().clone() for n, p in self.ttm_head.named_parameters()})
        return out

    # ------------------------------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: trainable weights, optimizer, LR schedule, step, RNG."""
        return {
            "trainable": self.trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "torch_rng": torch.get_rng_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s output (the policy must have been built with the same settings)."""
        params = dict(self.model.named_parameters())
        if self.ttm_head is not None:
            params.update({f"ttm_head.{n}": p for n, p in self.ttm_head.named_parameters()})
        missing = [k for k in state["trainable"] if k not in params]
        if missing:
            raise ValueError(f"checkpoint has parameters this policy lacks: {missing[:3]}...")
        with torch.no_grad():
            for name, value in state["trainable"].items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])

    def ping(self) -> str:
        return "ok"


def remote_learner(num_cpus: float = 1.0, num_gpus: float = 0.0) -> Any:
    """The learner as a Ray actor class with these resources."""
    import ray

    env = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(max(1, int(num_cpus or 1)))}
    env.update({k: os.environ[k] for k in ("HF_HUB_OFFLINE",) if k in os.environ})
    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, runtime_env={"env_vars": env})(Learner)
