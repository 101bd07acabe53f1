"""Cost of on-policy log-probs at per-token temperatures against one scalar temperature: same batch, same run.

Two parts, each timed with the two variants interleaved and reported as medians with their ratio:

* ``learner``: the learner's whole log-prob pass, ``Learner._logprobs`` (policy forward in micro-batches +
  :func:`rlvr_temp.temperature.token_logprobs`), on one collated batch of ``--responses`` responses x
  ``--tokens`` random token ids after prompts of 8-12 tokens, with ``settings.logprobs = "on_policy"`` (the
  per-token temperature tensor, values 0.8 / 1.2) against ``"off_policy"`` (the scalar base temperature).
  Policy: ``mode=qlora``, fp32 compute, ``micro_batch_size=32`` (the demo's learner);
* ``token_logprobs``: the pure function on random logits ``[responses, tokens, V]`` for V = 128 (the tiny
  model) and 32,000 (a Llama-2-sized vocabulary), per-token temperatures against a float; forward under
  ``no_grad`` and forward + backward.

Target from the issue: per-token <= 1.05x scalar.

    python -m benchmarks.bench_learner             # about a minute on a 2-core CPU
    python -m benchmarks.bench_learner --quick
"""

from __future__ import annotations

import argparse
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
    """``Learner._logprobs`` on-policy (per-token tensor) vs off-policy (scalar), same batch."""
    import torch

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
    strategies = {mode: make_strategy(config(mode).temperature) for mode in ("on_policy", "off_policy")}

    def variant(mode: str) -> Callable[[], None]:
        def run() -> None:
            learner.strategy = strategies[mode]
            results[mode] = torch.cat(learner._logprobs(batch, 1.0))

        return run

    times = interleaved({"per_token": variant("on_policy"), "scalar": variant("off_policy")}, reps)
    row = _row(f"Learner._logprobs, qlora fp32, {n} x {tokens} tokens, micro-batch 32", times)
    row["load_s"] = load_s
    row["vocab"] = vocab
    # sanity: both variants ran on the same batch and differ (temperatures 0.8 / 1.2 vs 1.0)
    row["outputs_differ"] = not torch.equal(results["on_policy"], results["off_policy"])
    return row


def bench_token_logprobs(n: int, tokens: int, vocab: int, reps: int, backward: bool) -> dict[str, Any]:
    """:func:`rlvr_temp.temperature.token_logprobs` with a ``[n, tokens]`` temperature tensor vs a float."""
    import torch

    from rlvr_temp.temperature import token_logprobs

    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(n, tokens, vocab, generator=g) * 3
    ids = torch.randint(0, vocab, (n, tokens), generator=g)
    temps = torch.where(torch.rand(n, tokens, generator=g) < 0.2, 1.2, 0.8)
    if backward:
        logits.requires_grad_(True)

    def variant(t: torch.Tensor | float) -> Callable[[], None]:
        def run() -> None:
            if backward:
                logits.grad = None
                token_logprobs(logits, ids, t).sum().backward()
            else:
                with torch.no_grad():
                    token_logprobs(logits, ids, t)

        return run

    times = interleaved({"per_token": variant(temps), "scalar": variant(1.0)}, reps)
    what = "forward + backward" if backward else "forward (no_grad)"
    return _row(f"token_logprobs [{n}, {tokens}, {vocab:,}], {what}", times)


def run(model: str, quick: bool = False, threads: int = 1) -> dict[str, Any]:
    """All rows (see the module docstring)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    n, tokens = 64, 48
    reps = 8 if quick else 30
    rows = [bench_learner(model, n, tokens, reps)]
    for vocab in (128, 32_000):
        r = max(3, reps // 4) if vocab > 1000 else 8 * reps  # a [64, 48, 32000] pass takes ~0.5 s on one core
        rows.append(bench_token_logprobs(n, tokens, vocab, r, backward=False))
        rows.append(bench_token_logprobs(n, tokens, vocab, max(3, r // 2), backward=True))
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
        "| case | per-token ms | scalar ms | ratio | paired ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['case']} | {r['per_token_ms']:,.2f} | {r['scalar_ms']:,.2f} | {r['ratio']:.3f} | "
            f"{r['paired_ratio']:.3f} |"
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
