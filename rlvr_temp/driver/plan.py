"""`rlvr-temp plan`: where a recipe's processes go on a GPU cluster of a given shape, which communication groups
they form, and how much GPU memory each GPU needs, from the recipe and the model's ``config.json`` alone (no GPU,
no Ray, no vLLM; docs/cluster.md, "Plan a run").

Placement mirrors rlvr_temp.driver.placement: bundles fill nodes by ``resources.strategy`` (PACK node after node,
SPREAD round-robin); in a bundle engines then the learner rank take GPUs first-fit; engine TP rank k its k-th GPU.

Memory, per process (GiB = 2^30 bytes; ``b`` = bytes of ``model.dtype``, T = the learner's micro-batch tokens:
``learner.micro_batch_tokens``; ``auto`` the learner's own rule, rlvr_temp.learner.budget.auto_micro_batch_tokens,
for what the busiest learner GPU has left beyond the learner's static memory and its engines while it learns;
``null`` ``micro_batch_size`` x the longest sequence):

* engine (per TP rank): its share ``gpu_memory_utilization x GPU``, plus a CUDA context outside it. In the share:
  weights ``params x b / TP``; activations ``max(16,384 batched tokens x (3 I + 4 h) x b, max_num_seqs x V x 4 x 3)``
  (vLLM's default token budget for ``LLM()`` on >= 70 GiB GPUs; the sampler's fp32 logits, probabilities and the
  processor's log-softmax); 0.5 GiB non-torch buffers, 0.5 more with CUDA graphs; the rest is KV cache at
  ``2 x layers x kv_heads/TP x head_dim x b`` bytes per token.
* learner static: ``qlora`` NF4 linear weights (0.5 byte + double-quantised absmax, 1/64 + 4/16,384 byte per
  param) + the other params (embeddings, untied head, norms, biases) in fp32 (``prepare_model_for_kbit_training``)
  + LoRA params, grads and AdamW in fp32 (16 bytes per LoRA param at ``lora_r`` on ``lora_targets``); ``lora`` the
  base at ``b`` + the same LoRA; ``full`` 18 bytes per param (bf16 weights, fp32 master, fp32 grads, AdamW), /N
  under FSDP2 (N ranks). Plus a CUDA context, and NCCL buffers with N > 1.
* learner peak = static + T x ``budget.activation_bytes_per_token``: ``3 x V x 4`` (fp32 logits, their grad, the
  temperature-scaled log-softmax: they dominate) + activations: with gradient checkpointing the layer inputs ``h x a
  x layers`` and one layer's recompute ``(3 I + 4 h + (heads + 2 kv_heads) head_dim) x a``, without it that layer
  term x layers (x 2 with ``share_prompts``: a chunk's prompts); ``a`` = 4 for ``qlora`` (fp32 residual stream
  after prepare), else ``b``.

A GPU needs the larger of two phases (sleep level 2: an asleep engine holds only its context): generating = engine
shares + learner static (assumes the learner frees its cache after each update); learning = learner peak + engines
(asleep, or awake with their share without sleep mode). Refused in one line (:class:`PlanError`): (a) two ranks of
one NCCL group on one GPU, or an ipc engine without a learner rank on its GPU; (b) a GPU's need over its memory;
(c) a KV cache under ``min(max_num_seqs, sequences per generate call)`` x ``max_model_len`` tokens."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlvr_temp.config.schema import RunConfig
from rlvr_temp.learner import budget
from rlvr_temp.learner.budget import CUDA_CONTEXT_GIB, DTYPE_BYTES, GIB, ModelDims

ENGINE_NON_TORCH_GIB = 0.5  # cuBLAS / NCCL buffers vLLM's profile charges to its share
CUDA_GRAPHS_GIB = 0.5  # enforce_eager: false
LEARNER_NCCL_GIB = 0.5  # the data-parallel communicator, with more than one rank
VLLM_BATCH_TOKENS = 16384  # vLLM's max_num_batched_tokens for LLM() on >= 70 GiB GPUs (engine/arg_utils.py)
BUNDLED = Path(__file__).resolve().parents[1] / "data" / "bundled" / "model_configs"


class PlanError(ValueError):
    """The recipe cannot run on the given cluster shape; the message is one line."""


@dataclass(frozen=True)
class ModelShape(ModelDims):
    """What the planner reads from a ``config.json``: the learner budget's :class:`ModelDims` and the rest."""

    name: str
    source: str
    tied: bool
    max_positions: int
    qkv_bias: bool

    @classmethod
    def from_config(cls, name: str, source: str, c: dict[str, Any]) -> ModelShape:
        h, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
        return cls(
            hidden=h, layers=int(c["num_hidden_layers"]), heads=heads,
            kv_heads=int(c.get("num_key_value_heads") or heads), head_dim=int(c.get("head_dim") or h // heads),
            intermediate=int(c["intermediate_size"]), vocab=int(c["vocab_size"]), name=name, source=source,
            tied=bool(c.get("tie_word_embeddings", False)), max_positions=int(c.get("max_position_embeddings") or 0),
            qkv_bias=bool(c.get("attention_bias", c.get("model_type") == "qwen2")),
        )  # fmt: skip

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each decoder layer's linear module."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # fmt: skip

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linears().values())

    @property
    def params(self) -> int:
        """Every parameter once (a tied LM head is the embedding)."""
        bias = (self.heads + 2 * self.kv_heads) * self.head_dim if self.qkv_bias else 0
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.linear_params + self.layers * (bias + 2 * self.hidden) + self.hidden + embed

    def lora_params(self, r: int, targets: list[str]) -> int:
        return self.layers * sum(r * (a + b) for t, (a, b) in self.linears().items() if t in targets)

    def kv_bytes_per_token(self, dtype_bytes: int, tp: int = 1) -> int:
        return 2 * self.layers * math.ceil(self.kv_heads / tp) * self.head_dim * dtype_bytes


