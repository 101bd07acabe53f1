"""Decode throughput of rlvr_temp's temperature processor against plain vLLM: same engine, same prompts, same run.

One :class:`rlvr_temp.engine.worker.RolloutWorker` (vLLM CPU or CUDA build; its engine in vLLM's multiprocess mode as
in training, or in this process with ``--in-process``) serves every arm, so the model, the KV cache, the thread
count and the prompts are identical; only the sampling path differs:

* ``plain``: the same requests as ``fixed`` (same prompts, ``max_tokens``, ``ignore_eos``, ``temperature=1.0``,
  ``logprobs=None``) without ``extra_args``, submitted through the worker's own engine-level helper
  (``RolloutWorker._generate_as_one_batch``: every request enqueued while the scheduler is paused, then one
  wake-up), so the processor sees the rows but passes them through. This is plain vLLM doing the arms' work minus
  the processor (no per-token temperatures, no records, no ``Rollout`` objects): the baseline of the ratios;
* ``fixed``: ``worker.generate`` at one temperature (the processor divides each row by ``T_req`` and records it);
* ``token global``: the entropy rule with one window of 100,000 entropies for the engine (the paper's setting);
* ``token sequence``: the entropy rule with one window per response;
* ``mixture``: per-response temperatures 0.7 ... 1.4 (round robin over the prompts).

``worker.generate`` is timed as a caller sees it (engine + processor + drain of the per-token records + building
the :class:`~rlvr_temp.engine.worker.Rollout` objects). Every response has exactly ``--tokens`` tokens
(``ignore_eos``). Ratios are reported against ``plain`` and, beside them, against ``fixed`` (the processor at one
temperature: what the token rule and the mixture add on top of it). The arms are interleaved, repetition by
repetition, after a warm-up pass of each, and the reported figure is the median over repetitions (robust to a
shared, busy machine).

The engine runs with ``--threads`` OpenMP / torch threads (default 1, like the demo's rollout actor with
``ray.rollout_cpus: 1``; on a shared 2-core machine more threads make spin-waiting OpenMP barriers dominate).

After the timed repetitions, one more pass of every arm times ``processor.apply`` alone, in the engine's worker
process (its cost per decode step and its share of the generate call's wall time; for ``plain`` the pass-through).

``--profile`` (engine in-process) additionally runs the token-global arm once under cProfile and reports where
the processor's time goes (cumulative seconds of ``TemperatureProcessor.apply`` and of its parts).

    python -m benchmarks.bench_rollout                      # 64 prompts x 64 tokens, 9 repetitions
    python -m benchmarks.bench_rollout --quick              # 32 x 32, 3 repetitions
    python -m benchmarks.bench_rollout --model /path/to/hf_model --json out.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import write_json

TOKEN_RULE = {"t_low": 0.8, "t_high": 1.2, "hot_fraction": 0.2, "window": 100_000, "scope": "global"}


def token_strategy(scope: str) -> Any:
    """The `token` mode's strategy with :data:`TOKEN_RULE` in ``scope``."""
    from rlvr_temp.config.schema import TemperatureConfig, TokenRuleConfig
    from rlvr_temp.temperature import make_strategy

    return make_strategy(TemperatureConfig(mode="token", token=TokenRuleConfig(**{**TOKEN_RULE, "scope": scope})))


MIXTURE = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4)
ARMS = ("plain", "fixed", "token global", "token sequence", "mixture")
TARGET_TOKEN_RATIO = 0.95  # the CPU target: token mode >= 0.95x plain vLLM


def default_model() -> str:
    """The embedded tiny model (built on first use, then cached)."""
    from rlvr_temp.data.tiny_model import ensure_tiny_model

    return str(ensure_tiny_model())


def make_prompts(n: int) -> list[str]:
    """``n`` distinct arithmetic prompts in the demo's format (deterministic)."""
    ops = "+-*"
    return [f"Q: {(7 * i) % 97 + 3}{ops[i % 3]}{(13 * i) % 89 + 2}\nA:" for i in range(n)]


def plain_requests(
    prompts: list[str], max_tokens: int, model_runner: str = "v1"
) -> tuple[list[dict[str, Any]], list[Any]]:
    """The ``plain`` arm's requests and sampling parameters: what ``RolloutWorker.generate`` submits for the
    ``fixed`` arm (one request per response, ``temperature=1.0``, ``ignore_eos``; no vLLM log-probs where the
    processor records them, i.e. Model Runner V1, else ``logprobs=0`` as the worker asks) without the processor's
    ``extra_args``."""
    from vllm import SamplingParams

    logprobs = None if model_runner == "v1" else 0
    requests = [{"prompt": p} for p in prompts]
    params = [
        SamplingParams(temperature=1.0, max_tokens=max_tokens, ignore_eos=True, logprobs=logprobs) for _ in prompts
    ]
    return requests, params


