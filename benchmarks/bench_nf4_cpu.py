"""bitsandbytes' own CPU 4-bit path against the learner's workaround, on the demo's NF4 learner (AVX512-BF16 CPUs).

On a CPU with AVX512-BF16, a ``Linear4bit`` repacks its weights the first time it runs a no-grad forward in eval
mode and from then on multiplies with a fused bf16 kernel (``gemv_4bit``) that has no backward. The learner turns
that off (``rlvr_temp.learner.policy.disable_cpu_4bit_repacking``; docs/stack.md), so every forward dequantises the NF4
weight and multiplies in the compute dtype. This script measures what the workaround costs, with two learners
loaded alike from the demo recipe (``recipes/demo/base.yaml``: tiny model, qlora, fp32 compute, micro-batch 64)
that differ only in that switch, on one batch of the demo's shape (128 responses x 48 tokens after 8-12 token
prompts), timed interleaved:

* ``no-grad log-prob pass`` (``Learner._logprobs``): what runs with ``algorithm.ppo_epochs > 1`` or a KL / Archer
  reference; the demo (one epoch, old log-probs from the update's own forward) never runs it, so there the two
  learners run the same code;
* ``update`` (``Learner.train_step``) after that pass: bitsandbytes' path runs on repacked weights;
* the cost in correctness: the LoRA gradients of one micro-batch after a no-grad pass, against the workaround's
  (relative error of the whole gradient vector), and the largest log-prob difference (bf16 kernel vs fp32).

On a CPU without AVX512-BF16, bitsandbytes has no such path: the script says so and measures nothing.

    python -m benchmarks.bench_nf4_cpu            # about 2 minutes on a 2-core CPU
    python -m benchmarks.bench_nf4_cpu --quick
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks.bench_learner import interleaved, learner_args, make_batch
from benchmarks.common import write_json

ROOT = Path(__file__).resolve().parents[1]


def demo_learner(model: str, bnb_path: bool) -> Any:
    """The demo recipe's learner; ``bnb_path``: bitsandbytes' repacking left on (the learner turns it off)."""
    import bitsandbytes as bnb

    from rlvr_temp.config.schema import load_config
    from rlvr_temp.learner.learner import Learner

    learner = Learner(model, load_config(str(ROOT / "recipes/demo/base.yaml"), [f"model.path={model}"]))
    for module in learner.model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = bnb_path
    return learner


def lora_grads(learner: Any, batch: Any) -> Any:
    """The LoRA gradient vector of the summed log-probs of the first micro-batch, in training mode."""
    import torch

    from rlvr_temp.batch import collate
    from rlvr_temp.learner.logprobs import policy_logprobs

    learner.model.train()
    learner.optimizer.zero_grad(set_to_none=True)
    mb = collate(batch, list(range(learner.lc.micro_batch_size)), learner.pad_id, learner.device)
    logprobs, _, _ = policy_logprobs(learner.model, mb, 1.0, learner.strategy, learner.ttm_head)
    (logprobs * mb.mask).sum().backward()
    return torch.cat([p.grad.flatten() for p in learner._trainable() if p.grad is not None])


def _row(case: str, times: dict[str, list[float]]) -> dict[str, Any]:
    ours, theirs = times["workaround"], times["bitsandbytes"]
    return {
        "case": case,
        "workaround_ms": 1e3 * statistics.median(ours),
        "bitsandbytes_ms": 1e3 * statistics.median(theirs),
        "ratio": statistics.median(theirs) / statistics.median(ours),
        "reps": len(ours),
    }


def run(model: str, quick: bool = False, threads: int = 1) -> dict[str, Any]:
    import torch
    from bitsandbytes.functional import has_avx512bf16

    torch.set_num_threads(threads)
    if not has_avx512bf16():
        return {"skipped": "this CPU has no AVX512-BF16: bitsandbytes has one CPU 4-bit path here, the workaround's"}
    reps = 5 if quick else 15
    ours, theirs = demo_learner(model, False), demo_learner(model, True)
    vocab = int(ours.model.get_input_embeddings().weight.shape[0])
    batch = make_batch(128, 48, vocab)
    rows = []
    out: dict[str, list[torch.Tensor]] = {}

    def logprobs(name: str, learner: Any) -> Any:
        def go() -> None:
            out[name] = learner._logprobs(batch, 1.0)

        return go

    # the first no-grad pass repacks bitsandbytes' learner (in the warm-up, untimed)
    times = interleaved({"workaround": logprobs("ours", ours), "bitsandbytes": logprobs("theirs", theirs)}, reps)
    rows.append(_row("no-grad log-prob pass, 128 x 48 tokens", times))
    max_diff = max(float((a - b).abs().max()) for a, b in zip(out["ours"], out["theirs"]))
    times = interleaved(
        {"workaround": lambda: ours.train_step(batch), "bitsandbytes": lambda: theirs.train_step(batch)},
        max(3, reps // 3),
    )
    rows.append(_row("update (train_step), 128 x 48 tokens, after a no-grad pass", times))

    # correctness, on a fresh pair (same initialisation): bitsandbytes' learner after one no-grad pass
    ours, theirs = demo_learner(model, False), demo_learner(model, True)
    theirs._logprobs(batch, 1.0)
    reference, repacked = lora_grads(ours, batch), lora_grads(theirs, batch)
    grad_error = float((repacked - reference).norm() / reference.norm())
    return {
        "model": model,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "max_logprob_diff": max_diff,
        "grad_rel_error": grad_error,
    }


def to_markdown(res: dict[str, Any]) -> str:
    if "skipped" in res:
        return f"SKIP: {res['skipped']}"
    lines = ["| case | workaround ms | bitsandbytes ms | bitsandbytes / workaround |", "|---|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['case']} | {r['workaround_ms']:,.1f} | {r['bitsandbytes_ms']:,.1f} | {r['ratio']:.3f} |")
    lines += [
        "",
        f"Largest log-prob difference between the two (bf16 kernel against fp32): {res['max_logprob_diff']:.2e}.",
        f"LoRA gradient after a no-grad pass, relative error of bitsandbytes' path: {res['grad_rel_error']:.3f}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = learner_args(__doc__, argv)
    res = run(args.model, args.quick, args.threads)
    print(to_markdown(res))
    return write_json(args.json, res)


if __name__ == "__main__":
    raise SystemExit(main())