def model_shape(path: str) -> ModelShape:
    """``model.path``'s shape: its own ``config.json`` (``tiny``: the cached tiny model's), else the bundled config
    named like its last part (rlvr_temp/data/bundled/model_configs)."""
    if path == "tiny":
        from rlvr_temp.data.tiny_model import default_model_dir  # imports torch: only for the tiny model

        local = default_model_dir() / "config.json"
        if not local.is_file():
            raise PlanError(f"model.path tiny: {local} is missing; run `rlvr-temp make-tiny-model` first")
    else:
        local = Path(path).expanduser() / "config.json"
    if local.is_file():
        return ModelShape.from_config(path, str(local), json.loads(local.read_text()))
    name = Path(path.rstrip("/")).name
    known = {p.stem.lower(): p for p in BUNDLED.glob("*.json")}
    if name.lower() not in known:
        bundled = ", ".join(sorted(p.stem for p in known.values()))
        raise PlanError(f"model.path {path}: no config.json there, no bundled config {name!r} (bundled: {bundled})")
    src = known[name.lower()]
    return ModelShape.from_config(src.stem, f"bundled {src.name}", json.loads(src.read_text()))


@dataclass
class Proc:
    label: str  # "engine 3 tp0", "learner 3"
    role: str
    index: int
    gpu: str  # "n0:g3", or "cpu"


@dataclass
class Group:
    name: str
    backend: str
    members: list[tuple[str, str]]  # (process label, GPU)


@dataclass
class GpuUse:
    gpu: str
    procs: list[str]
    generate_gib: float | None = None
    learn_gib: float | None = None
    need_gib: float | None = None


@dataclass
class Memory:
    engine_share_gib: float
    engine_weights_gib: float
    engine_activations_gib: float
    kv_cache_gib: float
    kv_bytes_per_token: int
    kv_tokens: int
    kv_needed_tokens: int
    learner_tokens: int
    learner_static_gib: float
    learner_peak_gib: float


@dataclass
class Plan:
    nodes: int
    gpus_per_node: list[int]
    gpu_mem_gib: float | None
    layout: str
    weight_sync: str
    sleep_level: int
    model: ModelShape | None
    procs: list[Proc]
    groups: list[Group]
    gpus: list[GpuUse]
    memory: Memory | None = None
    sync_bytes: int | None = None
    host_bytes_per_step: int | None = None
    notes: list[str] = field(default_factory=list)


def _actors(cfg: RunConfig) -> tuple[list[float], list[tuple[str, int, int, float]]]:
    """Bundle GPU sizes, and (role, index, bundle, GPUs reserved) per actor in start order (placement.plan)."""
    rc, res = cfg.ray, cfg.resources
    n_eng, ranks = cfg.rollout.num_workers, res.learner_ranks
    if res.layout == "split":
        sizes = [rc.rollout_gpus] * n_eng + [rc.learner_gpus] * ranks
        eng = [("engine", e, e, rc.rollout_gpus) for e in range(n_eng)]
        return sizes, eng + [("learner", r, n_eng + r, rc.learner_gpus) for r in range(ranks)]
    g = res.bundle_gpus if res.bundle_gpus is not None else max(rc.rollout_gpus, rc.learner_gpus)
    members = [[e for e in range(n_eng) if e % ranks == b] for b in range(ranks)]
    shares = [math.floor(g / (1 + len(m)) * 1e4) / 1e4 for m in members]
    eng = [("engine", e, e % ranks, shares[e % ranks]) for e in range(n_eng)]
    return [g] * ranks, eng + [("learner", b, b, shares[b]) for b in range(ranks)]