def _arm_runners(worker: Any, prompts: list[str], max_tokens: int) -> dict[str, Callable[[], int]]:
    """One callable per arm; each generates and returns the number of tokens produced."""
    n = len(prompts)

    def plain() -> int:
        # the worker's own submission path (paused enqueue, one wake-up, wait for completion)
        outs = worker._generate_as_one_batch(*plain_requests(prompts, max_tokens, worker.model_runner))
        return sum(len(o.outputs[0].token_ids) for o in outs)

    def ours(temps: list[list[float]], strategy: Any) -> Callable[[], int]:
        def run() -> int:
            groups = worker.generate(prompts, temps, max_tokens=max_tokens, ignore_eos=True, strategy=strategy)
            return sum(len(r.token_ids) for g in groups for r in g)

        return run

    fixed = [[1.0]] * n
    mixture = [[MIXTURE[i % len(MIXTURE)]] for i in range(n)]
    return {
        "plain": plain,
        "fixed": ours(fixed, None),
        "token global": ours(fixed, token_strategy("global")),
        "token sequence": ours(fixed, token_strategy("sequence")),
        "mixture": ours(mixture, None),
    }


def _profile_token(worker: Any, runner: Callable[[], int], top: int = 18) -> dict[str, Any]:
    """cProfile one token-global generation; the processor's share and its most expensive callees."""
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    runner()
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    apply_s, calls = 0.0, 0
    for (filename, _line, func), (_cc, nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if func == "apply" and filename.endswith("processor_v1.py"):  # the V1 adapter; its work is in processor.py
            apply_s, calls = ct, nc
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_callees("processor_v1.py:.*\\(apply\\)")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return {
        "wall_s": wall,
        "apply_s": apply_s,
        "apply_calls": calls,
        "apply_share": apply_s / wall if wall else float("nan"),
        "apply_callees": buf.getvalue(),
        "top_tottime": out.getvalue(),
    }


def _processor_share(worker: Any, runners: dict[str, Callable[[], int]]) -> dict[str, dict[str, float]]:
    """One extra, untimed-for-throughput pass of every arm with ``processor.apply`` wrapped in a timer (in the
    engine's worker process, through rlvr_temp.engine.extension's ``rlvr_apply_timer``)."""
    out = {}
    for arm in ARMS:
        worker.llm.collective_rpc("rlvr_apply_timer", args=(True,))
        t0 = time.perf_counter()
        runners[arm]()
        wall = time.perf_counter() - t0
        spent = worker.llm.collective_rpc("rlvr_apply_timer", args=(False,))[0]
        out[arm] = {
            "apply_ms": 1e3 * spent["s"],
            "calls": spent["calls"],
            "us_per_call": 1e6 * spent["s"] / max(1, spent["calls"]),
            "share": spent["s"] / wall,
        }
    return out


def run(
    model: str, n_prompts: int, max_tokens: int, reps: int, profile: bool = False, multiprocess: bool = True
) -> dict[str, Any]:
    """Build the engine, warm up, interleave ``reps`` repetitions of every arm; medians and ratios."""
    import torch

    from rlvr_temp.config.schema import EngineConfig, ModelConfig
    from rlvr_temp.engine.worker import RolloutWorker

    t0 = time.perf_counter()
    engine = EngineConfig(multiprocess=multiprocess and not profile)  # cProfile sees only this process
    worker = RolloutWorker(model, ModelConfig(path=model, max_model_len=256), engine, seed=0)
    startup = time.perf_counter() - t0
    prompts = make_prompts(n_prompts)
    runners = _arm_runners(worker, prompts, max_tokens)
    for arm in ARMS:  # warm-up: prefix cache, allocator, first-call costs
        runners[arm]()
    samples: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for rep in range(reps):
        # rotate the order so that no arm always runs first / after the same neighbour
        order = ARMS[rep % len(ARMS) :] + ARMS[: rep % len(ARMS)]
        for arm in order:
            t = time.perf_counter()
            tokens = runners[arm]()
            dt = time.perf_counter() - t
            if tokens != n_prompts * max_tokens:
                raise RuntimeError(f"{arm}: {tokens} tokens generated, expected {n_prompts * max_tokens}")
            samples[arm].append(tokens / dt)
    base, fixed = statistics.median(samples["plain"]), statistics.median(samples["fixed"])
    rows = [
        {
            "arm": arm,
            "tokens_per_s": statistics.median(samples[arm]),
            "min": min(samples[arm]),
            "max": max(samples[arm]),
            "ratio": statistics.median(samples[arm]) / base,
            # ratio per repetition (each against the plain run of the same repetition), then the median
            "paired_ratio": statistics.median(a / b for a, b in zip(samples[arm], samples["plain"])),
            "ratio_fixed": statistics.median(samples[arm]) / fixed,
        }
        for arm in ARMS
    ]
    result: dict[str, Any] = {
        "model": model,
        "prompts": n_prompts,
        "max_tokens": max_tokens,
        "reps": reps,
        "startup_s": startup,
        "multiprocess": engine.multiprocess,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "(unset)"),
        "omp_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "(unset)"),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "rows": rows,
        "samples": samples,
        "target_token_ratio": TARGET_TOKEN_RATIO,
    }
    token_ratios = [r["ratio"] for r in rows if r["arm"].startswith("token")]
    result["token_ratio_min"] = min(token_ratios)
    result["target_met"] = min(token_ratios) >= TARGET_TOKEN_RATIO
    result["processor"] = _processor_share(worker, runners)
    if profile:
        result["profile"] = _profile_token(worker, runners["token global"])
    return result


