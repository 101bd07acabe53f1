"""The learner: a transformers (+ peft, + bitsandbytes NF4) policy updated with GRPO/DAPO-style losses, whose
log-probs are recomputed at the per-token temperatures the rollout sampled with (on-policy, docs/temperature.md).

Policy modes (``learner.mode``): ``full`` (all weights), ``lora`` (LoRA adapters on a plain-dtype base) and
``qlora`` (LoRA on an NF4, double-quantised base, Dettmers et al. 2023 — the seeds' 4-bit setup). For weight sync
the learner streams plain-dtype Hugging Face weights to the engines module by module from its device (LoRA deltas
merged into the dequantised base, never packed 4-bit tensors: rlvr_temp.weights.policy_tensors) through vLLM's
weight-transfer engines (``init_weight_sync`` / ``sync_weights``, rlvr_temp.weights.sync).

The learner receives the run's typed config as it is and a :class:`rlvr_temp.batch.TrainBatch` per step; the
temperature strategy (``rlvr_temp.temperature.strategy``) says at which temperatures log-probs are taken.
Gradient accumulation is exact: every micro-batch's loss is normalised by its whole mini-batch's token or
response count (``losses.aggregate``), so the micro-batch gradients sum to the mini-batch gradient. With
``resources.learner_ranks`` > 1 (``rlvr_temp.learner.group`` starts the ranks, :meth:`Learner.join` forms the
process group) each rank takes a token-balanced share of every mini-batch, still normalised by the whole
mini-batch, and the gradients are summed over the ranks; a ``full`` policy is then sharded over them with FSDP2
(``rlvr_temp.learner.parallel``, which also holds the learner's state, checkpoint part and weight-sync methods).
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import bitsandbytes as bnb
import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from rlvr_temp.batch import MicroBatch, TrainBatch, collate, micro_batches, token_budget_batches
from rlvr_temp.config.schema import RunConfig
from rlvr_temp.learner import parallel as dp
from rlvr_temp.learner.prompt_share import SharedPrompts, prompt_chunks, shareable
from rlvr_temp.losses import ClipSettings, get_policy_loss
from rlvr_temp.temperature import (
    TemperatureStrategy,
    TokenTemperatureHead,
    make_strategy,
    temperature_regularization,
    token_entropies,
    token_logprobs,
)
from rlvr_temp.utils import check_incarnation, derive_seed, lr_factor, new_incarnation
from rlvr_temp.weights.policy_tensors import export_state

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelSettings(Protocol):
    """What :func:`load_policy` reads of a ``model`` config section (the RL and the TGR recipes both have one)."""

    dtype: str
    trust_remote_code: bool


class PolicySettings(Protocol):
    """What :func:`load_policy` reads of a policy section (``config.PolicyConfig`` and its subclasses)."""

    mode: str
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_targets: list[str]
    gradient_checkpointing: bool


def load_policy(model_path: str, model: ModelSettings, policy: PolicySettings, device: torch.device) -> torch.nn.Module:
    """Load the policy in ``policy.mode`` (``full`` / ``lora`` / ``qlora``) with ``model.dtype`` compute."""

    dtype = DTYPES[model.dtype]
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": model.trust_remote_code}
    if policy.mode == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else "cpu"
    net = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if policy.mode != "qlora":
        net.to(device)
    if policy.mode == "full":
        if policy.gradient_checkpointing:
            net.gradient_checkpointing_enable()
        return net

    if policy.mode == "qlora":
        net = prepare_model_for_kbit_training(net, use_gradient_checkpointing=policy.gradient_checkpointing)
        disable_cpu_4bit_repacking(net)
    elif policy.gradient_checkpointing:
        net.gradient_checkpointing_enable()
        net.enable_input_require_grads()
    lora = LoraConfig(
        r=policy.lora_r,
        lora_alpha=policy.lora_alpha,
        lora_dropout=policy.lora_dropout,
        target_modules=list(policy.lora_targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(net, lora)


def disable_cpu_4bit_repacking(model: torch.nn.Module) -> int:
    """Work around silently wrong LoRA gradients on CPU (docs/stack.md): bitsandbytes repacks 4-bit weights on the
    first no-grad forward, after which backward runs through a kernel without autograd. Returns modules touched."""

    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


class Learner(dp.RankMixin):
    """Owns the policy, the optimizer and the LR schedule. Ray-free: :func:`rlvr_temp.driver.launch.start_learner` runs
    it as a Ray actor, and the GPU smoke test and ``export`` use it in-process."""

    def __init__(
        self,
        model_path: str,
        cfg: RunConfig,
        *,
        strategy: TemperatureStrategy | None = None,
        num_threads: int | None = None,
    ) -> None:
        """``strategy``: the driver's temperature strategy (default: built from ``cfg.temperature``); passing it lets
        a mode registered only in the driver's process reach the learner's."""
        if num_threads:
            torch.set_num_threads(num_threads)

        self.cfg = cfg
        self.lc, self.ac = cfg.learner, cfg.algorithm
        self.strategy = strategy or make_strategy(cfg.temperature)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(derive_seed(cfg.trainer.seed, "learner-init"))
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.model = load_policy(model_path, cfg.model, cfg.learner, self.device)
        self.export_dtype = DTYPES[cfg.model.dtype]
        self._sender: Any = None  # the weight-transfer engine (init_weight_sync)
        self.ttm_head: TokenTemperatureHead | None = None
        head = self.strategy.engine_settings()
        if head is not None:  # the engines run a TTM head: the learner owns and syncs its weights
            self.ttm_head = TokenTemperatureHead(self.model.config.hidden_size, **head).to(self.device)
        params = self._trainable()
        if not params:
            raise RuntimeError("the policy has no trainable parameters")
        # fused: one kernel over all parameters per step, not a dozen element-wise passes (as TRL's default
        # adamw_torch_fused); the FSDP2 path builds its own over the sharded parameters (rlvr_temp.learner.parallel)
        self.optimizer = torch.optim.AdamW(params, lr=self.lc.lr, weight_decay=self.lc.weight_decay, fused=True)
        # a partial of a plain function, not a bound method or a lambda: LambdaLR pickles a callable object's
        # __dict__ into its state, which for a bound method would carry Ray's actor wrappers into checkpoints
        schedule = functools.partial(
            lr_factor,
            warmup_steps=self.lc.warmup_steps,
            total_steps=cfg.trainer.total_steps,
            decay=self.lc.lr_schedule,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.loss_fn = get_policy_loss(self.ac.loss)
        self.clip = ClipSettings(self.ac.clip_eps_low, self.ac.clip_eps_high, self.ac.dual_clip_c)
        self.step = 0
        self.rank, self.world = 0, 1  # data-parallel position (join)
        self._incarnation = new_incarnation()

    def _trainable(self) -> list[torch.nn.Parameter]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return params + (list(self.ttm_head.parameters()) if self.ttm_head is not None else [])

    # ------------------------------------------------------------------------------------------ log-probs
    def _forward(
        self, mb: MicroBatch, base_t: float, with_entropy: bool = False, shared: tuple | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(log-probs, entropies or None, TTM head output or None) of the micro-batch's responses, ``[B, L]``;
        ``shared``: ``(SharedPrompts, rows)`` to read the prompts from their cache instead of running them."""
        p, r_len = mb.prompt_len, mb.response_ids.shape[1]
        if shared is not None:  # never with the TTM head (Learner._shares_prompts)
            cache, rows = shared
            logits, out, use_head = cache.response_logits(self.model, mb, rows), None, False
        else:
            use_head = self.ttm_head is not None and self.strategy.uses_head
            out = self.model(
                input_ids=mb.input_ids,
                attention_mask=mb.attention_mask,
                position_ids=mb.position_ids,
                use_cache=False,
                output_hidden_states=use_head,
                # logits at position j predict token j + 1: the L response tokens come from the last L + 1 columns
                # but one (P-1 .. P+L-2); the LM head runs on those only, not on the prompt
                logits_to_keep=r_len + 1,
            )
            logits = out.logits[:, :r_len, :]
        head_t = None
        if use_head and out is not None:
            # learned mode: the sampling temperature is the head's output on the final hidden states, kept in the
            # graph, so the policy gradient trains the head
            head_t = self.ttm_head.token_temperature(out.hidden_states[-1][:, p - 1 : p - 1 + r_len, :])
            temps: torch.Tensor | float = self.strategy.head_temperatures(head_t, mb.response_temperatures)
            # a plain log_softmax, not token_logprobs (which treats temperatures as data): the gradient must
            # reach the head through the temperatures
            scaled = torch.log_softmax(logits.float() / temps.unsqueeze(-1), dim=-1)
            logp = scaled.gather(-1, mb.response_ids.unsqueeze(-1)).squeeze(-1)
            temps = temps.detach()
        else:
            temps = self.strategy.learner_temperatures(mb.temperatures, base_t)
            logp = token_logprobs(logits, mb.response_ids, temps)
        # the entropy bonus needs the gradient of the entropy with respect to the logits: not detached
        ent = token_entropies(logits, temps) if with_entropy else None
        return logp, ent, head_t

    @torch.no_grad()
    def _logprobs(
        self, batch: TrainBatch, base_t: float, ref: bool = False, index: list[int] | None = None
    ) -> list[torch.Tensor]:
        """Per-response log-probs under the current policy (``ref``: the frozen base, adapters off), eval mode; only
        the responses ``index`` (default all; the others get empty tensors)."""
        out: list[torch.Tensor] = [torch.empty(0)] * len(batch)
        chunks = list(micro_batches(range(len(batch)) if index is None else index, self.lc.micro_batch_size))
        for idx, real, _ in self._lockstep(chunks):  # sharded: filler forwards keep the ranks' all-gathers paired
            mb = collate(batch, idx, self.pad_id, self.device)
            if ref:
                with self.model.disable_adapter():
                    lp, _, _ = self._forward(mb, base_t)
            else:
                lp, _, _ = self._forward(mb, base_t)
            for row, i in enumerate(idx if real else ()):
                out[i] = lp[row, : len(batch.response_ids[i])].float().cpu()
        return out

    # ------------------------------------------------------------------------------------------ update
    def _has_dropout(self) -> bool:
        """Whether a training forward differs from an eval one (any dropout module or attention dropout)."""
        drop = any(m.p > 0 for m in self.model.modules() if isinstance(m, torch.nn.Dropout))
        return drop or float(getattr(self.model.config, "attention_dropout", 0.0) or 0.0) > 0

    def accumulate(
        self,
        batch: TrainBatch,
        mini: list[int],
        extra: dict[str, list[torch.Tensor]],
        base_t: float,
        record: list[torch.Tensor] | None = None,
        local: list[int] | None = None,
    ) -> dict[str, float]:
        """Forward/backward the mini-batch ``mini`` (only its responses ``local``: this rank's share, default all)
        in micro-batches, leaving its exact gradient (this share's part of it) in ``.grad``.

        Every micro-batch loss is normalised by the mini-batch's token / response count and its constant length
        (``losses.aggregate``), so the gradients sum to the mini-batch's whatever ``micro_batch_size`` is.
        Without ``extra["old"]`` the old log-probs are this forward's, detached, and ``record`` receives them per
        response. Returns the micro-batches' statistics weighted by their token share."""
        lengths = batch.response_lengths()
        mini_tokens = max(1, sum(lengths[i] for i in mini))
        stats_sum: dict[str, float] = {}
        mine = mini if local is None else local
        share = self._shares_prompts()
        # a chunk's prompts stay in memory with their graph: at most one micro-batch's worth of prompt tokens
        cap = self.lc.micro_batch_tokens or self.lc.micro_batch_size * max(len(batch.prompt_ids[i]) for i in mine)
        for part in prompt_chunks(batch, mine, cap) if share else [mine]:
            stats = self._accumulate_part(batch, part, extra, base_t, record, mini_tokens, len(mini), share)
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + v
        return stats_sum

    def _shares_prompts(self) -> bool:
        """Whether the update runs each prompt once (``prompt_share``): ``learner.share_prompts``, and neither a
        TTM head (it reads the last prompt position's hidden state), FSDP2 nor gradient checkpointing."""
        head = self.ttm_head is not None and self.strategy.uses_head
        plain = head or self.sharded or self.lc.gradient_checkpointing
        return self.lc.share_prompts and not plain and shareable(self.model)

    def _accumulate_part(
        self,
        batch: TrainBatch,
        part: list[int],
        extra: dict[str, list[torch.Tensor]],
        base_t: float,
        record: list[torch.Tensor] | None,
        mini_tokens: int,
        mini_seqs: int,
        share: bool,
    ) -> dict[str, float]:
        """:meth:`accumulate` for the responses ``part`` (with ``share``, responses to the prompts of one
        :func:`prompt_chunks` chunk: the prompts run once, first, and their backward last)."""
        lengths = batch.response_lengths()
        stats_sum: dict[str, float] = {}
        archer, want_ent = self.ac.archer, self.ac.entropy_coef > 0
        budget = self.lc.micro_batch_tokens
        prompts = SharedPrompts(self.model, batch, part, self.pad_id, self.device) if share else None
        if budget:  # with shared prompts a micro-batch holds response tokens only
            chunks = token_budget_batches(batch, part, budget, with_prompts=not share)
        else:
            chunks = micro_batches(part, self.lc.micro_batch_size)
        for idx, real, last in self._lockstep(list(chunks)):
            self._grad_sync(last)  # sharded: reduce-scatter the accumulated gradients on the last backward only
            mb = collate(batch, idx, self.pad_id, self.device, extra)
            shared = (prompts, prompts.rows(batch, idx)) if prompts is not None else None
            logp, ent, head_t = self._forward(mb, base_t, with_entropy=want_ent, shared=shared)
            if not real:  # a filler (sharded ranks run equally many backward passes): exact zero gradients
                (logp.sum() * 0.0).backward()
                continue
            if record is not None:
                for row, i in enumerate(idx):
                    record[i] = logp[row, : lengths[i]].detach().float().cpu()
            loss, stats = self.loss_fn(
                logp,
                mb.extra["old"] if "old" in mb.extra else logp.detach(),
                mb.advantages,
                mb.mask,
                agg=self.ac.loss_agg,
                clip=self.clip,
                ref_logp=mb.extra.get("ref"),
                kl_coef=self.ac.kl_coef,
                entropy=ent,
                entropy_coef=self.ac.entropy_coef,
                archer_entropy=mb.entropies if archer else None,
                num_tokens=mini_tokens,
                num_seqs=mini_seqs,
                norm_len=self.cfg.rollout.max_response_len,
            )
            weight = mb.num_tokens / mini_tokens
            if head_t is not None:
                lc = self.cfg.temperature.learned
                stats["ttm/head_temperature_mean"] = float((head_t.detach() * mb.mask).sum() / mb.mask.sum().clamp(1))
                if lc.reg_weight > 0:
                    # the regulariser is a mean over the micro-batch's tokens: its token share makes it the
                    # mini-batch's token mean once summed
                    reg = temperature_regularization(head_t, lc.init_temperature, lc.reg_weight, mb.mask) * weight
                    loss = loss + reg
                    stats["ttm/reg"] = reg.item() / max(weight, 1e-12)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at learner step {self.step}")
            loss.backward()
            stats["actor/loss"] = loss.item()
            for k, v in stats.items():
                # the loss is already this micro-batch's part of the mini-batch loss: sum it; average the rest
                stats_sum[k] = stats_sum.get(k, 0.0) + (v if k == "actor/loss" else v * weight)
        if prompts is not None:
            prompts.backward()
        return stats_sum

    def train_step(
        self, batch: TrainBatch, base_temperature: float = 1.0, incarnation: str | None = None
    ) -> dict[str, float]:
        """One policy update (``algorithm.ppo_epochs`` passes over shuffled mini-batches) on a scored batch.
        ``incarnation``: the token the driver last saw (refused after a restart: the updates are gone)."""
        check_incarnation(self._incarnation, incarnation, "learner")
        n = len(batch)
        self.model.eval()  # no dropout: the old log-probs must match the rollout's
        # One pass over one mini-batch without dropout: the old policy is the current one, so the old log-probs are
        # the update's own forward, detached (the ratio is exactly 1, as in verl on-policy); otherwise a separate
        # no-grad pass before any update. Either way they are compared with the rollout's (the mismatch metric).
        single = self.ac.ppo_epochs == 1 and n <= self.lc.mini_batch_size and not self._has_dropout()
        # every epoch's mini-batches, and this rank's token-balanced share of each (all of it on a single rank)
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.trainer.seed, "minibatch-order", self.step))
        orders = [torch.randperm(n, generator=gen).tolist() for _ in range(self.ac.ppo_epochs)]
        lengths = batch.response_lengths()
        plan = [
            (mini, dp.split_by_tokens(lengths, mini, self.world)[self.rank])
            for order in orders
            for mini in micro_batches(order, self.lc.mini_batch_size)
        ]
        mine = sorted({i for _, part in plan for i in part})
        extra = {} if single else {"old": self._logprobs(batch, base_temperature, index=mine)}
        seen: list[torch.Tensor] = extra["old"] if not single else [torch.empty(0)] * n
        if self.ac.kl_coef > 0 or self.ac.archer:
            if self.lc.mode == "full":
                raise ValueError("KL / Archer against the frozen base needs a LoRA policy (learner.mode lora or qlora)")
            extra["ref"] = self._logprobs(batch, base_temperature, ref=True, index=mine)
        self.model.train()
        stats_sum: dict[str, float] = {}
        grad_norms: list[float] = []
        for mini, part in plan:
            self.optimizer.zero_grad(set_to_none=True)
            record = seen if single else None
            for k, v in self.accumulate(batch, mini, extra, base_temperature, record, local=part).items():
                stats_sum[k] = stats_sum.get(k, 0.0) + v
            grad_norms.append(self._reduce_and_clip())  # summed over the ranks, then clipped
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if self.world > 1:  # the whole batch's statistics: every rank's shares summed
            stats_sum = dp.sum_dicts(stats_sum)
        metrics = dp.mismatch(seen, batch.rollout_logprobs, mine, self.world > 1)
        metrics["logprob/old_from_update"] = float(single)
        metrics.update({k: v / max(1, len(grad_norms)) for k, v in stats_sum.items()})
        metrics["actor/grad_norm"] = sum(grad_norms) / max(1, len(grad_norms))
        metrics["actor/lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["actor/updates"] = len(grad_norms)
        return metrics

    # ------------------------------------------------------------------------------------------ export
    def export_weights(self, incarnation: str | None = None) -> dict[str, torch.Tensor]:
        """Plain-dtype Hugging Face state dict of the current policy on the CPU (rlvr_temp.weights.policy_tensors: LoRA
        merged into the dequantised base, never packed 4-bit)."""
        check_incarnation(self._incarnation, incarnation, "learner")
        return export_state(self.model, self.export_dtype, self.ttm_head)

    def identity(self) -> tuple[str, int]:
        """(incarnation token, updates made): what the driver checks after an actor failure."""
        return self._incarnation, self.step

    def ping(self) -> str:
        return "ok"
