"""The baselines of benchmarks/bench_rollout.py and benchmarks/bench_learner.py do the arms' work minus what is
measured: plain vLLM sends the ``fixed`` arm's requests without the processor's ``extra_args`` (and through the
worker's submission helper); the scalar log-prob op equals ``token_logprobs`` at a constant temperature. No timing."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import torch

from benchmarks import bench_learner, bench_rollout
from rlvr_temp.temperature import token_logprobs

PROMPTS = ["Q: 1+2\nA:", "Q: 3*4\nA:", "Q: 9-5\nA:"]


class _Captured(Exception):
    pass


def _fields(params: Any) -> dict[str, Any]:
    out = msgspec.structs.asdict(params)
    out.pop("extra_args")
    return out


@pytest.mark.parametrize("runner, logprobs", [("v1", None), ("v2", 0)])
def test_plain_requests_are_the_fixed_arms_without_extra_args(runner: str, logprobs: int | None) -> None:
    from rlvr_temp.engine.worker import RolloutWorker

    captured: dict[str, Any] = {}
    worker = object.__new__(RolloutWorker)  # no engine: generate() stops where it would submit
    worker._incarnation, worker.model_runner, worker.has_ttm, worker._uid = "x", runner, False, 0

    def submit(requests: list[dict[str, Any]], params: list[Any]) -> list[Any]:
        captured.update(requests=requests, params=params)
        raise _Captured

    worker._generate_as_one_batch = submit  # type: ignore[method-assign]
    worker._rank0 = lambda *a: {}  # type: ignore[method-assign]
    with pytest.raises(_Captured):
        worker.generate(PROMPTS, [[1.0]] * len(PROMPTS), max_tokens=7, ignore_eos=True)

    requests, params = bench_rollout.plain_requests(PROMPTS, 7, runner)
    assert requests == captured["requests"]
    assert all(p.extra_args is None and p.logprobs == logprobs for p in params)
    assert all(p.max_tokens == 7 and p.ignore_eos and p.temperature == 1.0 for p in params)
    assert [_fields(p) for p in params] == [_fields(p) for p in captured["params"]]
    assert all(p.extra_args for p in captured["params"])  # the arm's requests do carry the processor's


def test_plain_arm_submits_through_the_workers_helper() -> None:
    from types import SimpleNamespace

    calls = []

    def submit(requests: list[dict[str, Any]], params: list[Any]) -> list[Any]:
        calls.append((requests, params))
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[0] * p.max_tokens)]) for p in params]

    worker = SimpleNamespace(_generate_as_one_batch=submit, model_runner="v1")
    assert bench_rollout._arm_runners(worker, PROMPTS, 5)["plain"]() == 5 * len(PROMPTS)
    ((requests, params),) = calls
    assert [r["prompt"] for r in requests] == PROMPTS and all(p.logprobs is None for p in params)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t", [bench_learner.CHECK_T, 1.0, 0.7])
def test_scalar_op_equals_token_logprobs_at_a_constant_temperature(dtype: torch.dtype, t: float) -> None:
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 1000, generator=g) * 3).to(dtype)
    ids = torch.randint(0, 1000, (3, 5), generator=g)
    ours = token_logprobs(logits, ids, torch.full((3, 5), t))
    scalar = bench_learner.scalar_logprobs(logits, ids, t)
    assert scalar.dtype == torch.float32 and scalar.shape == (3, 5)
    # bf16 logits / 0.7 round in bf16 in the scalar op (as TRL / verl divide); 0.5 and 1.0 divide exactly
    exact = dtype == torch.float32 or t in (0.5, 1.0)
    torch.testing.assert_close(scalar, ours, atol=1e-4 if exact else 0.1, rtol=0)
    if exact:  # what the benchmark checks before timing
        assert bench_learner.cross_check(ours, scalar, "test") <= bench_learner.CHECK_ATOL


def test_scalar_op_gradient_equals_token_logprobs() -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(2, 4, 300, generator=g) * 2
    ids = torch.randint(0, 300, (2, 4), generator=g)
    grads = []
    for fn in (
        lambda x: token_logprobs(x, ids, torch.full((2, 4), 0.5)),
        lambda x: bench_learner.scalar_logprobs(x, ids, 0.5),
    ):
        x = base.clone().requires_grad_(True)
        fn(x).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


def test_cross_check_refuses_different_arms() -> None:
    a = torch.zeros(4)
    with pytest.raises(RuntimeError, match="differs"):
        bench_learner.cross_check(a, a + 1e-2, "x")


def test_token_logprobs_row_checks_its_arms() -> None:
    row = bench_learner.bench_token_logprobs(2, 3, 500, 1, backward=True, dtype="bfloat16")
    assert row["check_max_abs_diff"] <= bench_learner.CHECK_ATOL and row["reps"] == 1
    assert "check" in bench_learner.to_markdown({"rows": [row]})


def test_learner_row_runs_the_scalar_op_on_the_same_logits(tiny_model_path: str) -> None:
    row = bench_learner.bench_learner(tiny_model_path, 4, 5, 1)  # raises if the arms disagree or scalar never ran
    assert row["check_max_abs_diff"] <= bench_learner.CHECK_ATOL
    assert row["outputs_differ"]  # 0.8 / 1.2 per token against 1.0