def to_markdown(res: dict[str, Any]) -> str:
    lines = [
        "| arm | tokens/s (median) | min–max | ratio vs plain | paired ratio | ratio vs fixed | processor µs/step "
        "| processor share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    proc = res.get("processor", {})
    for r in res["rows"]:
        p = proc.get(r["arm"])
        cost = f"{p['us_per_call']:,.0f} | {100 * p['share']:.1f}%" if p else "– | –"
        lines.append(
            f"| {r['arm']} | {r['tokens_per_s']:,.0f} | {r['min']:,.0f}–{r['max']:,.0f} | "
            f"{r['ratio']:.3f} | {r['paired_ratio']:.3f} | {r.get('ratio_fixed', float('nan')):.3f} | {cost} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Hugging Face model folder (default: the embedded tiny model)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts (= sequences) per generate call")
    parser.add_argument("--tokens", type=int, default=None, help="tokens generated per sequence")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions of every arm")
    parser.add_argument("--quick", action="store_true", help="32 prompts x 32 tokens, 3 repetitions")
    parser.add_argument(
        "--profile", action="store_true", help="also cProfile one token-global generation (engine in-process)"
    )
    parser.add_argument(
        "--in-process", action="store_true", help="the engine in this process (default: vLLM's multiprocess mode)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP/torch threads of the engine (default 1, as the demo's rollout actor; 0 = leave unset)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:  # before torch is imported: the engine's torch / OpenMP thread count
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    n_prompts = args.prompts or (32 if args.quick else 64)
    max_tokens = args.tokens or (32 if args.quick else 64)
    reps = args.reps or (3 if args.quick else 9)
    res = run(
        args.model or default_model(),
        n_prompts,
        max_tokens,
        reps,
        profile=args.profile,
        multiprocess=not args.in_process,
    )
    print(
        f"\n{n_prompts} prompts x {max_tokens} tokens, {reps} repetitions, torch threads {res['torch_threads']} "
        f"(OMP_NUM_THREADS={res['omp_num_threads']}), engine "
        f"{'multiprocess' if res['multiprocess'] else 'in-process'}, start-up {res['startup_s']:.1f} s"
    )
    print(to_markdown(res))
    verdict = "met" if res["target_met"] else "NOT met"
    print(f"\ntoken modes >= {TARGET_TOKEN_RATIO}x plain: {verdict} (lowest {res['token_ratio_min']:.3f})")
    if "profile" in res:
        p = res["profile"]
        print(
            f"\nprofile (token global, one call): wall {p['wall_s']:.3f} s, processor.apply "
            f"{p['apply_s']:.3f} s over {p['apply_calls']} calls ({100 * p['apply_share']:.1f}%)"
        )
        print(p["apply_callees"])
        print(p["top_tottime"])
    return write_json(args.json, res)


if __name__ == "__main__":
    raise SystemExit(main())