def _take(cap: list[float], size: float) -> list[int] | None:
    """GPUs (indices into ``cap``) for ``size``: whole free ones, then the fullest GPU with room for the rest."""
    whole, frac = int(size + 1e-9), size - int(size + 1e-9)
    free = [i for i in range(len(cap)) if cap[i] >= 1 - 1e-9][:whole]
    if len(free) < whole:
        return None
    if frac > 1e-9:
        room = sorted((cap[i], i) for i in range(len(cap)) if i not in free and cap[i] >= frac - 1e-9)
        if not room:
            return None
        free.append(room[0][1])
    return free


def _place(cfg: RunConfig, node_gpus: list[int]) -> list[list[tuple[int, int, float]]]:
    """Each bundle's (node, gpu, amount) list on a cluster of ``node_gpus``."""
    sizes, strategy, n = _actors(cfg)[0], cfg.resources.strategy, len(node_gpus)
    caps = [[1.0] * g for g in node_gpus]
    if strategy == "STRICT_PACK" and not any(sum(c) + 1e-9 >= sum(sizes) for c in caps):
        raise PlanError(f"plan: STRICT_PACK needs {sum(sizes):g} GPUs on one node, the largest has {max(node_gpus)}")
    out, used = [], set()
    for b, size in enumerate(sizes):
        order = list(range(n)) if strategy in ("PACK", "STRICT_PACK") else [(b + k) % n for k in range(n)]
        if strategy == "STRICT_SPREAD":
            order = [k for k in order if k not in used]
        for node in order:
            got = _take(caps[node], size)
            if got is not None:
                break
        else:
            where = f"{n} node(s) x {node_gpus[0]} GPUs after {b} bundle(s) (resources.strategy {strategy})"
            raise PlanError(f"plan: bundle {b} ({size:g} GPUs) does not fit on {where}")
        amounts = [1.0] * (len(got) - 1) + [size - len(got) + 1]
        for g, amount in zip(got, amounts):
            caps[node][g] -= amount
        used.add(node)
        out.append([(node, g, amount) for g, amount in zip(got, amounts)])
    return out


def _processes(cfg: RunConfig, node_gpus: list[int]) -> list[Proc]:
    """Every engine TP rank and learner rank with its GPU."""
    bundles, procs, tp = _place(cfg, node_gpus), [], cfg.rollout.engine.tensor_parallel_size
    room = [{(nd, g): amt for nd, g, amt in b} for b in bundles]
    for role, idx, b, share in _actors(cfg)[1]:
        keys = list(room[b])
        got = [] if share == 0 else _take([room[b][k] for k in keys], share)
        if got is None:
            raise PlanError(f"plan: {role} {idx} ({share:g} GPUs) does not fit in bundle {b} (resources.bundle_gpus)")
        for i in got:
            room[b][keys[i]] -= min(1.0, share)
        gpus = [f"n{keys[i][0]}:g{keys[i][1]}" for i in got] or ["cpu"]
        if role == "learner":
            procs.append(Proc(f"learner {idx}", role, idx, gpus[0]))
            continue
        if gpus != ["cpu"] and len(gpus) < tp:
            raise PlanError(f"plan: engine {idx} has tensor_parallel_size {tp}, its slot {len(gpus)} GPU(s)")
        procs += [Proc(f"engine {idx} tp{k}", role, idx, gpus[k % len(gpus)]) for k in range(tp)]
    return procs


