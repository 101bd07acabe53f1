"""The TRL comparison's figures and its docs/benchmarks.md section, from the result JSON of ``benchmarks.trl_grpo``.

Pure functions of that JSON (no TRL, no torch): :func:`summarise` turns one system's per-step times and generated
token counts into its medians; :func:`speedup` gives TRL / rlvr_temp per generated token (the headline) or per step;
:func:`to_markdown` and :func:`markdown_section` write the tables and the text. The setting the text describes comes
from the JSON's ``setting`` (written by ``trl_grpo.main``), so the page says what ran.
"""

from __future__ import annotations

import statistics
from typing import Any

PHASES = ("generate", "verify", "learn", "sync", "step")
HEADING = "## rlvr_temp vs TRL GRPOTrainer (`trl_grpo.py`)"
TARGET_RATIO = 2.0  # the issue: rlvr_temp at least twice as fast as TRL per generated token, at its defaults
ARMS = ("defaults", "tuned")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(per_step: list[dict[str, float]], responses: int) -> dict[str, Any]:
    """Medians over the measured steps (step 0 is the warm-up, dropped when there are more): each phase's seconds,
    the generated response tokens per step (mean), the mean response length and the milliseconds per generated token
    (the median over steps of step seconds / that step's tokens)."""
    timed = per_step[1:] if len(per_step) > 1 else per_step
    phases = {p: _median([s[p] for s in timed]) if all(p in s for s in timed) else float("nan") for p in PHASES}
    tokens = [s["tokens"] for s in timed if s.get("tokens")]
    per_token = [1000 * s["step"] / s["tokens"] for s in timed if s.get("tokens")]
    mean_tokens = statistics.fmean(tokens) if tokens else float("nan")
    return {
        "phases_s": phases,
        "tokens_per_step": mean_tokens,
        "response_length_mean": mean_tokens / responses,
        "ms_per_token": _median(per_token),
    }


def _rlvr(res: dict[str, Any], arm: str) -> dict[str, Any] | None:
    return next((r for r in res.get("rlvr", []) if r.get("arm") == arm), None)


def speedup(res: dict[str, Any], arm: str = "defaults", per: str = "token") -> float | None:
    """TRL / rlvr_temp (``arm``: ``defaults`` or ``tuned``): milliseconds per generated token (``per="token"``, the
    headline) or seconds per step (``per="step"``); None when either side is missing."""
    trl, ours = res.get("trl"), _rlvr(res, arm)
    if not trl or not ours:
        return None
    if per == "token":
        return trl["ms_per_token"] / ours["ms_per_token"] if ours["ms_per_token"] > 0 else None
    return trl["phases_s"]["step"] / ours["phases_s"]["step"] if ours["phases_s"]["step"] > 0 else None


