"""The learner: a transformers (+ peft, + bitsandbytes NF4) policy updated with GRPO/DAPO-style losses, whose
log-probs are recomputed at the per-token temperatures the rollout sampled with (on-policy, docs/temperature.md,
``rlvr_temp.learner.logprobs``). It runs in each learner rank (a Ray actor, ``rlvr_temp.learner.group``) or
in-process (export, tests, the GPU smoke test), and owns all it holds, set in its constructor: the policy
(``rlvr_temp.learner.policy``), optimizer, LR schedule, step and place among the ranks.

It receives the run's typed config as it is and a :class:`rlvr_temp.batch.TrainBatch` per step. Gradient
accumulation is exact: every micro-batch's loss is normalised by its whole mini-batch's token or response count
(``losses.aggregate``), so the micro-batch gradients sum to the mini-batch gradient. With
``resources.learner_ranks`` > 1 (:meth:`Learner.join` forms the process group) each rank takes a token-balanced
share of every mini-batch, still normalised by the whole mini-batch, and the gradients are summed over the ranks; a
``full`` policy is then sharded over them with FSDP2 (the rank mechanics: ``rlvr_temp.learner.parallel``).

Its state and its part of a checkpoint: plain functions over its parameters and optimizer
(``rlvr_temp.learner.state``). Weight sync streams plain-dtype Hugging Face weights module by module from its
device (LoRA merged into the dequantised base, never packed 4-bit: rlvr_temp.weights.source) through vLLM's
weight-transfer engines (``init_weight_sync`` / ``sync_weights``, rlvr_temp.weights.sender).

Left out: re-forming a sharded policy's group around one restarted rank (``LearnerGroup`` restarts them all).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch
from transformers import AutoTokenizer

from rlvr_temp.batch import TrainBatch, collate, micro_batches, token_budget_batches
from rlvr_temp.config.schema import RunConfig
from rlvr_temp.learner import parallel as dp
from rlvr_temp.learner.budget import learner_micro_batch_tokens
from rlvr_temp.learner.logprobs import policy_logprobs
from rlvr_temp.learner.policy import DTYPES, load_policy
from rlvr_temp.learner.precision import apply_precision, compute_precision, set_autocast
from rlvr_temp.learner.prompt_share import SharedPrompts, prompt_chunks, shareable
from rlvr_temp.learner.state import (
    collect_state,
    gather_trainable,
    named_trainable,
    read_rank_part,
    restore_state,
    write_rank_part,
)
from rlvr_temp.learner.transfer import WeightSyncEnd
from rlvr_temp.losses import ClipSettings, get_policy_loss, merge_stats, resolve_correction, rollout_correction
from rlvr_temp.temperature import TemperatureStrategy, TokenTemperatureHead, make_strategy, temperature_regularization
from rlvr_temp.utils import check_incarnation, derive_seed, lr_factor, new_incarnation


class Learner(WeightSyncEnd):
    """Owns the policy, the optimizer, the LR schedule and its place among the ranks. Ray-free:
    ``rlvr_temp.driver.launch.start_learner`` runs it as a Ray actor, and the GPU smoke test and ``export`` use it
    in-process."""

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
        self.precision = compute_precision(self.device, self.lc.mode, DTYPES[cfg.model.dtype])
        apply_precision(self.model, self.precision)
        self.export_dtype = DTYPES[cfg.model.dtype]
        self._sender: Any = None  # the weight-transfer engine (init_weight_sync)
        self.ttm_head: TokenTemperatureHead | None = None
        head = self.strategy.engine_settings()
        if head is not None:  # the engines run a TTM head: the learner owns and syncs its weights
            self.ttm_head = TokenTemperatureHead(self.model.config.hidden_size, **head).to(self.device)
        params = self._trainable()
        if not params:
            raise RuntimeError("the policy has no trainable parameters")
        # learner.micro_batch_tokens "auto", sized once from the device and the model (logged; in the metrics)
        self.auto_tokens = learner_micro_batch_tokens(cfg, self.model, sum(p.nbytes for p in params), self.device)
        # fused: one kernel over all parameters per step, not a dozen element-wise passes (as TRL's default
        # adamw_torch_fused); the FSDP2 path builds its own over the sharded parameters (join)
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
        rc, mode = self.ac.rollout_correction, resolve_correction(cfg)  # importance weights (docs/loop.md)
        kw = dict(mode=mode, level=rc.level, threshold=rc.threshold, lower=rc.lower)
        self.correct = functools.partial(rollout_correction, **kw) if mode != "none" else None
        self.step = 0
        self.rank, self.world = 0, 1  # data-parallel position (join)
        self.sharded = False  # FSDP2: learner.mode=full over more than one rank (join)
        self._incarnation = new_incarnation()

    def _tokens(self) -> int | None:
        """``learner.micro_batch_tokens`` resolved (``auto``: at start-up, rlvr_temp.learner.budget); None: none."""
        return self.auto_tokens if self.lc.micro_batch_tokens == "auto" else self.lc.micro_batch_tokens

    def _trainable(self) -> list[torch.nn.Parameter]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return params + (list(self.ttm_head.parameters()) if self.ttm_head is not None else [])

    # ------------------------------------------------------------------------------------------ data parallel
    def rendezvous(self) -> tuple[str, int]:
        """(this node's address, a free port): rank 0's, for the process group the driver then forms."""
        return dp.rendezvous()

    def join(self, addr: str, port: int, rank: int, world: int, timeout_s: float = 600.0) -> str:
        """Join the learner ranks' process group as ``rank`` of ``world`` (every rank at once); rank 0's trainable
        weights are then everyone's, and a ``full`` policy is then sharded over the ranks with a new optimizer.
        Returns the backend (``gloo`` / ``nccl``). A rank whose policy was sharded over an earlier group (another
        rank restarted) cannot re-shard it: it refuses, and ``LearnerGroup`` restarts every rank instead."""
        if self.sharded:
            raise RuntimeError("a sharded (FSDP2) learner rank cannot join a new group; restart every rank")
        self.rank, self.world = rank, world
        backend = dp.init_group(addr, port, rank, world, timeout_s)
        dp.broadcast_params(self._trainable())
        if self.lc.mode == "full" and world > 1:
            set_autocast(self.model, self.device.type, None)  # FSDP2's MixedPrecisionPolicy casts instead
            dp.shard_policy(self.model, world, self.device, self.export_dtype)
            self.sharded = True
            # AdamW over the sharded parameters (its state is then per shard); the schedule carries over, at step 0
            schedule = self.scheduler.lr_lambdas[0]
            self.optimizer = torch.optim.AdamW(self._trainable(), lr=self.lc.lr, weight_decay=self.lc.weight_decay)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        return backend

    def collective_methods(self) -> frozenset[str]:
        """The methods ``LearnerGroup`` runs on every rank (rank 0's result returned): the weight sync's two, as
        with ``ipc`` every replicated rank hands its own GPU's engines their weights (a rank with no part in a
        backend returns at once); when sharded also those that gather weights."""
        sync = frozenset({"init_weight_sync", "sync_weights"})
        return sync | {"trainable_state", "get_state", "export_weights"} if self.sharded else sync

    def shard_bytes(self) -> dict[str, int]:
        """Bytes this rank holds of the trainable parameters and of the optimizer state (its shards when sharded)."""
        return dp.held_bytes(self._trainable(), self.optimizer)

    # ------------------------------------------------------------------------------------------ log-probs
    @torch.no_grad()
    def _logprobs(
        self, batch: TrainBatch, base_t: float, ref: bool = False, index: list[int] | None = None
    ) -> list[torch.Tensor]:
        """Per-response log-probs under the current policy (``ref``: the frozen base, adapters off), eval mode; only
        the responses ``index`` (default all; the others get empty tensors)."""
        out: list[torch.Tensor] = [torch.empty(0)] * len(batch)
        chunks = list(micro_batches(range(len(batch)) if index is None else index, self.lc.micro_batch_size))
        for idx, real, _ in dp.lockstep(chunks, self.sharded):  # sharded: filler forwards pair the all-gathers
            mb = collate(batch, idx, self.pad_id, self.device)
            with self.model.disable_adapter() if ref else contextlib.nullcontext():
                lp, _, _ = policy_logprobs(self.model, mb, base_t, self.strategy, self.ttm_head)
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
        response. Returns the micro-batches' statistics weighted by their token share (``*_max``: their max)."""
        lengths = batch.response_lengths()
        mini_tokens = max(1, sum(lengths[i] for i in mini))
        stats_sum: dict[str, float] = {}
        mine = mini if local is None else local
        share = self._shares_prompts()
        # a chunk's prompts stay in memory with their graph: at most one micro-batch's worth of prompt tokens
        cap = self._tokens() or self.lc.micro_batch_size * max(len(batch.prompt_ids[i]) for i in mine)
        for part in prompt_chunks(batch, mine, cap) if share else [mine]:
            stats = self._accumulate_part(batch, part, extra, base_t, record, mini_tokens, len(mini), share)
            merge_stats(stats_sum, stats)
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
        budget = self._tokens()
        prompts = SharedPrompts(self.model, batch, part, self.pad_id, self.device) if share else None
        if budget:  # with shared prompts a micro-batch holds response tokens only
            chunks = token_budget_batches(batch, part, budget, with_prompts=not share)
        else:
            chunks = micro_batches(part, self.lc.micro_batch_size)
        for idx, real, last in dp.lockstep(list(chunks), self.sharded):
            if self.sharded:  # FSDP2: accumulate unsharded, reduce-scatter the gradients on the last backward only
                self.model.set_requires_gradient_sync(last)  # type: ignore[operator]
            mb = collate(batch, idx, self.pad_id, self.device, extra)
            shared = (prompts, prompts.rows(batch, idx)) if prompts is not None else None
            logp, ent, head_t = policy_logprobs(
                self.model, mb, base_t, self.strategy, self.ttm_head, with_entropy=want_ent, shared=shared
            )
            if not real:  # a filler (sharded ranks run equally many backward passes): exact zero gradients
                (logp.sum() * 0.0).backward()
                continue
            if record is not None:
                for row, i in enumerate(idx):
                    record[i] = logp[row, : lengths[i]].detach().float().cpu()
            old = mb.extra["old"] if "old" in mb.extra else logp.detach()
            is_w, corr = self.correct(old, mb.rollout_logprobs, mb.mask) if self.correct else (None, {})
            loss, stats = self.loss_fn(
                logp,
                old,
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
                is_weights=is_w,
            )
            stats.update(corr)
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
            # the loss is already this micro-batch's part of the mini-batch loss: sum it; maxima: max; average the rest
            merge_stats(stats_sum, stats, weight)
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
            merge_stats(stats_sum, self.accumulate(batch, mini, extra, base_temperature, record, local=part))
            grad_norms.append(dp.reduce_and_clip(self._trainable(), self.world, self.lc.grad_clip))
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if self.world > 1:  # the whole batch's statistics: every rank's shares summed (maxima: the max)
            stats_sum = functools.reduce(merge_stats, dp.gather(stats_sum), {})
        metrics = dp.mismatch(
            seen, batch.rollout_logprobs, mine, self.world > 1, batch.response_ids, batch.token_temperatures
        )
        metrics["logprob/old_from_update"] = float(single)
        metrics.update({k: v if k.endswith("_max") else v / max(1, len(grad_norms)) for k, v in stats_sum.items()})
        metrics["actor/grad_norm"] = sum(grad_norms) / max(1, len(grad_norms))
        metrics["actor/lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["actor/updates"] = len(grad_norms)
        metrics["actor/micro_batch_tokens"] = float(self._tokens() or 0)  # 0: micro_batch_size responses
        if self.device.type == "cuda" and self.cfg.engines_sleep():
            torch.cuda.empty_cache()  # the engines wake next on this GPU: hand them the update's cached peak
        return metrics

    # ------------------------------------------------------------------------------------------ identity
    def identity(self) -> tuple[str, int]:
        """(incarnation token, updates made): what the driver checks after an actor failure."""
        return self._incarnation, self.step

    def ping(self) -> str:
        return "ok"

    # ------------------------------------------------------------------------------------------ state
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Trainable parameters only (adapter or full weights, TTM head), for checkpoints and tests. Sharded: a
        collective (each parameter gathered in turn); rank 0 gets them, the others an empty dict."""
        return gather_trainable(named_trainable(self.model, self.ttm_head), self.rank == 0 or not self.sharded)

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly (rlvr_temp.learner.state): trainable weights, optimizer, LR
        schedule, step, RNG. Sharded: ``trainable`` is gathered on rank 0 (a collective) and ``shard`` holds this
        rank's parameter shards; the optimizer state holds its own shards."""
        named = named_trainable(self.model, self.ttm_head)
        keep = self.rank == 0 or not self.sharded
        return collect_state(named, self.optimizer, self.scheduler, self.step, keep=keep, sharded=self.sharded)

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s output (the policy must have been built with the same settings; sharded:
        over as many ranks, from this rank's ``shard``)."""
        named = named_trainable(self.model, self.ttm_head)
        self.step = restore_state(state, named, self.optimizer, self.scheduler, sharded=self.sharded)

    def write_part(self, directory: str) -> list[str]:
        """Write this rank's part of a checkpoint into ``directory`` (sharded: its own file, rank 0 also the
        gathered ``policy.safetensors``); returns the files' names."""
        return write_rank_part(directory, self.get_state(), self.rank, self.world, self.sharded)

    def read_part(self, directory: str) -> None:
        """Restore this rank's part of the checkpoint in ``directory`` (written by as many ranks)."""
        self.set_state(read_rank_part(directory, self.rank, self.world, self.sharded))