def _groups(cfg: RunConfig, procs: list[Proc], backend: str) -> list[Group]:
    learners = [p for p in procs if p.role == "learner"]
    engines = [p for p in procs if p.role == "engine"]
    gpu = any(p.gpu != "cpu" for p in procs)
    ranks = {"learner data-parallel": learners}
    ranks |= {f"engine {e} tensor-parallel": [p for p in engines if p.index == e] for e in range(len(engines))}
    groups = [
        Group(k, "nccl" if gpu else "gloo", [(p.label, p.gpu) for p in v]) for k, v in ranks.items() if len(v) > 1
    ]
    if backend == "ipc":
        for g in dict.fromkeys(p.gpu for p in engines):
            senders = [p for p in learners if p.gpu == g]
            if not senders or g == "cpu":
                e = next(p for p in engines if p.gpu == g)
                raise PlanError(
                    f"plan: weight_sync ipc needs a learner rank on every engine's GPU; {e.label} is on {g} without "
                    "one (rollout.engine.weight_sync=nccl with resources.layout=split)"
                )
            members = [(p.label, g) for p in senders[:1] + [p for p in engines if p.gpu == g]]
            groups.append(Group(f"weight transfer {g}", "ipc", members))
    else:
        members = [(learners[0].label, learners[0].gpu)] + [(p.label, p.gpu) for p in engines]
        groups.append(Group("weight transfer", backend, members))
    for grp in groups:
        if grp.backend != "nccl":
            continue
        seen: dict[str, str] = {}
        for label, g in grp.members:
            if g in seen:
                hint = "colocated engines take weights over ipc: rollout.engine.weight_sync=auto"
                if not grp.name.startswith("weight"):
                    hint = "one rank per GPU: resources.bundle_gpus / ray.*_gpus"
                raise PlanError(
                    f"plan: {grp.name} (nccl) puts {seen[g]} and {label} on GPU {g}; NCCL refuses two ranks of one "
                    f"group on one GPU ({hint})"
                )
            seen[g] = label
    return groups


