"""Evaluation: sample ``k`` responses per problem with vLLM, score them with the verifier, report per dataset
avg@k, unbiased pass@k (Chen et al. 2021, arXiv 2107.03374) for k = 1, 2, 4, ..., K, maj@K, mean response
length and truncation rate (the estimators: rlvr_temp.evaluation.stats).

Runs in the driver: ``rlvr-temp eval`` (:func:`evaluate_model`, its own rollout worker) and the trainer's periodic
held-out evaluation (:func:`evaluate_run`, on the run's engines); generation happens in the rollout worker.

The paper's protocol (docs/evaluation.md): temperature 0.6, top-p 0.95, AIME avg@256, AMC avg@32, MATH-500 / Minerva /
OlympiadBench avg@1, token rule off. ``synthetic`` is the tiny model's held-out arithmetic split.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import ray
import yaml
from transformers import AutoTokenizer

from rlvr_temp.config.schema import (
    DataConfig,
    EngineConfig,
    EvalConfig,
    ModelConfig,
    RunConfig,
    TemperatureConfig,
    TokenRuleConfig,
)
from rlvr_temp.data import synthetic
from rlvr_temp.data.prompts import DEFAULT_TEMPLATE, format_prompts
from rlvr_temp.data.sources import load_prompts
from rlvr_temp.data.tiny_model import ensure_tiny_model
from rlvr_temp.evaluation.stats import k_values, maj_at_k, pass_at_k
from rlvr_temp.reward.verify import Verifier, extract_answer
from rlvr_temp.temperature import TemperatureStrategy, make_strategy
from rlvr_temp.utils import atomic_write_text, derive_seed


def summarize(samples: list[dict[str, Any]], n: int) -> dict[str, float]:
    """Metrics of one dataset from its samples (``problem``, ``correct``, ``answer``, ``length``, ``truncated``)."""
    by_problem: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        by_problem.setdefault(s["problem"], []).append(s)
    out: dict[str, float] = {"problems": len(by_problem), f"avg@{n}": 0.0}
    if not by_problem:
        return out
    out[f"avg@{n}"] = sum(s["correct"] for s in samples) / len(samples)
    for k in k_values(n):
        out[f"pass@{k}"] = sum(
            pass_at_k(len(g), sum(int(s["correct"] >= 0.5) for s in g), k) for g in by_problem.values()
        ) / len(by_problem)
    out[f"maj@{n}"] = sum(
        maj_at_k([s["answer"] for s in g], [s["correct"] for s in g], n) for g in by_problem.values()
    ) / len(by_problem)
    out["length_mean"] = sum(s["length"] for s in samples) / len(samples)
    out["truncated"] = sum(s["truncated"] for s in samples) / len(samples)
    return out


# ------------------------------------------------------------------------------------------------- data
def eval_rows(name: str, limit: int | None = None) -> list[dict[str, str]]:
    """Rows (``id``, ``question``, ``ground_truth``) of a bundled set, ``synthetic``, or a file path."""
    if name == "synthetic":
        rows = synthetic.generate(limit or 200, levels=(1, 2, 3), seed=0, split="test")
        return [{"id": r["id"], "question": r["question"], "ground_truth": r["answer"]} for r in rows]
    return [dict(r) for r in load_prompts(name, limit=limit)]


# ------------------------------------------------------------------------------------------------- run
def evaluate_with(
    worker: Any,
    tokenizer: Any,
    verifier: Any,
    ev: EvalConfig,
    prompts: DataConfig,
    *,
    max_tokens: int,
    strategy: TemperatureStrategy | None = None,
    seed: int = 0,
    per_problem: dict[str, dict[str, dict[str, list]]] | None = None,
) -> dict[str, dict[str, float]]:
    """Evaluate with a live :class:`rlvr_temp.engine.worker.RolloutWorker` (in-process object or Ray actor) as the
    ``eval`` section says (sets, samples per problem, temperature, top-p, limit), prompts formatted as the ``data``
    section says. Every response is sampled at ``ev.temperature``; ``strategy`` adds a per-token rule (default: none).
    ``per_problem``, when given, receives every sample's score and answer by set and problem id
    (``{set: {problem: {"correct": [...], "answers": [...]}}}``), so that runs can be compared problem by problem."""
    call = worker.generate.remote if hasattr(worker.generate, "remote") else worker.generate
    results: dict[str, dict[str, float]] = {}
    for name in ev.datasets:
        rows = eval_rows(name, ev.limit)
        texts = format_prompts(rows, tokenizer, prompts)
        temps = [[ev.temperature] * ev.n] * len(rows)
        ids = [r["id"] for r in rows]
        groups = call(texts, temps, prompt_ids=ids, max_tokens=max_tokens, strategy=strategy, top_p=ev.top_p, seed=seed)
        groups = ray.get(groups) if isinstance(groups, ray.ObjectRef) else groups
        flat = [(row, r) for row, g in zip(rows, groups) for r in g]
        scores = verifier.score_batch([r.text for _, r in flat], [row["ground_truth"] for row, _ in flat])
        samples = [
            {
                "problem": row["id"],
                "correct": c,
                "answer": extract_answer(r.text),
                "length": len(r.token_ids),
                "truncated": r.finish_reason == "length",
            }
            for (row, r), c in zip(flat, scores)
        ]
        results[name] = summarize(samples, ev.n)
        if per_problem is not None:
            kept = per_problem.setdefault(name, {})
            for sample in samples:
                entry = kept.setdefault(sample["problem"], {"correct": [], "answers": []})
                entry["correct"].append(float(sample["correct"]))
                entry["answers"].append(sample["answer"])
    return results


def evaluate_run(worker: Any, tokenizer: Any, verifier: Any, cfg: RunConfig, step: int) -> dict[str, float]:
    """A training run's held-out evaluation after ``step`` completed steps (its ``eval`` and ``data`` sections):
    metrics flattened to ``set/metric``, and every sample's outcome in ``<run>/eval/step_<step>.json``."""
    ev = cfg.eval
    max_tokens = ev.max_tokens or cfg.rollout.max_response_len
    seed = derive_seed(cfg.trainer.seed, "eval", step)
    per_problem: dict[str, dict[str, dict[str, list]]] = {}
    results = evaluate_with(
        worker, tokenizer, verifier, ev, cfg.data, max_tokens=max_tokens, seed=seed, per_problem=per_problem
    )
    record = {"step": step, "n": ev.n, "temperature": ev.temperature, "top_p": ev.top_p, "datasets": per_problem}
    atomic_write_text(Path(cfg.trainer.run_dir) / "eval" / f"step_{step:06d}.json", json.dumps(record) + "\n")
    return {f"{name}/{k}": v for name, r in results.items() for k, v in r.items()}


