"""The learner's importance correction (``algorithm.rollout_correction``) on the tiny model: the weights come from
its old log-probs and the rollout's, their statistics reach the step's metrics (maxima as maxima), and ``none``
leaves the update alone."""

from __future__ import annotations

import math

import pytest

from rlvr_temp.learner.learner import Learner
from tests.unit.learner.test_learner import _batch, _config


def _step(tiny_model_path: str, correction: dict, plant: bool = True, shift: float = 0.0) -> dict[str, float]:
    """One update over one mini-batch of 8 in micro-batches of 2; the rollout's log-probs are the learner's own, with
    two planted gaps: response 1's token 5 recorded 1.0 too low (ratio e), response 3's token 2 0.5 too high; and all
    of them ``shift`` too high."""
    cfg = _config(
        tiny_model_path,
        learner={"mini_batch_size": 8, "micro_batch_size": 2, "micro_batch_tokens": None},
        algorithm={"rollout_correction": correction},
    )
    learner = Learner(tiny_model_path, cfg, num_threads=2)
    batch = _batch()
    learner.model.eval()
    batch.rollout_logprobs = [(c + shift).tolist() for c in learner._logprobs(batch, 1.0)]
    if plant:
        batch.rollout_logprobs[1][5] -= 1.0
        batch.rollout_logprobs[3][2] += 0.5
    return learner.train_step(batch, 1.0)


def test_tis_weights_reach_the_metrics(tiny_model_path: str):
    m = _step(tiny_model_path, {"mode": "tis", "threshold": 1.5})
    count = sum(len(r) for r in _batch().response_ids)
    # a max over the micro-batches, not their token-share-weighted mean
    assert m["correction/ratio_max"] == pytest.approx(math.e, rel=1e-4)
    assert m["correction/ratio_mean"] == pytest.approx((count - 2 + math.e + math.exp(-0.5)) / count, abs=1e-4)
    assert m["correction/clipped_frac"] == pytest.approx(1 / count, abs=1e-6)
    assert m["correction/weight_mean"] == pytest.approx((count - 2 + 1.5 + math.exp(-0.5)) / count, abs=1e-4)
    assert "correction/masked_frac" not in m


def test_sequence_mis_masks_the_planted_responses(tiny_model_path: str):
    m = _step(tiny_model_path, {"mode": "mis", "level": "sequence", "threshold": 1.5})
    lengths = [len(r) for r in _batch().response_ids]
    # response 1's ratio e > 1.5 and response 3's e^-0.5 < 1 / 1.5: both masked whole, the others kept
    assert m["correction/masked_frac"] == pytest.approx((lengths[1] + lengths[3]) / sum(lengths), abs=1e-6)
    assert m["correction/ratio_max"] == pytest.approx(math.e, rel=1e-4)


def test_none_and_auto_on_a_synchronous_float32_run_record_nothing(tiny_model_path: str):
    for mode in ("none", "auto"):
        m = _step(tiny_model_path, {"mode": mode}, plant=False)
        assert not any(k.startswith("correction/") for k in m)


def test_a_fully_masked_batch_makes_no_update(tiny_model_path: str):
    """Every token's ratio e^-1 is under MIS's lower bound: every weight 0, so the loss and its gradient are 0."""
    m = _step(tiny_model_path, {"mode": "mis", "threshold": 1.5}, plant=False, shift=1.0)
    assert m["correction/masked_frac"] == pytest.approx(1.0) and m["correction/weight_mean"] == 0.0
    assert m["actor/loss"] == 0.0 and m["actor/grad_norm"] == 0.0