def _memory(cfg: RunConfig, m: ModelShape, gpu_mem_gib: float, engines_gib: float = 0.0) -> Memory:
    """``engines_gib``: what the engines on the busiest learner GPU hold while it learns."""
    ec, lc, ro = cfg.rollout.engine, cfg.learner, cfg.rollout
    b, tp = DTYPE_BYTES[cfg.model.dtype], ec.tensor_parallel_size
    share = ec.gpu_memory_utilization * gpu_mem_gib
    weights = m.params * b / tp / GIB
    act = max(VLLM_BATCH_TOKENS * (3 * m.intermediate + 4 * m.hidden) * b, ec.max_num_seqs * m.vocab * 12) / GIB
    act += ENGINE_NON_TORCH_GIB + (0.0 if ec.enforce_eager else CUDA_GRAPHS_GIB)
    kv = share - weights - act
    per_tok = m.kv_bytes_per_token(b, tp)
    longest = cfg.model.max_model_len or m.max_positions
    seqs = min(ec.max_num_seqs, -(-ro.prompts_per_step // ro.num_workers) * ro.group_size)
    ranks, lora = cfg.resources.learner_ranks, m.lora_params(lc.lora_r, lc.lora_targets)
    static = budget.learner_static_bytes(lora, m.linear_params, m.params, lc, cfg.model.dtype, ranks)
    static = static / GIB + (LEARNER_NCCL_GIB if ranks > 1 else 0.0)
    free = budget.Device("cuda", free_bytes=max(0.0, gpu_mem_gib - static - engines_gib) * GIB)
    tokens = budget.resolve_micro_batch_tokens(m, lc, cfg.model.dtype, free) or lc.micro_batch_size * longest
    peak = static + tokens * budget.activation_bytes_per_token(m, lc, cfg.model.dtype) / GIB
    kv_tokens = max(0, int(kv * GIB // per_tok))
    return Memory(share, weights, act, kv, per_tok, kv_tokens, seqs * longest, tokens, static, peak)


def plan_cluster(cfg: RunConfig, node_gpus: list[int], gpu_mem_gib: float | None = None) -> Plan:
    """:func:`plan_run` for nodes of ``node_gpus`` GPUs each; without ``gpu_mem_gib`` only the structure (placement,
    groups) is planned and checked, and no model config is read."""
    if not cfg.uses_gpus():
        raise PlanError("plan: the recipe reserves no GPU (ray.rollout_gpus, ray.learner_gpus, resources.bundle_gpus)")
    if not node_gpus or min(node_gpus) < 1:
        raise PlanError(f"plan: a cluster shape needs nodes with at least one GPU each, got {node_gpus}")
    backend, sleep = cfg.weight_sync_backend(), 2 if cfg.engines_sleep() else 0
    procs = _processes(cfg, node_gpus)
    groups = _groups(cfg, procs, backend)
    gpus = {f"n{n}:g{g}": GpuUse(f"n{n}:g{g}", []) for n, k in enumerate(node_gpus) for g in range(k)}
    for p in [p for p in procs if p.gpu in gpus]:
        gpus[p.gpu].procs.append(p.label)
    plan = Plan(len(node_gpus), list(node_gpus), gpu_mem_gib, cfg.resources.layout, backend, sleep, None, procs,
                groups, list(gpus.values()))  # fmt: skip
    if backend == "ipc" and cfg.resources.learner_ranks > 1:
        plan.notes.append("ipc: each learner rank serves its own GPU's engines; handles all-gathered over its group")
    if gpu_mem_gib is None:
        return plan
    m = plan.model = model_shape(cfg.model.path)
    learning = [sum(q.role == "engine" for q in procs if q.gpu == p.gpu) for p in procs if p.role == "learner"]
    engines = max(budget.engines_learning_bytes(cfg, gpu_mem_gib * GIB, n) for n in learning) / GIB if learning else 0.0
    mem = plan.memory = _memory(cfg, m, gpu_mem_gib, engines)
    plan.sync_bytes = m.params * DTYPE_BYTES[cfg.model.dtype]
    plan.host_bytes_per_step = 0 if backend in ("ipc", "nccl") else plan.sync_bytes * cfg.rollout.num_workers
    host = "none" + (" (sleep level 2 discards weights and KV cache)" if sleep else "")
    plan.notes.append(f"host copies per step: {host if plan.host_bytes_per_step == 0 else backend + ' via the host'}")
    engine_awake, engine_asleep = mem.engine_share_gib + CUDA_CONTEXT_GIB, CUDA_CONTEXT_GIB
    for use in plan.gpus:
        n_eng = sum(1 for p in procs if p.gpu == use.gpu and p.role == "engine")
        n_learn = sum(1 for p in procs if p.gpu == use.gpu and p.role == "learner")
        use.generate_gib = n_eng * engine_awake + n_learn * mem.learner_static_gib
        use.learn_gib = n_learn * mem.learner_peak_gib + n_eng * (engine_asleep if sleep else engine_awake)
        use.need_gib = max(use.generate_gib, use.learn_gib)
        if use.need_gib > gpu_mem_gib:
            raise PlanError(
                f"plan: GPU {use.gpu} needs ~{use.need_gib:.1f} GiB (generating {use.generate_gib:.1f}, learning "
                f"{use.learn_gib:.1f}: {', '.join(use.procs)}), it has {gpu_mem_gib:g} GiB (lower "
                "rollout.engine.gpu_memory_utilization or learner.micro_batch_tokens)"
            )
    if mem.kv_tokens < mem.kv_needed_tokens:
        longest, fixed = cfg.model.max_model_len or m.max_positions, mem.engine_weights_gib + mem.engine_activations_gib
        util = math.ceil((mem.kv_needed_tokens * mem.kv_bytes_per_token / GIB + fixed) / gpu_mem_gib * 100) / 100
        seqs = int((0.9 * gpu_mem_gib - fixed) * GIB // mem.kv_bytes_per_token // longest)
        fix = f"raise rollout.engine.gpu_memory_utilization to >= {util:.2f}" if util <= 0.9 else (
            f"lower rollout.engine.max_num_seqs to <= {seqs} with gpu_memory_utilization 0.9")  # fmt: skip
        raise PlanError(
            f"plan: an engine's KV cache holds ~{mem.kv_tokens:,} tokens ({max(0.0, mem.kv_cache_gib):.1f} GiB), its "
            f"{mem.kv_needed_tokens // longest} sequences x {longest:,} tokens need {mem.kv_needed_tokens:,} ({fix}, "
            "or lower model.max_model_len)"
        )
    return plan


def plan_run(cfg: RunConfig, nodes: int, gpus_per_node: int, gpu_mem_gib: float | None) -> Plan:
    """The plan of ``cfg`` on ``nodes`` x ``gpus_per_node`` GPUs of ``gpu_mem_gib`` GiB; raises :class:`PlanError`."""
    if nodes < 1 or gpus_per_node < 1:
        raise PlanError(f"plan: --nodes and --gpus-per-node must be >= 1, got {nodes} x {gpus_per_node}")
    return plan_cluster(cfg, [gpus_per_node] * nodes, gpu_mem_gib)


def check_ray_cluster(cfg: RunConfig) -> Plan | None:
    """`train`'s check before any actor starts: the plan's structure (placement, NCCL groups, ipc pairs) on the joined
    cluster's GPU nodes; no memory check (Ray does not report GPU memory). None on CPU (placement says what lacks)."""
    if not cfg.uses_gpus():
        return None
    import ray  # only the trainer calls this, after init_ray

    node_gpus = [int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]
    node_gpus = [g for g in node_gpus if g > 0]
    return plan_cluster(cfg, node_gpus) if node_gpus else None
