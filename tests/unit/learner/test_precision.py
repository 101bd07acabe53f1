"""The learner's precision (rlvr_temp.learner.precision): the decision for CUDA (bf16 compute under autocast, a bf16
base, fp32 LoRA / master weights, TF32 on) and for the CPU (as loaded: no autocast, no recast), and its application
to a built policy, proven on the CPU with the tiny model by forcing the cast path (autocast on the CPU device)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from rlvr_temp.batch import TrainBatch, collate
from rlvr_temp.config.schema import RunConfig
from rlvr_temp.learner.logprobs import policy_logprobs
from rlvr_temp.learner.policy import load_policy
from rlvr_temp.temperature import make_strategy
from tests.helpers import policy_settings


def _micro_batch(device: torch.device):
    g = torch.Generator().manual_seed(0)
    lengths = [5, 9, 3]
    batch = TrainBatch(
        prompt_ids=[torch.randint(5, 100, (6,), generator=g).tolist() for _ in lengths],
        response_ids=[torch.randint(5, 100, (k,), generator=g).tolist() for k in lengths],
        token_temperatures=[[0.9] * k for k in lengths],
        rollout_logprobs=[[0.0] * k for k in lengths],
        token_entropies=[[0.0] * k for k in lengths],
        response_temperatures=[1.0] * len(lengths),
        advantages=[1.0, -1.0, 0.5],
    )
    return collate(batch, list(range(len(lengths))), 0, device)


@pytest.mark.gpu_contract
def test_gpu_qlora_computes_in_bf16_with_fp32_lora():
    """CUDA, bf16: the forward under bf16 autocast, the frozen base (what k-bit preparation made fp32) back in
    bf16, the trainable LoRA weights fp32, TF32 on. The CPU keeps today's behaviour: nothing recast, no autocast."""
    from rlvr_temp.learner.precision import Precision, compute_precision

    gpu = compute_precision(torch.device("cuda", 0), "qlora", torch.bfloat16)
    assert gpu == Precision("cuda", autocast=torch.bfloat16, frozen=torch.bfloat16, trainable=torch.float32, tf32=True)
    assert compute_precision("cuda", "lora", torch.bfloat16) == gpu
    # an fp32 run computes in fp32 (TF32 matmuls) and recasts nothing
    assert compute_precision("cuda", "qlora", torch.float32) == Precision("cuda", None, None, torch.float32, True)
    cpu = compute_precision(torch.device("cpu"), "qlora", torch.bfloat16)
    assert cpu == Precision("cpu", autocast=None, frozen=None, trainable=torch.float32, tf32=False)


@pytest.mark.gpu_contract
def test_gpu_full_mode_keeps_fp32_masters_and_computes_in_bf16():
    """``full`` on one rank as FSDP2 runs it on several: fp32 master weights, bf16 compute on CUDA; fp32 on the CPU."""
    from rlvr_temp.learner.precision import compute_precision

    gpu = compute_precision("cuda", "full", torch.bfloat16)
    assert (gpu.trainable, gpu.autocast, gpu.tf32) == (torch.float32, torch.bfloat16, True)
    cpu = compute_precision("cpu", "full", torch.bfloat16)
    assert (cpu.trainable, cpu.autocast, cpu.frozen, cpu.tf32) == (torch.float32, None, None, False)


