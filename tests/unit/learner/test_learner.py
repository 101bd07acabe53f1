"""The learner in-process on the tiny model (no Ray, no vLLM): exact gradient accumulation for every loss and
aggregation, Dr.GRPO's constant normaliser, per-micro-batch padding, and one real update."""

from __future__ import annotations

import pytest
import torch

from rlvr_temp.batch import TrainBatch, collate
from rlvr_temp.config.schema import RunConfig
from rlvr_temp.learner.learner import Learner

AGGS = (None, "token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def _config(tiny_model_path: str, **sections: dict) -> RunConfig:
    base = {
        "model": {"path": tiny_model_path},
        "learner": {"mode": "full", "mini_batch_size": 8, "micro_batch_size": 8, "lr": 1e-3, "warmup_steps": 0},
        "rollout": {"max_response_len": 24},
    }
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return RunConfig.model_validate(base)


def _batch(n: int = 8, seed: int = 0) -> TrainBatch:
    """Responses of very different lengths (3..24 tokens) after prompts of 4..9 tokens, random advantages."""
    g = torch.Generator().manual_seed(seed)
    lengths = [3, 24, 7, 11, 5, 19, 9, 14][:n]
    prompts = [torch.randint(5, 100, (4 + i % 6,), generator=g).tolist() for i in range(n)]
    responses = [torch.randint(5, 100, (k,), generator=g).tolist() for k in lengths]
    temps = [torch.where(torch.rand(k, generator=g) < 0.3, 1.3, 0.9).tolist() for k in lengths]
    return TrainBatch(
        prompt_ids=prompts,
        response_ids=responses,
        token_temperatures=temps,
        rollout_logprobs=[[0.0] * k for k in lengths],
        token_entropies=[torch.rand(k, generator=g).tolist() for k in lengths],
        response_temperatures=[1.0] * n,
        advantages=torch.randn(n, generator=g).tolist(),
    )


@pytest.fixture(scope="module")
def learner(tiny_model_path: str) -> Learner:
    return Learner(tiny_model_path, _config(tiny_model_path), num_threads=2)


def _grad(learner: Learner, batch: TrainBatch, micro: int, extra: dict, budget: int | None = None) -> torch.Tensor:
    learner.lc = learner.lc.model_copy(update={"micro_batch_size": micro, "micro_batch_tokens": budget})
    learner.optimizer.zero_grad(set_to_none=True)
    learner.accumulate(batch, list(range(len(batch))), extra, base_t=1.0)
    return torch.cat([p.grad.flatten() for p in learner._trainable() if p.grad is not None])


@pytest.mark.parametrize("loss", ["grpo", "dapo", "drgrpo"])
@pytest.mark.parametrize("agg", AGGS)
def test_gradient_accumulation_is_exact(learner: Learner, loss: str, agg: str | None):
    """One mini-batch split into 1, 2 or 4 micro-batches (of different padded lengths) gives the same gradient."""
    learner.ac = learner.ac.model_copy(update={"loss": loss, "loss_agg": agg})
    from rlvr_temp.losses import get_policy_loss

    learner.loss_fn = get_policy_loss(loss)
    batch = _batch()
    learner.model.eval()
    current = learner._logprobs(batch, 1.0)
    # old log-probs off the current ones, so that ratios differ from 1 and some tokens are clipped
    g = torch.Generator().manual_seed(1)
    extra = {"old": [c + 0.3 * torch.randn(c.shape, generator=g) for c in current]}
    grads = {m: _grad(learner, batch, m, extra) for m in (8, 4, 2)}
    grads["tokens"] = _grad(learner, batch, 8, extra, budget=60)  # length-sorted, packed by padded tokens
    norm = grads[8].norm()
    assert norm > 0
    for m in (4, 2, "tokens"):
        assert (grads[m] - grads[8]).abs().max() <= 1e-6 * norm, (loss, agg, m)


def test_drgrpo_normaliser_is_the_max_response_length(learner: Learner):
    """Dr.GRPO divides each response's token sum by rollout.max_response_len, not by a batch's padded length."""
    from rlvr_temp import losses

    v = torch.tensor([[1.0, 2.0, 0.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert losses.aggregate(v, m, "seq-mean-token-sum-norm", norm_len=24).item() == pytest.approx((3 / 24 + 4 / 24) / 2)
    assert learner.cfg.rollout.max_response_len == 24


def test_token_budget_micro_batches_pack_by_length():
    from rlvr_temp.batch import token_budget_batches

    batch = _batch()
    chunks = token_budget_batches(batch, range(8), max_tokens=60)
    assert sorted(i for c in chunks for i in c) == list(range(8))
    for c in chunks:
        width = max(len(batch.prompt_ids[i]) for i in c) + max(len(batch.response_ids[i]) for i in c)
        assert len(c) * width <= 60 or len(c) == 1
    assert len(chunks) > 1 and chunks[0][0] == 0  # the shortest response (3 tokens) comes first


def test_token_budget_cuts_where_padding_costs_more_than_a_micro_batch():
    """Eight 10-token responses and one of 100 fit one 1,000-token micro-batch (900 padded tokens), but two
    micro-batches pad only 180: the cut is taken (a greedy fill would not), the shortest first."""
    from rlvr_temp.batch import MICRO_BATCH_COST_TOKENS, token_budget_batches

    lengths = [10] * 8 + [100]
    batch = TrainBatch(
        prompt_ids=[[1, 2]] * 9,
        response_ids=[[5] * k for k in lengths],
        token_temperatures=[[1.0] * k for k in lengths],
        rollout_logprobs=[[0.0] * k for k in lengths],
        token_entropies=[[0.0] * k for k in lengths],
        response_temperatures=[1.0] * 9,
        advantages=[0.0] * 9,
    )
    assert MICRO_BATCH_COST_TOKENS < 900 - 180
    order = [8, 3, 0, 5, 1, 7, 2, 6, 4]
    assert token_budget_batches(batch, order, 1000, with_prompts=False) == [list(range(8)), [8]]
    assert token_budget_batches(batch, order, 90, with_prompts=False) == [list(range(8)), [8]]  # 100 > 90: alone
    # with the prompts counted, the widths grow by 2 tokens and the cut is the same
    assert token_budget_batches(batch, order, 1000) == [list(range(8)), [8]]


def test_collate_pads_each_micro_batch_to_its_own_length():
    batch = _batch()
    mb = collate(batch, [0, 2], pad_id=0)  # responses of 3 and 7 tokens, prompts of 4 and 6
    assert mb.response_ids.shape == (2, 7) and mb.prompt_len == 6
    assert mb.mask.sum(-1).tolist() == [3.0, 7.0]
    assert mb.input_ids[0, :2].tolist() == [0, 0]  # prompts are left-padded
    assert mb.input_ids[0, 2:6].tolist() == batch.prompt_ids[0]
    assert mb.response_ids[0, :3].tolist() == batch.response_ids[0]
    # positions follow the attention mask, as vLLM numbers them
    assert mb.position_ids[0, 2:9].tolist() == list(range(7))
    assert mb.temperatures[0, 3:].tolist() == [1.0] * 4  # padding at temperature 1
    assert mb.temperatures[1].tolist() == pytest.approx(batch.token_temperatures[2])
    with pytest.raises(ValueError, match="advantages"):
        TrainBatch(**{**batch.__dict__, "advantages": [0.0]})


def _reference_logits(model_path: str, batch: TrainBatch) -> list[torch.Tensor]:
    """Each response's next-token logits ``[L, V]`` from a plain transformers forward of its prompt + response
    alone (no padding, no batching, none of the learner's code)."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for p, r in zip(batch.prompt_ids, batch.response_ids):
            logits = model(torch.tensor([p + r])).logits[0].float()
            out.append(logits[len(p) - 1 : len(p) + len(r) - 1])
    return out


def _logprobs_at(logits: torch.Tensor, tokens: list[int], temps: list[float]) -> torch.Tensor:
    """log_softmax(logits / T) of each token, at its own temperature ``T``."""
    scaled = torch.log_softmax(logits / torch.tensor(temps)[:, None], dim=-1)
    return scaled.gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)


def test_train_step_updates_weights_and_reports_the_mismatch(tiny_model_path: str):
    """The rollout's log-probs come from an independent reference (a transformers forward, per-token temperatures
    applied here); two recording errors are planted, and the mismatch metric reports exactly their gaps."""
    cfg = _config(tiny_model_path, learner={"mini_batch_size": 4, "micro_batch_size": 2})
    learner = Learner(tiny_model_path, cfg, num_threads=2)
    batch = _batch()
    logits = _reference_logits(tiny_model_path, batch)
    ref = [_logprobs_at(x, r, t) for x, r, t in zip(logits, batch.response_ids, batch.token_temperatures)]
    batch.rollout_logprobs = [x.tolist() for x in ref]  # as an on-policy rollout would have recorded them
    # planted: response 1's log-prob at token 5 recorded 3.0 too high; response 3's temperature at token 2 recorded
    # as 2.0 (the learner recomputes that token at 2.0, the rollout's log-prob was at the true temperature)
    batch.rollout_logprobs[1][5] += 3.0
    true_t = batch.token_temperatures[3][2]
    batch.token_temperatures[3][2] = 2.0
    temps = list(batch.token_temperatures[3])
    t_gap = float((_logprobs_at(logits[3], batch.response_ids[3], temps)[2] - ref[3][2]).abs())
    assert true_t != 2.0 and t_gap > 0.01 and abs(t_gap - 3.0) > 0.01
    (gap, (i, p)), rollout = max((3.0, (1, 5)), (t_gap, (3, 2))), batch.rollout_logprobs
    count = sum(len(r) for r in batch.response_ids)
    before = {k: v.clone() for k, v in learner.trainable_state().items()}
    m = learner.train_step(batch, 1.0)
    assert m["logprob/mismatch_max"] == pytest.approx(gap, abs=1e-4)
    assert (m["logprob/mismatch_worst_response"], m["logprob/mismatch_worst_position"]) == (i, p)
    assert m["logprob/mismatch_worst_rollout"] == pytest.approx(rollout[i][p], abs=1e-6)
    assert m["logprob/mismatch_worst_temperature"] == pytest.approx(batch.token_temperatures[i][p])
    # the mean: the two planted gaps over every token, the others agreeing with the reference to fp32 rounding
    assert m["logprob/mismatch_mean"] == pytest.approx((3.0 + t_gap) / count, abs=1e-5)
    assert m["actor/updates"] == 2  # 8 responses in mini-batches of 4
    assert m["actor/grad_norm"] > 0 and m["actor/lr"] == pytest.approx(1e-3)
    after = learner.trainable_state()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # the exported weights are the updated ones, under Hugging Face names
    exported = learner.export_weights()
    assert all(torch.equal(exported[k], after[k]) for k in after)


def test_single_pass_update_takes_old_logprobs_from_its_own_forward(tiny_model_path: str, monkeypatch):
    """One epoch over one mini-batch: no separate old-log-prob pass, the same update as with one (to fp32 noise)."""
    cfg = _config(tiny_model_path, learner={"mini_batch_size": 8, "micro_batch_size": 4})
    batch = _batch()
    deltas, metrics = {}, {}
    for separate in (False, True):
        learner = Learner(tiny_model_path, cfg, num_threads=2)
        learner.model.eval()
        batch.rollout_logprobs = [c.tolist() for c in learner._logprobs(batch, 1.0)]
        if separate:
            monkeypatch.setattr(learner, "_has_dropout", lambda: True)  # forces the separate no-grad pass
        before = learner.trainable_state()
        m = learner.train_step(batch, 1.0)
        assert m["logprob/old_from_update"] == float(not separate)
        assert m["logprob/mismatch_max"] <= 1e-5 and m["actor/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
        after = learner.trainable_state()
        deltas[separate] = torch.cat([(after[k] - before[k]).flatten() for k in sorted(after)])
        metrics[separate] = m
    # Adam's first step is lr * g / (|g| + eps): compare directions (tiny gradients may differ in sign by noise)
    cos = torch.nn.functional.cosine_similarity(deltas[False], deltas[True], dim=0)
    assert cos >= 0.999, float(cos)
    assert metrics[False]["actor/grad_norm"] == pytest.approx(metrics[True]["actor/grad_norm"], rel=1e-5)
    assert metrics[False]["actor/loss"] == pytest.approx(metrics[True]["actor/loss"], abs=1e-6)


@pytest.mark.gpu_contract
def test_full_mode_one_rank_keeps_fp32_masters_so_tiny_updates_do_not_round_away(tiny_model_path: str):
    """``full`` with ``model.dtype: bfloat16`` on one rank: one AdamW step at lr 1e-6 moves (nearly) every weight by
    about 1e-6. In bf16 weights (ulp 1.2e-4 at 0.02) such a step rounds away; the fp32 masters keep it, as FSDP2's."""
    cfg = _config(tiny_model_path, model={"dtype": "bfloat16"}, learner={"lr": 1e-6})
    learner = Learner(tiny_model_path, cfg, num_threads=2)
    batch = _batch()
    before = learner.trainable_state()
    m = learner.train_step(batch, 1.0)
    assert m["actor/updates"] == 1 and m["actor/grad_norm"] > 0
    after = learner.trainable_state()
    changed = sum(int((after[k] != before[k]).sum()) for k in after)
    total = sum(v.numel() for v in after.values())
    assert changed / total > 0.9, f"{changed} of {total} weights changed ({changed / total:.2%})"
    assert {v.dtype for v in after.values()} == {torch.float32}
    # the step is lr-sized (Adam's first step: lr * g / (|g| + eps)), not a rounding artefact
    delta = torch.cat([(after[k] - before[k]).flatten() for k in after]).abs()
    assert float(delta.max()) < 3e-6, float(delta.max())
    # export (and weight sync) still send model.dtype
    assert {v.dtype for v in learner.export_weights().values()} == {torch.bfloat16}


def test_full_mode_fp32_masters_checkpoint_and_resume_exactly(tiny_model_path: str, tmp_path):
    """A ``bfloat16`` ``full`` policy's checkpoint part holds its fp32 masters (not bf16 copies), and a learner that
    reads it continues bitwise as the one that wrote it."""
    cfg = _config(
        tiny_model_path, model={"dtype": "bfloat16"}, learner={"lr": 1e-5, "mini_batch_size": 4, "micro_batch_size": 2}
    )
    first = Learner(tiny_model_path, cfg, num_threads=2)
    first.train_step(_batch(seed=1), 1.0)
    first.write_part(str(tmp_path))
    second = Learner(tiny_model_path, cfg, num_threads=2)
    second.read_part(str(tmp_path))
    saved = second.get_state()["trainable"]
    assert {v.dtype for v in saved.values()} == {torch.float32}
    assert all(torch.equal(saved[k], v) for k, v in first.trainable_state().items())
    m1, m2 = first.train_step(_batch(seed=2), 1.0), second.train_step(_batch(seed=2), 1.0)
    assert m1["actor/loss"] == m2["actor/loss"] and m1["actor/grad_norm"] == m2["actor/grad_norm"]
    a, b = first.trainable_state(), second.trainable_state()
    assert all(torch.equal(a[k], b[k]) for k in a)
