"""Shared prompts (``learner.share_prompts``): running each prompt once gives the plain forward's gradient and
log-probs, in every policy mode, with micro-batches by count and by token budget, and the learner falls back to
the plain forward where sharing does not apply."""

from __future__ import annotations

import pytest
import torch

from rlvr_temp.batch import TrainBatch
from rlvr_temp.config.schema import RunConfig
from rlvr_temp.learner.learner import Learner
from rlvr_temp.learner.prompt_share import prompt_chunks

# micro-batches by count (micro_batch_tokens null, not the default auto budget) unless a test sets a budget
COUNTED = {"mini_batch_size": 12, "micro_batch_size": 5, "micro_batch_tokens": None}


def _config(tiny_model_path: str, mode: str, **learner: object) -> RunConfig:
    return RunConfig.model_validate(
        {
            "model": {"path": tiny_model_path},
            "learner": {"mode": mode, **COUNTED, "warmup_steps": 0, **learner},
            "rollout": {"max_response_len": 24},
            "algorithm": {"entropy_coef": 0.01},  # the entropy's gradient goes through the shared prompts too
        }
    )


def _grouped_batch(seed: int = 0) -> TrainBatch:
    """3 prompts (5, 9 and 7 tokens) x 4 responses of 1..24 tokens (a 1-token response has no response input)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, 100, (k,), generator=g).tolist() for k in (5, 9, 7)]
    lengths = [1, 24, 7, 11, 5, 19, 9, 14, 3, 16, 2, 20]
    responses = [torch.randint(5, 100, (k,), generator=g).tolist() for k in lengths]
    return TrainBatch(
        prompt_ids=[prompts[i // 4] for i in range(12)],
        response_ids=responses,
        token_temperatures=[torch.where(torch.rand(k, generator=g) < 0.3, 1.3, 0.9).tolist() for k in lengths],
        rollout_logprobs=[[0.0] * k for k in lengths],
        token_entropies=[torch.rand(k, generator=g).tolist() for k in lengths],
        response_temperatures=[1.0] * 12,
        advantages=torch.randn(12, generator=g).tolist(),
    )


def _grad_and_logprobs(learner: Learner, batch: TrainBatch, **lc: object) -> tuple[torch.Tensor, list[torch.Tensor]]:
    learner.lc = learner.lc.model_copy(update=lc)
    learner.optimizer.zero_grad(set_to_none=True)
    record: list[torch.Tensor] = [torch.empty(0)] * len(batch)
    # permuted, as train_step's shuffled mini-batches are: responses to one prompt are not adjacent
    learner.accumulate(batch, [3, 7, 0, 11, 5, 1, 9, 2, 6, 10, 4, 8], {}, base_t=1.0, record=record)
    grad = torch.cat([p.grad.flatten() for p in learner._trainable() if p.grad is not None])
    return grad, record


@pytest.mark.parametrize("mode", ["full", "lora", "qlora"])
def test_shared_prompts_give_the_plain_gradient(tiny_model_path: str, mode: str):
    learner = Learner(tiny_model_path, _config(tiny_model_path, mode, lr=1e-3), num_threads=2)
    learner.model.train()
    batch = _grouped_batch()
    plain, plain_lp = _grad_and_logprobs(learner, batch, share_prompts=False)
    assert not learner._shares_prompts()
    norm = plain.norm()
    assert norm > 0
    for budget in (None, 40):  # 5 responses per micro-batch, or micro-batches of <= 40 response tokens
        shared, shared_lp = _grad_and_logprobs(learner, batch, share_prompts=True, micro_batch_tokens=budget)
        assert learner._shares_prompts()
        assert (shared - plain).abs().max() <= 1e-5 * norm, (mode, budget)
        for a, b in zip(shared_lp, plain_lp):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5), (mode, budget)


def test_prompt_chunks_keep_groups_together_within_the_budget():
    batch = _grouped_batch()
    order = [3, 7, 0, 11, 5, 1, 9, 2, 6, 10, 4, 8]
    assert prompt_chunks(batch, order, 100) == [[3, 0, 1, 2, 7, 5, 6, 4, 11, 9, 10, 8]]
    chunks = prompt_chunks(batch, order, 18)  # two prompts padded to 9 tokens fit, three do not
    assert chunks == [[3, 0, 1, 2, 7, 5, 6, 4], [11, 9, 10, 8]]
    assert prompt_chunks(batch, order, 4) == [[3, 0, 1, 2], [7, 5, 6, 4], [11, 9, 10, 8]]  # over budget: alone


def test_plain_forward_where_sharing_does_not_apply(tiny_model_path: str):
    learner = Learner(tiny_model_path, _config(tiny_model_path, "full", gradient_checkpointing=True), num_threads=1)
    assert learner.lc.share_prompts and not learner._shares_prompts()