def best_trl(sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """The TRL micro-batch variant of the pre-pass with the fewest milliseconds per generated token."""
    return min(sweep, key=lambda r: r["ms_per_token"])


def _name(c: dict[str, Any]) -> str:
    if "arm" in c:
        return f"rlvr_temp {c['arm']}"
    return f"TRL {c['micro_batch']} × {c['grad_accum']}"


def to_markdown(res: dict[str, Any]) -> str:
    """The main table: one column per system, then TRL / rlvr_temp per arm (phase rows: per step; the per-token row:
    per generated token, the headline)."""
    trl, ours = res.get("trl"), res.get("rlvr", [])
    cols = ([trl] if trl else []) + ours
    ratio_cols = ours if trl else []
    head = "| per step | " + " | ".join(_name(c) for c in cols)
    head += "".join(f" | TRL / {_name(o)}" for o in ratio_cols)
    lines = [head + " |", "|---|" + "---:|" * (len(cols) + len(ratio_cols))]
    steps = res["steps"]

    def row(label: str, fmt: str, get: Any, ratio: bool = True, bold: bool = False) -> None:
        cells = [format(get(c), fmt) for c in cols]
        for o in ratio_cols:
            mine = get(o)
            text = f"{get(trl) / mine:.2f}×" if ratio and mine > 0 else ""
            cells.append(f"**{text}**" if bold and text else text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for p in PHASES:
        row(f"{p} s (median of steps 2–{steps})", ".2f", lambda c, p=p: c["phases_s"][p])
    row("generated response tokens (mean)", ".0f", lambda c: c["tokens_per_step"], ratio=False)
    row("mean response length (tokens)", ".1f", lambda c: c["response_length_mean"], ratio=False)
    row("**ms per generated token** (median)", ".2f", lambda c: c["ms_per_token"], bold=True)
    row("start-up s (not compared)", ".1f", lambda c: c["startup_s"], ratio=False)
    return "\n".join(lines)


def sweep_markdown(res: dict[str, Any]) -> str:
    """The pre-pass table: TRL at each micro-batch size (one optimizer step per 64 responses each)."""
    sweep = res.get("trl_sweep") or []
    if not sweep:
        return ""
    best = best_trl(sweep)
    lines = [
        "| TRL `per_device_train_batch_size` × `gradient_accumulation_steps` | step s | learn s | tokens | "
        "ms per generated token | |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in sweep:
        lines.append(
            f"| {r['micro_batch']} × {r['grad_accum']} | {r['phases_s']['step']:.2f} | {r['phases_s']['learn']:.2f} | "
            f"{r['tokens_per_step']:.0f} | {r['ms_per_token']:.2f} | {'fastest' if r is best else ''} |"
        )
    return "\n".join(lines)


def _micro(ours: dict[str, Any]) -> str:
    """``arm: <its config>``, with the budget the learner reports using (e.g. ``auto`` resolved) where it differs."""
    text = f"{ours['arm']}: {ours.get('micro_batching', '?')}"
    used = [v for k, v in ours.get("learner_metrics", {}).items() if k.endswith("micro_batch_tokens")]
    return text + (f" (the learner used {used[0]:,.0f})" if used and f"{used[0]:.0f}" not in text else "")


def markdown_section(res: dict[str, Any], machine: str, context: str) -> list[str]:
    """The docs/benchmarks.md section (``machine``: CPU, cores and date; ``context``: wall time and load)."""
    out = [HEADING, ""]
    if "skipped" in res:
        return [*out, f"SKIPPED: {res['skipped']}.", ""]
    s, sh, trl = res["setting"], res["shape"], res.get("trl") or {}
    n, steps, sweep = s["prompts"] * s["group"], res["steps"], res.get("trl_sweep") or []
    arms = "; ".join(_micro(o) for o in res.get("rlvr", []))
    sizes = ", ".join(str(m) for m in s["trl_micro_batches"])
    out += [
        f"Ran on {machine}. Model: {res['n_params']:,} parameters ({res['n_params'] / 1e6:.1f}M), Qwen2's shape "
        f"(hidden {sh['hidden_size']}, {sh['num_hidden_layers']} layers, {sh['num_attention_heads']} query / "
        f"{sh['num_key_value_heads']} key-value heads, intermediate {sh['intermediate_size']}, tied embeddings) as a "
        "`LlamaForCausalLM` (no q/k/v biases: `transformers` 5 forces `Qwen2Tokenizer` on a `qwen2` checkpoint), "
        f"random weights, the character tokenizer (vocabulary {sh['vocab_size']}).",
        f"Both systems: the same {s['n_train']} synthetic arithmetic prompts, {s['prompts']} prompts × {s['group']} "
        f"responses per step, ≤ {s['max_tokens']} response tokens, temperature 1.0 (no top-p / top-k), full "
        f"fine-tuning, `torch.optim.AdamW(fused=True)` lr {s['lr']:g} constant, no weight decay, clip-norm 1.0, no "
        f"KL, one pass per batch, DAPO token-mean loss (clip 0.2 / 0.28), one optimizer step per {n} responses. "
        "Reward: the project's verifier; the random model never writes an answer, so every reward and advantage is "
        "0 and the gradient is zero, but both systems still run the whole update (forward, backward, optimizer).",
        f"TRL {trl.get('version', '')} `GRPOTrainer` at its defaults except the setting above: `optim` not set, so "
        f"`{trl.get('optim', '?')}` (fused AdamW, the default of `transformers`' `TrainingArguments`); generation by "
        f"`transformers` `generate` (`use_vllm=False`, TRL's default: one padded batch of {n}); {s['threads']} torch "
        "threads, not pinned (TRL has no such setting). Its micro-batch: `per_device_train_batch_size` of "
        f"{sizes} with `gradient_accumulation_steps` = {n} / that (one generation batch of {n} and one optimizer step "
        "each), each micro-batch padded to its longest; a pre-pass of "
        f"{(sweep[0]['steps'] - 1) if sweep else 0} measured step(s) each after a warm-up picked the fastest per "
        f"generated token ({trl.get('micro_batch', '?')} × {trl.get('grad_accum', '?')}), which the main run uses.",
        f"rlvr_temp: `Trainer.train_step()` (Ray, one vLLM CPU rollout worker, the learner actor, {s['threads']} CPUs, "
        f"layout `{s.get('layout', '?')}`); the engine's OpenMP threads pinned to cores (`rollout.engine.cpu_bind`, "
        "its default); each group's prompt run once (`learner.share_prompts`, default). Two arms: *defaults* sets "
        "no micro-batch key (the learner's own default), *tuned* sets `learner.micro_batch_tokens: "
        f"{s['tuned_micro_batch_tokens']}` (verl's dynamic batch size, the fastest on this machine) — {arms}; the "
        "same gradient either way.",
        "Work: each system's generated response tokens per step are counted from what it generated (TRL: the "
        f"completion ids `_generate` returns; rlvr_temp: `response/length_mean` × {n}). The two sample differently "
        "(their own random streams and prompt order), so their lengths differ; both generation and the update scale "
        "with tokens, so the headline is time per generated token. The three systems run in their own processes, "
        "steps interleaved (one step of one system at a time, order reversed every step: `benchmarks/interleave.py`; "
        "the idle ones' Ray daemons and threads still run beside); medians of steps "
        f"2–{steps} (step 1 is a warm-up). TRL *learn* is its optimizer step minus generation and reward.",
        "",
        to_markdown(res),
        "",
    ]
    if sweep:
        out += ["TRL's micro-batch pre-pass (interleaved, before the main run):", "", sweep_markdown(res), ""]
    out += [context, ""]
    tok, step = speedup(res, "defaults"), speedup(res, "defaults", "step")
    if tok is not None and step is not None:
        met = "met" if tok >= TARGET_RATIO else "**not met**"
        text = (
            f"TRL ÷ rlvr_temp per generated token: **{tok:.2f}×** with rlvr_temp's defaults (target "
            f"≥ {TARGET_RATIO:.0f}×: {met}); per step {step:.2f}×."
        )
        if (tok2 := speedup(res, "tuned")) is not None and (step2 := speedup(res, "tuned", "step")) is not None:
            text += f" Tuned: {tok2:.2f}× per generated token, {step2:.2f}× per step."
        out += [text, ""]
    return out