def evaluate_model(
    model: str,
    ev: EvalConfig,
    *,
    template: str | None = None,
    token_rule: TokenRuleConfig | None = None,
    seed: int = 0,
    max_model_len: int | None = None,
    dtype: str = "float32",
) -> dict[str, dict[str, float]]:
    """Evaluate a model directory, ``tiny``, or a run (``RUN`` or ``RUN@STEP``, exported on the fly) as ``ev`` says
    (``ev.max_tokens`` unset: 1024). With ``token_rule`` every response is sampled with the entropy rule around
    ``ev.temperature`` (``token`` mode)."""
    # imported here: rlvr_temp.engine.worker imports vLLM, which only this command (not the trainer's driver) needs
    from rlvr_temp.engine.worker import RolloutWorker

    model_path, run_template = _resolve_model(model, tempfile.mkdtemp(prefix="rlvr_temp_eval_"))
    prompts = DataConfig(prompt_template=template or run_template or DEFAULT_TEMPLATE)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    strategy = None
    if token_rule is not None:
        strategy = make_strategy(TemperatureConfig(mode="token", base=ev.temperature, token=token_rule))
    model_cfg = ModelConfig(path=model_path, dtype=dtype, max_model_len=max_model_len)
    worker = RolloutWorker(model_path, model_cfg, EngineConfig(), seed=seed)
    with Verifier() as verifier:
        max_tokens = ev.max_tokens or 1024
        return evaluate_with(
            worker, tokenizer, verifier, ev, prompts, max_tokens=max_tokens, strategy=strategy, seed=seed
        )


def _resolve_model(model: str, scratch: str) -> tuple[str, str | None]:
    """(model directory, prompt template the run used or None)."""
    if model == "tiny":
        return str(ensure_tiny_model()), synthetic.PROMPT_TEMPLATE
    run, _, step = model.partition("@")
    if (Path(run) / "checkpoints").is_dir():
        from rlvr_temp.learner.export import export_run  # the learner's modules (bitsandbytes): only for a run

        out = export_run(run, Path(scratch) / "model", step=int(step) if step else None)
        cfg = yaml.safe_load((Path(run) / "config.yaml").read_text())
        return str(out), cfg.get("data", {}).get("prompt_template")
    if not Path(model).is_dir():
        raise FileNotFoundError(f"--model {model}: not a model directory, a run with checkpoints, or 'tiny'")
    return model, None


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A markdown table of the results."""
    keys = sorted(
        {k for r in results.values() for k in r if k != "problems"},
        key=lambda k: (k.split("@")[0], int(k.split("@")[1]) if "@" in k else 0),
    )
    lines = ["| dataset | problems | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, r in results.items():
        cells = [f"{r.get(k, float('nan')):.4f}" if k != "length_mean" else f"{r.get(k, 0):.1f}" for k in keys]
        lines.append(f"| {name} | {int(r['problems'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(results: dict[str, dict[str, float]], path: str | Path, meta: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=float) + "\n")
    return path
