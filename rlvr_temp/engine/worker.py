"""Rollout worker: a vLLM engine (CPU or CUDA build) that samples groups of responses with per-token and
per-response temperatures and returns, for every generated token, its temperature, entropy and log-prob.

`RolloutWorker` is a plain class (usable in-process in tests and benchmarks); :func:`remote_worker` wraps it as
a Ray actor with the recipe's resources. The engine runs inside the worker's process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the learner must live in another process (its own actor): vLLM binds
OpenMP threads and replaces ``torch.set_num_threads`` in the process that hosts the engine (docs/stack.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ray
import torch
import vllm
from vllm import LLM, RequestOutput, SamplingParams
from vllm.config import WeightTransferConfig
from vllm.lora.request import LoRARequest

from rlvr_temp.batch import Rollout
from rlvr_temp.config.schema import EngineConfig, ModelConfig
from rlvr_temp.engine import extension as vllm_worker
from rlvr_temp.engine import ttm as ttm_vllm
from rlvr_temp.engine.settings import cpu_thread_binding, lora_rank_slot, quiet_vllm_logs
from rlvr_temp.temperature import TemperatureStrategy
from rlvr_temp.temperature import request as request_format
from rlvr_temp.utils import check_incarnation, derive_seed, new_incarnation
from rlvr_temp.weights.clients import ENGINE_ENV, LocalLLMClient

#: seconds a CPU engine's worker keeps busy-waiting for its next call (decode steps come tens of ms apart)
CPU_IDLE_SPIN_S = 0.1


def _check_temperature(t: float, what: str) -> float:
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {t!r}")
    return float(t)


class RolloutWorker(LocalLLMClient):
    """Owns one vLLM engine with the rlvr_temp temperature processor installed.

    Built from the run's typed ``model`` and ``rollout.engine`` config sections as they are; ``engine_settings``
    is the temperature strategy's (the TTM head's settings in ``learned`` mode, else None); ``cpu_slot``: the
    worker's index, which range of the node's cores a CPU engine's threads are pinned to (``engine.cpu_bind``).
    """

    def __init__(
        self,
        model_path: str,
        model: ModelConfig,
        engine: EngineConfig,
        *,
        seed: int = 0,
        num_threads: int | None = None,
        engine_settings: Mapping[str, Any] | None = None,
        log_level: str | None = "WARNING",
        cpu_slot: int = 0,
        lora_rank: int | None = None,
    ) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if engine.multiprocess else "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, math.ceil(engine.kv_cache_gib))))
        if not torch.cuda.is_available():
            bind = cpu_thread_binding(engine.tensor_parallel_size, num_threads if engine.cpu_bind else None, cpu_slot)
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", bind)
            # the engine's worker busy-waits this long after its last call, not vLLM's 1 s (it would take a core
            # from a colocated learner at the start of every update; rlvr_temp.engine.extension.shorten_idle_spin)
            os.environ.setdefault(vllm_worker.IDLE_SPIN_ENV, str(CPU_IDLE_SPIN_S))
        if num_threads:
            os.environ.setdefault("OMP_NUM_THREADS", str(num_threads))

        quiet_vllm_logs(log_level)
        # vLLM 0.32 runs Model Runner V2 on CUDA by default, which takes only V2 processors: V1 unless the recipe
        # asks for V2, whose processor has not yet run on a real CUDA install (docs/cluster.md)
        self.model_runner = engine.model_runner
        if self.model_runner == "v2" and not torch.cuda.is_available():
            raise ValueError("rollout.engine.model_runner=v2 needs a CUDA build of vLLM; use v1 on CPU")
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1" if self.model_runner == "v2" else "0"
        processor = vllm_worker.PROCESSOR_V2 if engine.model_runner == "v2" else vllm_worker.PROCESSOR_V1
        kwargs: dict[str, Any] = {}
        if engine_settings is not None:  # learned mode: the engine's model runs the TTM head (rlvr_temp.engine.ttm)
            kwargs["hf_overrides"] = ttm_vllm.hf_overrides(model_path, dict(engine_settings))
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
            if self.model_runner == "v1":  # vLLM's default on CUDA; the CPU build forces it off
                kwargs["async_scheduling"] = False  # why, and its cost: rlvr_temp.engine.sampled_logprobs, cluster.md
        if engine.sleep_mode is True:  # "auto" is resolved by the driver (RunConfig.engines_sleep)
            if not torch.cuda.is_available():
                raise ValueError("rollout.engine.sleep_mode=true needs a CUDA build of vLLM (vLLM's sleep mode)")
            kwargs["enable_sleep_mode"] = True
        if engine.weight_sync != "object_store":  # "auto" is resolved by the driver (RunConfig.weight_sync_backend)
            backend = (
                engine.weight_sync
                if engine.weight_sync != "auto"
                else ("nccl" if torch.cuda.is_available() else "gloo")
            )
            kwargs["weight_transfer_config"] = WeightTransferConfig(backend=backend)
            os.environ.update(ENGINE_ENV.get(backend, {}))  # inherited by the engine core and its workers
        if engine.lora_updates:  # the policy's adapters as vLLM LoRA requests (load_adapters)
            if lora_rank is None:
                raise ValueError("rollout.engine.lora_updates needs the learner's LoRA rank")
            kwargs |= {"enable_lora": True, "max_loras": 1, "max_lora_rank": lora_rank_slot(lora_rank)}
        self.lora_request: LoRARequest | None = None  # the adapters every request carries (load_adapters)
        self.llm = LLM(
            model=model_path,
            dtype=model.dtype,
            max_model_len=model.max_model_len,
            seed=seed,
            enforce_eager=engine.enforce_eager,
            enable_prefix_caching=engine.enable_prefix_caching,
            max_num_seqs=engine.max_num_seqs,
            tensor_parallel_size=engine.tensor_parallel_size,
            # the ranks as local processes on this actor's devices (inside a Ray actor vLLM would otherwise ask
            # Ray for more resources, which the run's placement group already holds)
            distributed_executor_backend="mp" if engine.tensor_parallel_size > 1 else None,
            trust_remote_code=model.trust_remote_code,
            # by qualified name: vLLM imports it in the worker process(es), which may not be this one
            logits_processors=[processor],
            logprobs_mode="processed_logprobs",
            worker_extension_cls=vllm_worker.EXTENSION,
            **kwargs,
        )
        # one processor per rank, found by the worker extension (raises in the worker if there is none)
        self.ranks = self.llm.collective_rpc("rlvr_info")
        self.has_ttm = engine_settings is not None
        self.tokenizer = self.llm.get_tokenizer()
        self.model_path = model_path
        self.max_model_len = model.max_model_len
        self.seed = seed
        self.weights_version = 0
        self._uid = 0
        self._incarnation = new_incarnation()

    def _generate_as_one_batch(self, requests: list[dict[str, Any]], params: list[SamplingParams]) -> list[Any]:
        """``LLM.generate`` with every request queued before the first step. A multiprocess engine core steps as
        soon as its first request arrives, so the first batches (and the global entropy window's first contents)
        would depend on how fast requests cross the socket; a paused scheduler makes the batches, and with them
        the sampled tokens and the log-probs, the same from run to run (``LLM.enqueue``'s documented recipe).
        Refused while a weight update is half done (``check_loaded``)."""
        self.check_loaded()
        self.llm.sleep(level=0)  # level 0 pauses scheduling only: requests are accepted and queued
        try:
            self.llm.enqueue(requests, params, lora_request=self.lora_request, use_tqdm=False)
        finally:
            self.llm.wake_up(tags=["scheduling"])
        return self.llm.wait_for_completion(RequestOutput, use_tqdm=False)

    def _rank0(self, method: str, *args: Any) -> Any:
        """``method`` of the worker extension on every rank (rlvr_temp.engine.extension); rank 0's answer."""
        return self.llm.collective_rpc(method, args=args)[0]

    # ------------------------------------------------------------------------------------------ generation
    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        temperatures: Sequence[Sequence[float]],
        *,
        prompt_ids: Sequence[str] | None = None,
        max_tokens: int = 64,
        strategy: TemperatureStrategy | None = None,
        top_p: float = 1.0,
        top_k: int = -1,
        seed: int | None = None,
        ignore_eos: bool = False,
        incarnation: str | None = None,
    ) -> list[list[Rollout]]:
        """Sample ``len(temperatures[i])`` responses for prompt ``i``, the j-th at rollout temperature
        ``temperatures[i][j]``.

        ``strategy`` (the run's :class:`~rlvr_temp.temperature.TemperatureStrategy`) says what each request asks
        of the processor on top of its rollout temperature (the token rule, the learned head); without one every
        token is sampled at its response's temperature. A temperature of 0 means greedy decoding (recorded as 0;
        its log-probs are at temperature 1). ``seed`` makes sampling reproducible (one derived seed per
        response on the CPU; on CUDA the engine's seed alone, see below); ``ignore_eos`` generates exactly
        ``max_tokens`` (benchmarks). ``incarnation``: the token the driver last saw
        (:func:`rlvr_temp.utils.check_incarnation`). Invalid settings raise ``ValueError`` before anything is
        generated. A response whose recorded log-prob is missing or not finite raises ``RuntimeError``
        naming its request (it would turn the learner's ratios and the mismatch metric NaN).

        Seeds: on CUDA no request carries a seed, since vLLM's V1 sampler then draws its noise row by row, one
        kernel per seeded row and decode step (``vllm/v1/sample/ops/topk_topp_sampler.py``); the engine's seed and
        the one-batch scheduling of :meth:`_generate_as_one_batch` make a call's samples repeat from run to run for
        the same engine, prompts and weights (not across batch compositions or GPU kernels). On the CPU each request
        has its own derived seed, so a response's tokens do not depend on the rest of the batch.
        """

        check_incarnation(self._incarnation, incarnation, "rollout worker")
        if len(prompts) != len(temperatures):
            raise ValueError(f"{len(prompts)} prompts but {len(temperatures)} temperature lists")
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if strategy is not None and strategy.engine_settings() is not None and not self.has_ttm:
            raise ValueError(f"temperature mode {strategy.name!r} needs an engine built with its engine_settings()")
        ids = list(prompt_ids) if prompt_ids is not None else [str(i) for i in range(len(prompts))]
        requests, params, meta = [], [], []
        specs: dict[float, dict[str, Any]] = {}
        for i, (prompt, temps) in enumerate(zip(prompts, temperatures)):
            if len(temps) == 0:
                raise ValueError(f"prompt {i}: no temperatures given")
            request = {"prompt": prompt} if isinstance(prompt, str) else {"prompt_token_ids": list(prompt)}
            for j, t in enumerate(temps):
                t = _check_temperature(t, f"prompt {i} response {j} temperature")
                self._uid += 1
                uid = f"r{self._uid}"
                # vLLM's logprobs only where the processor does not record them (greedy requests bypass it; the V2
                # processor has no record yet): asking for them costs ~7% of generation
                # (rlvr_temp.engine.sampled_logprobs)
                own = t > 0 and self.model_runner == "v1"
                common = dict(max_tokens=max_tokens, logprobs=None if own else 0, ignore_eos=ignore_eos)
                if seed is not None and not torch.cuda.is_available():  # CUDA: unseeded requests (docstring)
                    common["seed"] = derive_seed(seed, i, j)
                if t == 0:
                    if strategy is not None and strategy.token_rule:
                        raise ValueError("greedy (temperature 0) cannot be combined with the token rule")
                    sp = SamplingParams(temperature=0.0, **common)
                else:
                    if t not in specs:  # one spec per distinct rollout temperature, checked before anything runs
                        spec = strategy.request_spec(t) if strategy else request_format.request_spec(t)
                        # top-p / top-k are applied by the processor after the per-token temperature (vLLM's CPU
                        # sampler cannot combine them with seeded requests)
                        specs[t] = request_format.with_truncation(spec, top_p, top_k)
                        request_format.check_spec(specs[t])
                    extra = request_format.extra_args(uid, specs[t])
                    sp = SamplingParams(temperature=1.0, extra_args=extra, **common)
                requests.append(request)
                params.append(sp)
                meta.append((i, uid, t))
        try:
            outputs = self._generate_as_one_batch(requests, params)
        finally:
            # every request of this call has finished: its records, then release its rows and per-sequence windows
            records = self._rank0("rlvr_collect", [uid for _, uid, _ in meta])
        groups: list[list[Rollout]] = [[] for _ in prompts]
        for out, (i, uid, t) in zip(outputs, meta):
            comp = out.outputs[0]
            n = len(comp.token_ids)
            logprobs = [float(lp[tok].logprob) for lp, tok in zip(comp.logprobs or [], comp.token_ids)]
            if t == 0:
                temps_t, ents = [0.0] * n, [float("nan")] * n
            else:
                temps_t, ents, own_lps = records.get(uid, ([], [], None))
                logprobs = own_lps if own_lps is not None else logprobs  # the processor's, else vLLM's
                if min(len(temps_t), len(logprobs)) < n:
                    raise RuntimeError(
                        f"recorded {len(temps_t)} temperatures and {len(logprobs)} log-probs for {n} tokens "
                        f"(request {uid})"
                    )
                # under asynchronous scheduling a finished request may have had one more step computed before the
                # scheduler saw its stop token; records are by output position, so that step's is the surplus one
                temps_t, ents, logprobs = temps_t[:n], ents[:n], logprobs[:n]
            bad = next((p for p, lp in enumerate(logprobs) if not math.isfinite(lp)), None)
            if bad is not None:
                raise RuntimeError(
                    f"request {uid}: the sampled token's log-prob at position {bad} of {n} is {logprobs[bad]} "
                    f"(finish reason {comp.finish_reason}; a token vLLM never filled in: async scheduling on?)"
                )
            groups[i].append(
                Rollout(
                    prompt_id=ids[i],
                    prompt_token_ids=list(out.prompt_token_ids),
                    token_ids=list(comp.token_ids),
                    token_temperatures=list(temps_t),
                    token_entropies=list(ents),
                    token_logprobs=logprobs,
                    finish_reason=str(comp.finish_reason),
                    temperature=t,
                    text=comp.text,
                )
            )
        return groups

    # ------------------------------------------------------------------------------------------ weights
    # vLLM's weight-transfer API: init_weight_transfer_engine / start_weight_update / update_weights come from
    # LocalLLMClient (rlvr_temp.weights.clients), the learner's trainer engine drives them through RayEnginesClient
    def finish_weight_update(self, weight_version: str | None = None) -> int:
        """Finish the round; the prefix cache (computed with the old weights) is dropped."""
        super().finish_weight_update(weight_version)
        self.weights_version += 1
        return self.weights_version

    def shutdown_weight_transfer_engine(self) -> None:
        """Leave the transfer group (before the learner opens a new one, e.g. after an actor restart)."""
        self.llm.shutdown_weight_transfer_engine()

    def load_adapters(self, path: str, version: int) -> None:
        """LoRA-only updates (``rollout.engine.lora_updates``): load the learner's adapters written at ``path``
        (rlvr_temp.learner.adapters) as LoRA id ``version`` now, drop the earlier ones, and attach it to every
        later request."""
        engine = self.llm.llm_engine
        for old in engine.list_loras():  # an earlier run on this engine may have used the same ids
            engine.remove_lora(old)
        request = LoRARequest(f"policy-v{version}", version, path)
        if not engine.add_lora(request):
            raise RuntimeError(f"engine did not load the LoRA adapters at {path}")
        self.lora_request = request
        self.weights_version += 1
        self.llm.reset_prefix_cache()

    def sleep(self, level: int = 2) -> None:
        """Free the engine's GPU memory while the learner trains (vLLM sleep mode; level 2: weights and KV cache
        discarded, as the next weight sync resends every weight; level 1 would keep the weights in host memory)."""
        self.llm.sleep(level=level)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Re-allocate what :meth:`sleep` freed (``["weights"]`` before a sync, ``["kv_cache"]`` after; None: all)."""
        self.llm.wake_up(tags=tags)

    def load_weights(self, weights: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> int:
        """Load a whole state dict (HF names, plain dtype) in place: ``rollout.engine.weight_sync: object_store``
        and loading a checkpoint into an engine. The prefix cache is invalidated."""
        items = weights.items() if isinstance(weights, Mapping) else weights
        self.llm.collective_rpc("rlvr_reload_weights", args=(vllm_worker.pack(list(items)),))
        self.llm.reset_prefix_cache()
        self.weights_version += 1
        return self.weights_version

    # ------------------------------------------------------------------------------------------ state
    def temperature_state(self) -> dict[str, Any]:
        """The processor's entropy windows (for checkpoints)."""
        return vllm_worker.unpack(self._rank0("rlvr_state_dict"))

    def load_temperature_state(self, state: dict[str, Any]) -> None:
        self.llm.collective_rpc("rlvr_load_state_dict", args=(vllm_worker.pack(state),))

    def reset_temperature_state(self) -> None:
        """Forget every entropy window and pending record (a new run reusing this engine)."""
        self.llm.collective_rpc("rlvr_reset")

    def open_windows(self) -> int:
        """Per-sequence entropy windows the processor holds (0 between ``generate`` calls)."""
        return self._rank0("rlvr_open_windows")

    def version(self) -> int:
        """How many weight updates this engine has received."""
        return self.weights_version

    def engine_info(self) -> dict[str, Any]:
        """What this engine runs (recorded in the run directory's ``engines.json``)."""
        cfg = self.llm.llm_engine.vllm_config
        return {
            "vllm": vllm.__version__,
            "model_runner": self.model_runner,
            "tensor_parallel_size": cfg.parallel_config.tensor_parallel_size,
            "multiprocess": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "1",
            "async_scheduling": bool(cfg.scheduler_config.async_scheduling),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "ranks": self.ranks,
        }

    def incarnation(self) -> str:
        """A token drawn at construction: it changes when Ray restarts this actor."""
        return self._incarnation

    def ping(self) -> str:
        return "ok"

    def close(self) -> None:
        """Shut the engine's processes down (a Ray actor's are stopped with the actor)."""
        self.llm.llm_engine.engine_core.shutdown()


def remote_worker(num_cpus: float = 1.0, num_gpus: float = 0.0, max_restarts: int = 0) -> Any:
    """The worker as a Ray actor class with these resources (``.remote(...)`` to start one); Ray restarts a killed
    one up to ``max_restarts`` times (rlvr_temp.driver.recovery)."""
    env = {"TOKENIZERS_PARALLELISM": "false"}
    options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": max_restarts}
    return ray.remote(**options, runtime_env={"env_vars": env})(RolloutWorker)
