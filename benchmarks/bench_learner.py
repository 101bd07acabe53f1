"""Cost of on-policy log-probs at per-token temperatures against the conventional scalar-temperature log-probs.

The *scalar* baseline is what a trainer without per-token temperatures runs (TRL: ``logits / temperature``, then
``selective_log_softmax``; verl: ``logits.div_(temperature)``, then ``logprobs_from_logits``): one division by a
Python float, ``log_softmax``, gather (:func:`scalar_logprobs`). It is not ``token_logprobs`` called with a float
(which broadcasts the float into a per-token tensor and runs the same kernels as the per-token call), and the
learner has no scalar path of its own (``logprobs: off_policy`` passes the float to ``token_logprobs``).

Two parts, each timed with the two variants interleaved and reported as medians with their ratio:

* ``learner``: the learner's whole no-grad log-prob pass, ``Learner._logprobs`` (policy forward in micro-batches
  + log-probs + the per-response split), on one collated batch of 64 responses x 48 random token ids after
  prompts of 8-12 tokens. *per-token*: ``logprobs: on_policy``, :func:`rlvr_temp.temperature.token_logprobs`
  with the recorded per-token temperatures (0.8 / 1.2); *scalar*: the same pass with the log-prob op replaced
  by :func:`scalar_logprobs` at the base temperature (same model, same forward, same logits). Policy:
  ``mode=qlora``, fp32 compute, ``micro_batch_size=32`` (the demo's learner);
* ``token_logprobs`` against :func:`scalar_logprobs` on random logits ``[responses, tokens, V]`` for V = 128
  (the tiny model), 32,000 (a Llama-2-sized vocabulary) and 151,936 (Qwen's; fp32 and bf16 logits); forward
  under ``no_grad`` and forward + backward.

Every row first checks the two arms against each other: per-token at a constant temperature (0.5, exact in
binary floating point, so bf16 logits divide exactly too) equals the scalar op within fp32 rounding
(:data:`CHECK_ATOL`); a mismatch stops the benchmark. Target from the issue: per-token <= 1.05x scalar.

    python -m benchmarks.bench_learner             # two to three minutes on a 2-core CPU
    python -m benchmarks.bench_learner --quick     # about a minute and a half
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import write_json
from rlvr_temp.batch import TrainBatch
from rlvr_temp.temperature import make_strategy

TARGET_RATIO = 1.05  # the target: per-token temperatures cost at most 5% more than a scalar one
SCALAR_T = 1.0  # the scalar arm's temperature (the demo's base temperature; the cost does not depend on it)
CHECK_T = 0.5  # the constant temperature of the cross-check: a power of two, so x / T is exact in any dtype
CHECK_ATOL = 1e-4  # |per-token - scalar| allowed in the cross-check (fp32 summation order; log-probs up to ~50)


def scalar_logprobs(logits: Any, token_ids: Any, temperature: float) -> Any:
    """The conventional scalar-temperature log-probs: ``logits / T`` (a Python float, in the logits' dtype),
    ``log_softmax`` over the vocabulary in fp32, gathered at ``token_ids`` (TRL, verl; verl divides in place)."""
    import torch

    z = logits / temperature
    logp = torch.log_softmax(z if z.dtype in (torch.float32, torch.float64) else z.float(), dim=-1)
    return logp.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)


def cross_check(per_token: Any, scalar: Any, what: str) -> float:
    """Max |per-token - scalar|; raises when it exceeds :data:`CHECK_ATOL` (the arms would not be equivalent)."""
    diff = float((per_token.double() - scalar.double()).abs().max())
    if not diff <= CHECK_ATOL:
        raise RuntimeError(f"{what}: per-token at constant T={CHECK_T} differs from the scalar op by {diff:.3g}")
    return diff


def default_model() -> str:
    """The embedded tiny model (built on first use, then cached)."""
    from rlvr_temp.data.tiny_model import ensure_tiny_model

    return str(ensure_tiny_model())


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of every function, ``reps`` times, alternating the order each repetition."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else reversed(names):
            t0 = time.perf_counter()
            fns[name]()
            out[name].append(time.perf_counter() - t0)
    return out


def _row(case: str, times: dict[str, list[float]]) -> dict[str, Any]:
    per_token, scalar = times["per_token"], times["scalar"]
    return {
        "case": case,
        "per_token_ms": 1e3 * statistics.median(per_token),
        "scalar_ms": 1e3 * statistics.median(scalar),
        "ratio": statistics.median(per_token) / statistics.median(scalar),
        "paired_ratio": statistics.median(a / b for a, b in zip(per_token, scalar)),
        "reps": len(per_token),
    }


def make_batch(n: int, tokens: int, vocab: int, seed: int = 0) -> TrainBatch:
    """``n`` responses of ``tokens`` random ids after prompts of 8-12 random ids, with 0.8 / 1.2 temperatures."""
    import torch

    g = torch.Generator().manual_seed(seed)
    low = 2 if vocab > 4 else 0  # keep clear of pad / eos ids
    prompts = [torch.randint(low, vocab, (8 + i % 5,), generator=g).tolist() for i in range(n)]
    responses = [torch.randint(low, vocab, (tokens,), generator=g).tolist() for _ in range(n)]
    temps = [torch.where(torch.rand(tokens, generator=g) < 0.2, 1.2, 0.8).tolist() for _ in range(n)]
    return TrainBatch(
        prompt_ids=prompts,
        response_ids=responses,
        token_temperatures=temps,
        rollout_logprobs=[[0.0] * tokens for _ in range(n)],
        token_entropies=[[0.0] * tokens for _ in range(n)],
        response_temperatures=[1.0] * n,
        advantages=[0.0] * n,
    )


def bench_learner(model: str, n: int, tokens: int, reps: int) -> dict[str, Any]:
    """``Learner._logprobs`` on-policy (per-token ``token_logprobs``) vs the same pass with :func:`scalar_logprobs`
    at a scalar temperature (the model's forward and logits are the same)."""
    from unittest import mock

    import torch

    import rlvr_temp.learner.logprobs as policy_logprobs
    from rlvr_temp.config.schema import RunConfig
    from rlvr_temp.learner.learner import Learner

    def config(logprobs: str) -> RunConfig:
        return RunConfig.model_validate(
            {
                "model": {"path": model, "dtype": "float32"},
                "learner": {"mode": "qlora", "micro_batch_size": 32, "mini_batch_size": 64},
                "temperature": {"mode": "token", "logprobs": logprobs},
            }
        )

    t0 = time.perf_counter()
    learner = Learner(model, config("on_policy"))
    load_s = time.perf_counter() - t0
    vocab = int(learner.model.get_input_embeddings().weight.shape[0])
    batch = make_batch(n, tokens, vocab)
    learner.model.eval()
    results: dict[str, torch.Tensor] = {}
    # the scalar arm: off_policy hands the log-prob op the base temperature as a float, and the op is the
    # conventional one (rlvr_temp.learner.logprobs calls it by its module-level name)
    strategies = {mode: make_strategy(config(mode).temperature) for mode in ("on_policy", "off_policy")}

    def per_token(b: TrainBatch, base_t: float) -> torch.Tensor:
        learner.strategy = strategies["on_policy"]
        return torch.cat(learner._logprobs(b, base_t))

    calls = [0]

    def counted(logits: torch.Tensor, ids: torch.Tensor, t: float) -> torch.Tensor:
        calls[0] += 1
        return scalar_logprobs(logits, ids, t)

    def scalar(b: TrainBatch, base_t: float) -> torch.Tensor:
        learner.strategy = strategies["off_policy"]
        with mock.patch.object(policy_logprobs, "token_logprobs", counted):
            return torch.cat(learner._logprobs(b, base_t))

    constant = dataclasses.replace(batch, token_temperatures=[[CHECK_T] * tokens for _ in range(n)])
    diff = cross_check(per_token(constant, CHECK_T), scalar(batch, CHECK_T), "Learner._logprobs")
    if calls[0] == 0:  # the learner no longer computes its log-probs through the patched name
        raise RuntimeError("the scalar arm did not run scalar_logprobs (rlvr_temp.learner.logprobs changed?)")

    def variant(fn: Callable[[TrainBatch, float], torch.Tensor], name: str) -> Callable[[], None]:
        def run() -> None:
            results[name] = fn(batch, SCALAR_T)

        return run

    times = interleaved({"per_token": variant(per_token, "per_token"), "scalar": variant(scalar, "scalar")}, reps)
    row = _row(f"Learner._logprobs, qlora fp32, {n} x {tokens} tokens, micro-batch 32", times)
    row["load_s"] = load_s
    row["vocab"] = vocab
    row["check_max_abs_diff"] = diff
    # sanity: both variants ran on the same batch and differ (temperatures 0.8 / 1.2 vs 1.0)
    row["outputs_differ"] = not torch.equal(results["per_token"], results["scalar"])
    return row


def bench_token_logprobs(
    n: int, tokens: int, vocab: int, reps: int, backward: bool, dtype: str = "float32"
) -> dict[str, Any]:
    """:func:`rlvr_temp.temperature.token_logprobs` with a ``[n, tokens]`` temperature tensor vs
    :func:`scalar_logprobs` at a float, on ``dtype`` logits."""
    import torch

    from rlvr_temp.temperature import token_logprobs

    g = torch.Generator().manual_seed(vocab)
    logits = (torch.randn(n, tokens, vocab, generator=g) * 3).to(getattr(torch, dtype))
    ids = torch.randint(0, vocab, (n, tokens), generator=g)
    temps = torch.where(torch.rand(n, tokens, generator=g) < 0.2, 1.2, 0.8)
    with torch.no_grad():
        diff = cross_check(
            token_logprobs(logits, ids, torch.full_like(temps, CHECK_T)),
            scalar_logprobs(logits, ids, CHECK_T),
            f"token_logprobs, V={vocab}, {dtype}",
        )
    if backward:
        logits.requires_grad_(True)

    def variant(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            if backward:
                logits.grad = None
                fn().sum().backward()
            else:
                with torch.no_grad():
                    fn()

        return run

    times = interleaved(
        {
            "per_token": variant(lambda: token_logprobs(logits, ids, temps)),
            "scalar": variant(lambda: scalar_logprobs(logits, ids, SCALAR_T)),
        },
        reps,
    )
    what = "forward + backward" if backward else "forward (no_grad)"
    row = _row(f"[{n}, {tokens}, {vocab:,}] {dtype}, {what}", times)
    row["check_max_abs_diff"] = diff
    return row


def run(model: str, quick: bool = False, threads: int = 1) -> dict[str, Any]:
    """All rows (see the module docstring)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    n, tokens = 64, 48
    reps = 8 if quick else 30
    rows = [bench_learner(model, n, tokens, reps)]
    # (responses, vocabulary, dtype): a [64, 48, 32000] pass takes ~0.5 s on one core; Qwen's vocabulary with
    # 16 responses (768 rows: ~0.47 GB of fp32 logits, and the scalar op's full [N, V] log_softmax beside them)
    for n_op, vocab, dtype in (
        (n, 128, "float32"),
        (n, 32_000, "float32"),
        (16, 151_936, "float32"),
        (16, 151_936, "bfloat16"),
    ):
        r = (max(3, reps // 6) if vocab > 100_000 else max(3, reps // 4)) if vocab > 1000 else 8 * reps
        rows.append(bench_token_logprobs(n_op, tokens, vocab, r, backward=False, dtype=dtype))
        rows.append(bench_token_logprobs(n_op, tokens, vocab, max(3, r // 2), backward=True, dtype=dtype))
    ratio = rows[0]["ratio"]
    return {
        "model": model,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "target_ratio": TARGET_RATIO,
        "learner_ratio": ratio,
        "target_met": ratio <= TARGET_RATIO,
    }


def to_markdown(res: dict[str, Any]) -> str:
    lines = [
        f"| case | per-token ms | scalar ms | ratio | paired ratio | check: max abs diff at T = {CHECK_T} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        check = f"{r['check_max_abs_diff']:.1e}" if "check_max_abs_diff" in r else "–"
        lines.append(
            f"| {r['case']} | {r['per_token_ms']:,.2f} | {r['scalar_ms']:,.2f} | {r['ratio']:.3f} | "
            f"{r['paired_ratio']:.3f} | {check} |"
        )
    return "\n".join(lines)


def learner_args(doc: str, argv: list[str] | None) -> argparse.Namespace:
    """The command line of a learner benchmark (``--model``, ``--quick``, ``--threads``, ``--json``); sets the
    OpenMP thread count before torch starts its pool."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Hugging Face model folder (default: the embedded tiny model)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the demo's learner)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    args.model = args.model or default_model()
    return args


def main(argv: list[str] | None = None) -> int:
    args = learner_args(__doc__, argv)
    res = run(args.model, args.quick, args.threads)
    print(f"\ntorch threads {res['threads']}")
    print(to_markdown(res))
    verdict = "met" if res["target_met"] else "NOT met"
    print(f"\nlearner per-token <= {TARGET_RATIO}x scalar: {verdict} ({res['learner_ratio']:.3f})")
    return write_json(args.json, res)


if __name__ == "__main__":
    raise SystemExit(main())
