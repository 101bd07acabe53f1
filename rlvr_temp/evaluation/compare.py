"""`rlvr-temp compare`: runs grouped into arms over seeds, side by side -- training curves (mean over seeds, min–max
band), held-out avg@n and pass@k with bootstrap intervals over problems and seeds, and each arm's paired
difference to a baseline arm. Runs in the process of the ``compare`` command (and of ``rlvr-temp demo``).

Works on finished runs and on runs still in progress (it reads ``metrics.jsonl`` and ``eval/step_*.json`` as they
are), on runs of different lengths, and on a whole sweep's directory. Writes ``compare.png`` (training curves;
held-out curves with a marker per evaluation), ``pass_at_k.png`` (when there are held-out evaluations),
``summary.md`` and a self-contained ``report.html``. Which runs, and which arms: rlvr_temp.evaluation.runs; the
intervals: rlvr_temp.evaluation.stats; the document: rlvr_temp.evaluation.report. See docs/evaluation.md.
Multiplicity: each difference has its own interval and verdict, and a Holm–Bonferroni verdict over every
difference in the report (the family) beside it. An arm with one seed gets problem-level verdicts, said so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rlvr_temp.evaluation import report
from rlvr_temp.evaluation.report import HOW_TO_READ, Doc, Table, plot_panels, verdict
from rlvr_temp.evaluation.runs import (
    config_differences,
    eval_files,
    group_runs,
    key_matters,
    load_runs,
    run_labels,
    run_seed,
)
from rlvr_temp.evaluation.stats import N_BOOT, SEED, diff_intervals, holm, k_values, mean_intervals, problem_scores

DEFAULT_METRICS = (
    "reward/mean",
    "acc/mean",
    "rollout/hot_token_share",
    "rollout/entropy_mean",
    "response/length_mean",
    "logprob/mismatch_mean",
)


# ------------------------------------------------------------------------------------------------- curves
def _series(rows: list[dict[str, Any]], metric: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in rows:
        v = row.get(metric)
        if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
            xs.append(int(row["step"]))
            ys.append(float(v))
    return xs, ys


def _smooth(ys: list[float], window: int) -> list[float]:
    if window <= 1:
        return ys
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def arm_curve(runs: list[dict[str, Any]], metric: str, smooth: int = 1) -> tuple[np.ndarray, ...] | None:
    """``(steps, mean, low, high)`` of ``metric`` over the runs (each smoothed first) at the steps every run that
    logs the metric has; ``low``/``high`` are the minimum and maximum over runs. None if no run logs it."""
    per_run = []
    for run in runs:
        xs, ys = _series(run["rows"], metric)
        if xs:
            per_run.append(dict(zip(xs, _smooth(ys, smooth))))
    if not per_run:
        return None
    steps = sorted(set.intersection(*(set(d) for d in per_run)))
    values = np.array([[d[s] for s in steps] for d in per_run]).reshape(len(per_run), len(steps))
    return np.array(steps), values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def curve_panels(arms: dict[str, list[dict[str, Any]]], metrics: list[str], per_t: list[str], smooth: int) -> dict:
    """The panels of ``compare.png`` (:func:`rlvr_temp.evaluation.report.plot_panels`): one per metric, a curve per
    arm; held-out curves (``eval/*``, a point per evaluation, often one) with a marker on every point."""
    panels: dict[str, list[dict]] = {}
    for metric in metrics:
        panels[metric] = []
        marker = "o" if metric.startswith("eval/") else None
        for a_i, (arm, runs) in enumerate(arms.items()):
            curve = arm_curve(runs, metric, smooth)
            if curve is not None:
                xs, mean, low, high = curve
                band = {"low": low, "high": high} if len(runs) > 1 else {}
                label = f"{arm} ({len(runs)} seeds)" if len(runs) > 1 else arm
                series = {"x": xs, "y": mean, "label": label, "color": f"C{a_i}", "marker": marker, **band}
                panels[metric].append(series)
    if per_t:
        import matplotlib.pyplot as plt

        temps = [float(k.split("=", 1)[1]) for k in per_t]
        lo, hi = min(temps), max(temps)
        series = panels["acc per rollout temperature"] = []
        for a_i, (arm, runs) in enumerate(arms.items()):
            for k, t in zip(per_t, temps):
                curve = arm_curve(runs, k, smooth)
                if curve is not None:
                    colour = plt.cm.coolwarm(0.5 if hi == lo else (t - lo) / (hi - lo))
                    ls = ["-", "--", ":", "-."][a_i % 4]
                    series.append({"x": curve[0], "y": curve[1], "label": f"{arm} {k[4:]}", "color": colour, "ls": ls})
    return panels


# ------------------------------------------------------------------------------------------------- held-out scores
def heldout_scores(arms: dict[str, list[dict[str, Any]]], step: int | None = None) -> dict[str, Any]:
    """Per-problem held-out scores at one evaluation step of every run.

    ``step`` None: the latest step at which every run that has evaluations has one (else each run's latest).
    Returns ``{"step": ..., "notes": [...], "datasets": {set: {"metrics": ["avg@n", "pass@1", ...],
    "arms": {arm: [(run, {problem: np.ndarray(metrics)}), ...]}}}}``; pass@k is the unbiased estimator of
    :func:`rlvr_temp.evaluation.stats.pass_at_k` from each problem's count of correct samples, k = 1, 2, 4, ..., n
    (the smallest n of the set's runs)."""
    files = {id(r): eval_files(r["path"]) for runs in arms.values() for r in runs}
    with_eval = [r for runs in arms.values() for r in runs if files[id(r)]]
    notes: list[str] = []
    if not with_eval:
        return {"step": step, "notes": notes, "datasets": {}, "settings": []}
    chosen: dict[int, int] = {}
    if step is None:
        common = set.intersection(*(set(files[id(r)]) for r in with_eval))
        if common:
            step = max(common)
        else:
            notes.append("the runs have no evaluation step in common: each run's latest is used")
    for run in with_eval:
        if step is None:
            chosen[id(run)] = max(files[id(run)])
        elif step in files[id(run)]:
            chosen[id(run)] = step
    missing = [str(r["path"]) for r in with_eval if id(r) not in chosen]
    if missing:
        notes.append(f"no evaluation at step {step} in: " + ", ".join(f"`{m}`" for m in missing))
    records = {}
    for run in with_eval:
        if id(run) in chosen:
            try:
                records[id(run)] = json.loads(files[id(run)][chosen[id(run)]].read_text())
            except (OSError, json.JSONDecodeError) as exc:
                notes.append(f"`{run['path']}`: unreadable evaluation file ({exc})")
    settings = sorted({(rec.get("temperature"), rec.get("top_p")) for rec in records.values()}, key=repr)
    if len(settings) > 1:
        notes.append("the runs were evaluated with different sampling settings (temperature, top-p): " + repr(settings))
    names = sorted({d for rec in records.values() for d in rec.get("datasets", {})})
    datasets: dict[str, Any] = {}
    for name in names:
        data = {id(r): records[id(r)]["datasets"].get(name) for rs in arms.values() for r in rs if id(r) in records}
        ns = {len(p["correct"]) for d in data.values() if d for p in d.values()}
        if not ns or min(ns) < 1:
            notes.append(f"`{name}`: no samples")
            continue
        ks = k_values(min(ns))
        metrics = [f"avg@{min(ns)}" if len(ns) == 1 else "avg@n"] + [f"pass@{k}" for k in ks]
        per_arm: dict[str, list] = {}
        for arm, runs in arms.items():
            for run in runs:
                if not data.get(id(run)):
                    continue
                per_arm.setdefault(arm, []).append((run, problem_scores(data[id(run)], ks), chosen[id(run)]))
        datasets[name] = {"metrics": metrics, "arms": per_arm}
    return {"step": step, "notes": notes, "datasets": datasets, "settings": settings}


def _same_seeds(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Both lists ran the same distinct seeds (they are sorted by seed, so row i of each is the same seed)."""
    seeds_a, seeds_b = [run_seed(r) for r in a], [run_seed(r) for r in b]
    return None not in seeds_a and len(set(seeds_a)) == len(seeds_a) and seeds_a == seeds_b


def _fmt_steps(steps: list[int]) -> str:
    return str(min(steps)) if min(steps) == max(steps) else f"{min(steps)}–{max(steps)}"


def _runs_section(
    doc: Doc, runs: list[dict[str, Any]], labels: list[str], arms, present: list[str], last_k: int, notes: list[str]
) -> None:
    heads = [f"{m} {what}" for m in present[:3] for what in (f"first {last_k}", f"last {last_k}", "best")]
    table = Table(["run", "steps", "wall time (s)", *heads])
    for run, label in zip(runs, labels):
        rows = run["rows"]
        cells = [label, str(len(rows)), f"{sum(float(r.get('time/step', 0.0)) for r in rows):.0f}"]
        for m in present[:3]:
            _, ys = _series(rows, m)
            if ys:
                first, last = sum(ys[:last_k]) / len(ys[:last_k]), sum(ys[-last_k:]) / len(ys[-last_k:])
                best = max(ys) if "mismatch" not in m else min(ys)
                cells += [f"{first:.3f}", f"{last:.3f}", f"{best:.3f}"]
            else:
                cells += ["-", "-", "-"]
        table.rows.append(cells)
    doc.h2("Runs")
    doc.table(table)
    doc.ul(notes)
    diff = config_differences(runs)
    doc.p("Config differences: " + (", ".join(f"`{k}`" for k in diff) if diff else "none"))
    doc.ul([f"`{k}`: " + "; ".join(_values(arms, k)) for k in diff])


def _values(arms: dict[str, list[dict[str, Any]]], key: str) -> list[str]:
    """``arm=value`` for each arm with a run that ``key`` matters to (:func:`~rlvr_temp.evaluation.runs.key_matters`:
    a ``fixed`` arm has no ``temperature.token.*``), its distinct values in seed order."""
    out = []
    for arm, runs in arms.items():
        values = [repr(r["config"].get(key)) for r in runs if key_matters(r, key)]
        if values:
            out.append(f"{arm}={', '.join(dict.fromkeys(values))}")
    return out


def _arms_section(doc: Doc, arms: dict[str, list[dict[str, Any]]], present: list[str], last_k: int) -> None:
    table = Table(
        ["arm", "runs", "seeds", "steps", *(f"{m} last {last_k}: mean over seeds (min–max)" for m in present[:3])]
    )
    for arm, runs in arms.items():
        cells = [arm, str(len(runs)), ", ".join("?" if run_seed(r) is None else str(run_seed(r)) for r in runs)]
        cells.append(_fmt_steps([len(r["rows"]) for r in runs]))
        for m in present[:3]:
            lasts = [sum(ys[-last_k:]) / len(ys[-last_k:]) for ys in (_series(r["rows"], m)[1] for r in runs) if ys]
            spread = f" ({min(lasts):.3f}–{max(lasts):.3f})" if len(lasts) > 1 else ""
            cells.append(f"{sum(lasts) / len(lasts):.3f}{spread}" if lasts else "-")
        table.rows.append(cells)
    doc.h2("Arms")
    doc.table(table)


def _heldout_section(doc: Doc, arms, base: str, step: int | None, boot: dict[str, Any], out: Path) -> Path | None:
    """Held-out tables, the pass@k plot and the differences to ``base``; returns the plot's path (None: no plot)."""
    doc.h2("Held-out evaluation")
    ho = heldout_scores(arms, step)
    if not ho["datasets"]:
        steps = sorted({s for runs in arms.values() for r in runs for s in eval_files(r["path"])})
        why = f"evaluated steps: {', '.join(map(str, steps))}" if steps else "no `eval/step_*.json` in the runs"
        where = f" at step {step}" if step is not None else ""
        doc.p(f"No held-out evaluation{where} ({why}): the arms are compared on training curves only.")
        doc.ul(ho["notes"])
        return None
    when = f"after step {ho['step']}" if ho["step"] is not None else "each run's latest"
    how = ", ".join(f"T={t}, top-p {p}" for t, p in ho["settings"])
    doc.p(f"Evaluation {when} ({how}). Mean over problems and seeds [{boot['level']:.0%} bootstrap interval].")
    doc.ul(ho["notes"])
    single = list(dict.fromkeys(a for i in ho["datasets"].values() for a, m in i["arms"].items() if len(m) == 1))
    if single:
        them = "it" if len(single) == 1 else "them"
        doc.p(report.ONE_SEED_NOTE.format(arms=", ".join(f"`{a}`" for a in single), them=them))
    plotted: dict[str, Any] = {}
    for name, info in ho["datasets"].items():
        table = Table(["arm", "seeds", "problems", "step", *info["metrics"]])
        ivs_by_arm = {}
        for arm, members in info["arms"].items():
            ivs, n_prob = mean_intervals([scores for _, scores, _ in members], **boot)
            if ivs:
                ivs_by_arm[arm] = ivs
                steps = _fmt_steps([s for _, _, s in members])
                table.rows.append([arm, str(len(members)), str(n_prob), steps, *(i.format() for i in ivs)])
        doc.h3(f"`{name}`")
        doc.table(table)
        ks = [int(m.split("@")[1]) for m in info["metrics"][1:]]
        plotted[f"{name}: pass@k ({when})"] = [
            {
                "x": ks,
                "y": [i.mean for i in ivs[1:]],
                "low": [i.low for i in ivs[1:]],
                "high": [i.high for i in ivs[1:]],
            }
            | {"label": arm, "color": f"C{list(arms).index(arm)}", "marker": "o"}
            for arm, ivs in ivs_by_arm.items()
        ]
    png = plot_panels(plotted, out / "pass_at_k.png", xlabel="k (samples per problem)", ylabel="pass@k", log2_x=True)
    doc.img(png, f"pass@k against k, mean over problems and seeds; band: {boot['level']:.0%} bootstrap interval")
    doc.h2(f"Difference to {base}")
    _differences(doc, ho["datasets"], base, boot)
    return png


def _differences(doc: Doc, datasets: dict[str, Any], base: str, boot: dict[str, Any]) -> None:
    """Per set, each other arm minus ``base``: a table of intervals and a verdict line per arm; then the family of
    all those differences with unadjusted and Holm-adjusted verdicts (:func:`~rlvr_temp.evaluation.stats.holm`
    at ``1 - level`` on each interval's bootstrap p-value)."""
    family: list[dict[str, Any]] = []
    blocks: list[tuple[str, Table | None, list]] = []
    for name, info in datasets.items():
        others = [a for a in info["arms"] if a != base]
        if base not in info["arms"] or not others:
            why = "no other arm to compare." if base in info["arms"] else f"{base} has no evaluation of this set."
            blocks.append((name, None, [f"`{name}`: {why}"]))
            continue
        table = Table(["arm", "paired by", "problems", *(f"Δ {m}" for m in info["metrics"])])
        entries: list = []
        for arm in others:
            mine, theirs = info["arms"][arm], info["arms"][base]
            paired = _same_seeds([r for r, _, _ in mine], [r for r, _, _ in theirs])
            scores = [[sc for _, sc, _ in members] for members in (mine, theirs)]
            ivs, n_prob = diff_intervals(*scores, paired_seeds=paired, **boot)
            if not ivs:
                entries.append(f"**{arm}** vs {base} on `{name}`: no problems in common")
                continue
            pairing = "problem and seed" if paired else "problem (seeds averaged within each arm)"
            table.rows.append([f"{arm} − {base}", pairing, str(n_prob), *(i.format(signed=True) for i in ivs)])
            one = min(len(mine), len(theirs)) == 1
            entries.append([arm, base, ivs, one, len(family)])  # the last: where its rows start in the family
            family += [
                {"name": name, "arm": arm, "base": base, "metric": m, "iv": iv, "one_seed": one}
                for m, iv in zip(info["metrics"], ivs)
            ]
        blocks.append((name, table, entries))
    level = boot["level"]
    adjusted, rejected = holm([r["iv"].p for r in family], 1.0 - level)
    for row, p_holm, rej in zip(family, adjusted, rejected):
        row |= {"p_holm": p_holm, "rejected": rej}
    for e in (e for _, _, entries in blocks for e in entries if not isinstance(e, str)):
        e[4] = (rejected[e[4] :], len(family))
    for name, table, entries in blocks:
        if table is None:
            doc.p(entries[0])
            continue
        doc.h3(f"`{name}`: arm − {base}")
        doc.table(table)
        lines, metrics = [], datasets[name]["metrics"]
        for e in entries:  # a verdict line per arm, or why there is none
            lines.append(
                e if isinstance(e, str) else verdict(*e[:2], name, metrics, e[2], level, one_seed=e[3], holm=e[4])
            )
        doc.ul(lines)
    if family:
        doc.h3("Multiple comparisons")
        doc.p(
            report.MULTIPLE_NOTE.format(m=len(family), level=level, alpha=1 - level, chance=len(family) * (1 - level))
        )
        doc.table(report.holm_table(family, level))


def compare_runs(
    run_dirs: list[str | Path],
    out_dir: str | Path,
    *,
    metrics: list[str] | None = None,
    smooth: int = 1,
    last_k: int = 5,
    group_by: str | None = None,
    baseline: str | None = None,
    step: int | None = None,
    n_boot: int = N_BOOT,
    rng_seed: int = SEED,
    level: float = 0.95,
) -> dict[str, Path]:
    """Write ``compare.png`` (training curves per arm), ``pass_at_k.png`` (if any run has held-out evaluations),
    ``summary.md`` and ``report.html``; return their paths as ``plot``, ``pass_at_k``, ``table``, ``report``.

    ``run_dirs``: run directories, sweep directories and directories of runs
    (:func:`rlvr_temp.evaluation.runs.load_runs`). ``group_by``: dotted config key naming a run's arm (default:
    :func:`rlvr_temp.evaluation.runs.arm_name`). ``baseline``: the arm the others are compared to (default:
    ``fixed`` if there is such an arm, else the first). ``step``: the held-out evaluation to tabulate (default: the
    latest step evaluated by every run)."""
    runs, notes = load_runs(run_dirs)
    labels = run_labels(runs)
    arms = group_runs(runs, group_by)
    if baseline is not None and baseline not in arms:
        raise ValueError(f"baseline {baseline!r} is not an arm; the arms are: " + ", ".join(arms))
    base = baseline or ("fixed" if "fixed" in arms else next(iter(arms)))
    wanted = list(metrics or DEFAULT_METRICS)
    keys = {k for r in runs for row in r["rows"] for k in row}
    if not metrics and "control/knob" in keys:  # temperature.control: the knob each step sampled at
        wanted.append("control/knob")
    if not metrics:  # periodic evaluation curves, when the runs have them
        wanted += sorted(k for k in keys if k.startswith("eval/") and ("/avg@" in k or "/pass@1" in k))
    per_t = sorted(k for k in keys if k.startswith("acc/T="))
    present = [m for m in wanted if any(_series(r["rows"], m)[0] for r in runs)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "compare.png"
    plot_panels(curve_panels(arms, present, per_t, smooth), png)

    boot = {"n_boot": n_boot, "rng_seed": rng_seed, "level": level}
    doc = Doc()
    doc.h1("Run comparison")
    doc.p(HOW_TO_READ.format(**boot))
    _runs_section(doc, runs, labels, arms, present, last_k, notes)
    _arms_section(doc, arms, present, last_k)
    doc.img(png, "Training curves: mean over each arm's seeds; band: min–max over seeds")
    passk = _heldout_section(doc, arms, base, step, boot, out)
    paths = {"plot": png, "table": out / "summary.md", "report": out / "report.html"}
    if passk is not None:
        paths["pass_at_k"] = passk
    paths["table"].write_text(doc.markdown(out))
    paths["report"].write_text(doc.html("Run comparison"))
    return paths
