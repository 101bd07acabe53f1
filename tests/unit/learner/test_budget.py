"""``learner.micro_batch_tokens: auto`` (rlvr_temp/learner/budget.py): the budget for a few model shapes and
devices (CPU threads, a fake CUDA free-memory figure), the config's values, a learner with the defaults packing
its micro-batches by that budget with the micro_batch_size gradient, and the GPU planner using the same rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlvr_temp.batch import TrainBatch
from rlvr_temp.config.recipe import ConfigError
from rlvr_temp.config.schema import RunConfig, load_config
from rlvr_temp.config.training import LearnerConfig
from rlvr_temp.learner import budget
from rlvr_temp.learner.budget import (
    GIB,
    Device,
    ModelDims,
    activation_bytes_per_token,
    auto_micro_batch_tokens,
    resolve_micro_batch_tokens,
)

QWEN_1_5B = ModelDims(hidden=1536, layers=28, heads=12, kv_heads=2, head_dim=128, intermediate=8960, vocab=151936)
TRL_25M = ModelDims(hidden=512, layers=8, heads=8, kv_heads=2, head_dim=64, intermediate=1626, vocab=128)
TINY = ModelDims(hidden=128, layers=4, heads=4, kv_heads=4, head_dim=32, intermediate=384, vocab=128)


@pytest.mark.parametrize("threads, tokens", [(1, 512), (2, 1024), (16, 8192), (128, 32768)])
@pytest.mark.parametrize("dims", [TRL_25M, TINY, QWEN_1_5B])
def test_cpu_budget_is_tokens_per_thread(dims: ModelDims, threads: int, tokens: int):
    for mode in ("full", "qlora"):
        lc = LearnerConfig(mode=mode)
        assert auto_micro_batch_tokens(dims, lc, "float32", Device("cpu", threads=threads)) == tokens


def test_cuda_budget_fills_80_percent_of_the_free_memory():
    lc = LearnerConfig(mode="qlora", gradient_checkpointing=True)
    per_token = activation_bytes_per_token(QWEN_1_5B, lc, "bfloat16")
    # fp32 logits x 3 + fp32 layer inputs (qlora) + one layer's recompute
    assert per_token == 3 * 151936 * 4 + 1536 * 4 * 28 + (3 * 8960 + 4 * 1536 + 16 * 128) * 4 == 2_135_552
    assert auto_micro_batch_tokens(QWEN_1_5B, lc, "bfloat16", Device("cuda", free_bytes=60 * GIB)) == 24064
    assert 24064 * per_token <= 0.8 * 60 * GIB < (24064 + 256) * per_token
    # floor and ceiling
    assert auto_micro_batch_tokens(QWEN_1_5B, lc, "bfloat16", Device("cuda", free_bytes=0.1 * GIB)) == 256
    assert auto_micro_batch_tokens(TINY, lc, "float32", Device("cuda", free_bytes=60 * GIB)) == 32768


def test_per_token_bytes_follow_mode_dtype_and_shared_prompts():
    full = LearnerConfig(mode="full", share_prompts=False)
    layer_bf16 = (3 * 1626 + 4 * 512 + 12 * 64) * 2
    assert activation_bytes_per_token(TRL_25M, full, "bfloat16") == 3 * 128 * 4 + 8 * layer_bf16
    assert activation_bytes_per_token(TRL_25M, full, "float32") == 3 * 128 * 4 + 8 * layer_bf16 * 2
    shared = full.model_copy(update={"share_prompts": True})  # a chunk's prompts keep their activations too
    assert activation_bytes_per_token(TRL_25M, shared, "bfloat16") == 3 * 128 * 4 + 2 * 8 * layer_bf16
    qlora = LearnerConfig(mode="qlora", share_prompts=False)  # fp32 residual stream
    assert activation_bytes_per_token(TRL_25M, qlora, "bfloat16") == 3 * 128 * 4 + 8 * layer_bf16 * 2


@pytest.mark.parametrize("value, resolved", [("auto", 1024), (4096, 4096), (None, None)])
def test_resolve_keeps_a_number_and_null(value: object, resolved: int | None):
    lc = LearnerConfig(micro_batch_tokens=value)
    assert resolve_micro_batch_tokens(TINY, lc, "float32", Device("cpu", threads=2)) == resolved


def test_config_values(tmp_path):
    assert LearnerConfig().micro_batch_tokens == "auto"
    assert load_config(None, ["learner.micro_batch_tokens=null"]).learner.micro_batch_tokens is None
    assert load_config(None, ["learner.micro_batch_tokens=2048"]).learner.micro_batch_tokens == 2048
    for bad in ("fast", "0", "true", "1.5"):
        with pytest.raises(ConfigError) as err:
            load_config(None, [f"learner.micro_batch_tokens={bad}"])
        msg = str(err.value)
        assert "\n" not in msg and "learner.micro_batch_tokens" in msg and "expected auto, a token count" in msg


def _batch() -> TrainBatch:
    """2 prompts x 6 responses of 2..24 tokens."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 100, (k,), generator=g).tolist() for k in (6, 9)]
    lengths = [3, 24, 7, 11, 5, 19, 9, 14, 2, 16, 4, 20]
    return TrainBatch(
        prompt_ids=[prompts[i // 6] for i in range(12)],
        response_ids=[torch.randint(5, 100, (k,), generator=g).tolist() for k in lengths],
        token_temperatures=[[1.0] * k for k in lengths],
        rollout_logprobs=[[0.0] * k for k in lengths],
        token_entropies=[[0.0] * k for k in lengths],
        response_temperatures=[1.0] * 12,
        advantages=torch.randn(12, generator=g).tolist(),
    )


@pytest.mark.parametrize("share", [True, False])
def test_a_learner_with_defaults_packs_by_the_auto_budget(tiny_model_path: str, monkeypatch, share: bool):
    from rlvr_temp.learner import learner as learner_module
    from rlvr_temp.learner.learner import Learner

    cfg = RunConfig.model_validate(
        {"model": {"path": tiny_model_path}, "learner": {"mode": "full", "warmup_steps": 0, "share_prompts": share}}
    )
    learner = Learner(tiny_model_path, cfg, num_threads=2)
    assert cfg.learner.micro_batch_tokens == "auto" and learner.auto_tokens == 512 * torch.get_num_threads()
    formed: list[tuple[int, list[list[int]]]] = []

    def recording(batch, index, max_tokens, with_prompts=True):
        chunks = budget_batches(batch, index, max_tokens, with_prompts)
        formed.append((max_tokens, chunks))
        return chunks

    budget_batches = learner_module.token_budget_batches
    monkeypatch.setattr(learner_module, "token_budget_batches", recording)
    batch, mini = _batch(), [3, 7, 0, 11, 5, 1, 9, 2, 6, 10, 4, 8]

    def grad(**lc: object) -> torch.Tensor:
        learner.lc = cfg.learner.model_copy(update=lc)
        learner.optimizer.zero_grad(set_to_none=True)
        learner.accumulate(batch, mini, {}, base_t=1.0)
        return torch.cat([p.grad.flatten() for p in learner._trainable() if p.grad is not None])

    learner.model.train()
    by_count = grad(micro_batch_tokens=None, micro_batch_size=4)
    assert formed == []  # micro_batch_size batches: no token budget
    auto = grad()
    assert [t for t, _ in formed] == [learner.auto_tokens] * len(formed) and formed
    assert sorted(i for _, chunks in formed for c in chunks for i in c) == sorted(mini)
    formed.clear()
    learner.auto_tokens = 40  # a smaller device's budget: several micro-batches, each within it
    small = grad()
    chunks = [c for _, cs in formed for c in cs]
    assert len(chunks) > 2
    for c in chunks:
        prompt = 0 if share else max(len(batch.prompt_ids[i]) for i in c)
        assert len(c) == 1 or len(c) * (prompt + max(len(batch.response_ids[i]) for i in c)) <= 40
    norm = by_count.norm()
    assert norm > 0
    for g in (auto, small):  # the same gradient up to float summation order
        assert (g - by_count).abs().max() <= 1e-6 * norm
    learner.lc = cfg.learner
    metrics = learner.train_step(batch)
    assert metrics["actor/micro_batch_tokens"] == 40


def test_the_planner_uses_the_learners_rule():
    from rlvr_temp.driver.plan import plan_run

    recipe = Path(__file__).resolve().parents[3] / "recipes/gpu/qwen_math_token_1gpu.yaml"
    planned = plan_run(load_config(recipe, []), 1, 1, 79.6).memory
    assert planned.learner_tokens == 16384  # the recipe's own number
    auto = load_config(recipe, ["learner.micro_batch_tokens=auto"])
    plan = plan_run(auto, 1, 1, 79.6)
    mem, lc = plan.memory, auto.learner
    m = plan.model
    # the learner's GPU less its static memory and the asleep engine's CUDA context
    free = (79.6 - mem.learner_static_gib - budget.CUDA_CONTEXT_GIB) * GIB
    assert mem.learner_tokens == auto_micro_batch_tokens(m, lc, auto.model.dtype, Device("cuda", free_bytes=free))
    assert 16384 < mem.learner_tokens <= 32768 and max(g.need_gib for g in plan.gpus) <= 79.6
    off = plan_run(load_config(recipe, ["learner.micro_batch_tokens=null"]), 1, 1, 79.6).memory
    assert off.learner_tokens == auto.learner.micro_batch_size * auto.model.max_model_len


def test_the_learner_sizes_a_cuda_budget_from_what_it_will_hold(monkeypatch):
    """A fake 80 GiB GPU whose learner process holds 10 GiB of weights after loading: the budget fills 80% of the
    rest less its gradients and AdamW state (3 x the trainable bytes), a CUDA context and its colocated engines."""
    from types import SimpleNamespace

    from rlvr_temp.learner.budget import engines_learning_bytes, learner_micro_batch_tokens

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 10 * GIB)
    hf = SimpleNamespace(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         head_dim=128, intermediate_size=8960, vocab_size=151936)  # fmt: skip
    tree = {"learner": {"mode": "qlora", "gradient_checkpointing": True}, "rollout": {"num_workers": 2}}
    cfg = RunConfig.model_validate(tree)
    engines = engines_learning_bytes(cfg, 80 * GIB, 2)  # both engines in the one learner's bundle
    free = 80 * GIB - 10 * GIB - 3 * GIB - 0.5 * GIB - engines
    tokens = learner_micro_batch_tokens(cfg, SimpleNamespace(config=hf), GIB, torch.device("cuda"))
    assert tokens == auto_micro_batch_tokens(QWEN_1_5B, cfg.learner, cfg.model.dtype, Device("cuda", free_bytes=free))
    assert 256 <= tokens <= 32768
    explicit = cfg.model_copy(update={"learner": cfg.learner.model_copy(update={"micro_batch_tokens": 3000})})
    assert learner_micro_batch_tokens(explicit, SimpleNamespace(config=hf), GIB, torch.device("cuda")) == 3000