@pytest.mark.gpu_contract
def test_gpu_precision_recasts_the_kbit_base_to_bf16_keeps_lora_fp32_and_logprobs_fp32(tiny_model_path: str):
    """The CUDA decision applied to a tiny NF4 + LoRA policy on the CPU (autocast on the CPU device, TF32 left
    alone): every frozen float parameter (embeddings = tied LM head, norms) bf16, every LoRA weight fp32 and
    trainable; the forward's matmuls (logits) bf16, the log-probs computed from them in fp32, close to the fp32
    policy's, and fp32 LoRA gradients."""
    from rlvr_temp.learner.precision import apply_precision, compute_precision

    device = torch.device("cpu")
    model_cfg = SimpleNamespace(dtype="bfloat16", trust_remote_code=False)
    policy = load_policy(tiny_model_path, model_cfg, policy_settings("qlora"), device)
    # before: peft's k-bit preparation left the non-4-bit base in fp32
    frozen = {n: p for n, p in policy.named_parameters() if p.is_floating_point() and not p.requires_grad}
    assert frozen and all(p.dtype == torch.float32 for p in frozen.values())
    mb = _micro_batch(device)
    strategy = make_strategy(RunConfig.model_validate({}).temperature)
    ref, _, _ = policy_logprobs(policy, mb, 1.0, strategy, None)

    cuda = compute_precision("cuda", "qlora", torch.bfloat16)
    apply_precision(policy, dataclasses.replace(cuda, device_type="cpu", tf32=False))
    for n, p in policy.named_parameters():
        if "lora_" in n:
            assert p.requires_grad and p.dtype == torch.float32, n
        elif p.is_floating_point():
            assert not p.requires_grad and p.dtype == torch.bfloat16, n
    assert policy.get_input_embeddings().weight.dtype == torch.bfloat16

    seen: list[torch.dtype] = []
    head = policy.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    logp, _, _ = policy_logprobs(policy, mb, 1.0, strategy, None)
    head.remove()
    assert seen == [torch.bfloat16]  # the LM head ran in bf16
    assert logp.dtype == torch.float32
    valid = mb.mask.bool()
    assert (logp - ref)[valid].abs().max() < 0.1, (logp - ref)[valid].abs().max()
    (logp * mb.mask).sum().backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if "lora_" in n}
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads.values())
    # peft starts lora_B at zero, so only B has a gradient after one step's forward
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


@pytest.mark.gpu_contract
@pytest.mark.parametrize(("mode", "checkpointing"), [("qlora", True), ("full", False)])
def test_learner_trains_under_the_gpu_precision_forced_onto_the_cpu(
    tiny_model_path: str, monkeypatch: pytest.MonkeyPatch, mode: str, checkpointing: bool
):
    """The Learner applies its precision: with the CUDA decision forced onto the CPU (bf16 autocast there) a
    ``bfloat16`` run keeps fp32 trainable weights, computes in bf16 (gradient checkpointing recomputes under the
    same autocast), and its update moves the weights; fp32 log-probs for the old-policy pass."""
    from rlvr_temp.learner import learner as learner_module
    from rlvr_temp.learner.precision import autocast_dtype, compute_precision

    def forced(device, mode, dtype):
        return dataclasses.replace(compute_precision("cuda", mode, dtype), device_type="cpu", tf32=False)

    monkeypatch.setattr(learner_module, "compute_precision", forced)
    cfg = RunConfig.model_validate(
        {
            "model": {"path": tiny_model_path, "dtype": "bfloat16"},
            "learner": {
                "mode": mode,
                "mini_batch_size": 3,
                "micro_batch_size": 2,
                "lr": 1e-3,
                "warmup_steps": 0,
                "gradient_checkpointing": checkpointing,
            },
            "rollout": {"max_response_len": 16},
        }
    )
    learner = learner_module.Learner(tiny_model_path, cfg, num_threads=2)
    assert autocast_dtype(learner.model) == torch.bfloat16
    trainable = [p for p in learner.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    frozen = [p for p in learner.model.parameters() if p.is_floating_point() and not p.requires_grad]
    assert all(p.dtype == torch.bfloat16 for p in frozen) and (mode == "full") == (not frozen)
    batch = TrainBatch(
        prompt_ids=[[7, 8, 9, 10]] * 3,
        response_ids=[[11, 12, 13], [14, 15], [16, 17, 18, 19]],
        token_temperatures=[[1.0] * 3, [1.0] * 2, [1.0] * 4],
        rollout_logprobs=[[0.0] * 3, [0.0] * 2, [0.0] * 4],
        token_entropies=[[0.0] * 3, [0.0] * 2, [0.0] * 4],
        response_temperatures=[1.0] * 3,
        advantages=[1.0, -1.0, 0.5],
    )
    old = learner._logprobs(batch, 1.0)
    assert all(t.dtype == torch.float32 for t in old)
    before = learner.trainable_state()
    m = learner.train_step(batch, 1.0)
    assert m["actor/grad_norm"] > 0
    after = learner.trainable_state()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert {v.dtype for v in after.values()} == {torch.float32}
