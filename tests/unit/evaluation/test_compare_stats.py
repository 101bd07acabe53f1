"""compare over seeds: arms, bootstrap intervals over problems and seeds, paired differences to a baseline, and the
markdown / HTML report, on synthetic run directories with known per-problem outcomes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from rlvr_temp.cli import main
from rlvr_temp.evaluation.compare import compare_runs, curve_panels, heldout_scores
from rlvr_temp.evaluation.report import draw_panels
from rlvr_temp.evaluation.runs import arm_name, config_differences, group_runs, load_run, strip_seed
from rlvr_temp.evaluation.stats import (
    Interval,
    bootstrap_diff,
    bootstrap_mean,
    diff_intervals,
    mean_intervals,
    pass_at_k,
    resample_counts,
)


def make_run(
    root: Path,
    arm: str,
    seed: int,
    outcomes: dict[str, dict[str, list[float]]] | None,
    *,
    steps: tuple[int, ...] = (10,),
    name: str | None = "",
    mode: str = "fixed",
    reward: float = 0.5,
    dirname: str | None = None,
    temperature: dict | None = None,
    log_eval: bool = False,
) -> Path:
    """A run directory: config.yaml, metrics.jsonl (10 steps) and, per step in ``steps``, ``eval/step_<N>.json``
    with ``outcomes`` ({set: {problem: [0/1 per sample]}}). ``temperature``: more of the config's section;
    ``log_eval``: the evaluations' avg@n in metrics.jsonl too (``eval/<set>/avg@<n>`` at each step in ``steps``)."""
    path = root / (dirname or f"{arm}_seed{seed}")
    path.mkdir(parents=True)
    cfg = {
        "trainer": {"name": arm if name == "" else name, "seed": seed, "run_dir": str(path)},
        "temperature": {"mode": mode, **(temperature or {})},
    }
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"step": s, "reward/mean": reward + 0.01 * s + 0.02 * seed, "time/step": 1.0} for s in range(10)]
    for d, probs in (outcomes or {}).items() if log_eval else ():
        n = len(next(iter(probs.values())))
        for step in steps:
            rows[min(step, 9)][f"eval/{d}/avg@{n}"] = float(np.mean([np.mean(c) for c in probs.values()]))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if outcomes is not None:
        (path / "eval").mkdir()
        for step in steps:
            datasets = {
                d: {pid: {"correct": c, "answers": ["1"] * len(c)} for pid, c in probs.items()}
                for d, probs in outcomes.items()
            }
            n = len(next(iter(next(iter(outcomes.values())).values())))
            record = {"step": step, "n": n, "temperature": 0.6, "top_p": 0.95, "datasets": datasets}
            (path / "eval" / f"step_{step:06d}.json").write_text(json.dumps(record) + "\n")
    return path


def bernoulli(rng: np.random.Generator, p: np.ndarray | float, problems: int, n: int) -> dict[str, list[float]]:
    draws = rng.random((problems, n)) < np.broadcast_to(np.asarray(p, dtype=float), (problems,))[:, None]
    return {f"q{i:03d}": [float(x) for x in row] for i, row in enumerate(draws)}


def exact(k_correct: int, n: int, problems: int) -> dict[str, list[float]]:
    return {f"q{i:03d}": [1.0] * k_correct + [0.0] * (n - k_correct) for i in range(problems)}


# ------------------------------------------------------------------------------------------------- bootstrap
def test_resample_counts_draw_n_with_replacement():
    counts = resample_counts(np.random.default_rng(0), 7, 50)
    assert counts.shape == (50, 7) and (counts.sum(axis=1) == 7).all() and (counts >= 0).all()
    assert (counts.max(axis=1) > 1).any()  # with replacement


def test_bootstrap_is_deterministic_with_its_seed():
    x = np.random.default_rng(1).random((3, 50))
    a, b = bootstrap_mean(x, rng_seed=7), bootstrap_mean(x, rng_seed=7)
    assert a == b
    assert bootstrap_mean(x, rng_seed=8) != a
    assert a.mean == pytest.approx(x.mean()) and a.low < a.mean < a.high


def test_bootstrap_coverage_of_a_bernoulli_mean():
    """A 95% interval from 100 Bernoulli(0.3) problems covers 0.3 about 95% of the time."""
    rng = np.random.default_rng(123)
    hits = 0
    reps = 300
    for r in range(reps):
        iv = bootstrap_mean((rng.random(100) < 0.3).astype(float), n_boot=500, rng_seed=r)
        hits += iv.includes(0.3)
    assert 0.89 <= hits / reps <= 0.99


def test_bootstrap_interval_narrows_with_problems():
    rng = np.random.default_rng(0)
    small = bootstrap_mean(rng.random(50))
    large = bootstrap_mean(rng.random(2000))
    assert large.high - large.low < 0.5 * (small.high - small.low)


def test_paired_seeds_remove_a_shared_seed_effect():
    """A seed effect common to both arms cancels when seeds are paired, not when they are resampled apart."""
    rng = np.random.default_rng(5)
    seed_effect = np.array([-0.3, 0.0, 0.3])[:, None]
    base = 0.5 + seed_effect + 0.05 * rng.standard_normal((3, 300))
    arm = base + 0.1 + 0.05 * rng.standard_normal((3, 300))
    paired = bootstrap_diff(arm, base, paired_seeds=True)
    apart = bootstrap_diff(arm, base, paired_seeds=False)
    assert paired.mean == pytest.approx(apart.mean) == pytest.approx((arm - base).mean())
    assert not paired.includes(0.0) and paired.high - paired.low < 0.2 * (apart.high - apart.low)


def test_bootstrap_shapes_and_errors():
    ivs = bootstrap_mean(np.ones((2, 10, 3)) * np.array([0.1, 0.2, 0.3]))
    assert [iv.mean for iv in ivs] == pytest.approx([0.1, 0.2, 0.3])
    assert all(iv.low == pytest.approx(iv.mean) == pytest.approx(iv.high) for iv in ivs)
    with pytest.raises(ValueError, match="aligned by problem"):
        bootstrap_diff(np.ones((1, 3)), np.ones((1, 4)), paired_seeds=False)
    with pytest.raises(ValueError, match="as many seeds"):
        bootstrap_diff(np.ones((2, 3)), np.ones((3, 3)), paired_seeds=True)
    assert Interval(0.1, -0.2, 0.3).format(signed=True) == "+0.100 [-0.200, +0.300]"
    assert Interval(0.1, 0.05, 0.3).sign() == 1 and Interval(-0.1, -0.3, -0.05).sign() == -1


def test_score_dicts_align_by_problem_id():
    a = [{"p1": np.array([1.0]), "p2": np.array([0.0]), "p3": np.array([1.0])}]
    b = [{"p3": np.array([0.0]), "p1": np.array([0.0])}]
    ivs, n = diff_intervals(a, b, paired_seeds=True)
    assert n == 2 and ivs[0].mean == 1.0  # p1 and p3 only, matched by id not position
    assert mean_intervals(a)[1] == 3 and mean_intervals([a[0], b[0]])[1] == 2


# ------------------------------------------------------------------------------------------------- arms
def test_arm_names_strip_seed_suffixes(tmp_path):
    assert [strip_seed(n) for n in ("fixed_seed1", "fixed-s2", "fixed-seed10", "fixed_s3", "s2", "fixed")] == [
        "fixed",
        "fixed",
        "fixed",
        "fixed",
        "s2",
        "fixed",
    ]
    dirs = {
        "token_seed0": "token",
        "token-s1": "token",
        "sweep/mixture/seed2": "mixture",
        "learned": "learned",
    }
    for d, arm in dirs.items():
        run = load_run(make_run(tmp_path, "x", 0, None, name=None, dirname=d))
        assert arm_name(run) == arm
    named = load_run(make_run(tmp_path, "fixed", 3, None, dirname="whatever"))
    assert arm_name(named) == "fixed" and arm_name(named, "temperature.mode") == "fixed"
    assert arm_name(named, "no.such.key") == "<unset>"


def test_group_runs_sorts_seeds(tmp_path):
    runs = [load_run(make_run(tmp_path, a, s, None)) for a, s in (("b", 2), ("a", 1), ("b", 0), ("a", 0))]
    arms = group_runs(runs)
    assert list(arms) == ["b", "a"]
    assert [r["config"]["trainer.seed"] for r in arms["b"]] == [0, 2]


# ------------------------------------------------------------------------------------------------- compare
def test_known_outcomes_give_known_means_and_intervals(tmp_path):
    """Every problem 4 of 5 correct vs 1 of 5: exact means, degenerate intervals, known pass@k."""
    runs = [make_run(tmp_path, "hot", s, {"synthetic": exact(4, 5, 40)}) for s in range(2)]
    runs += [make_run(tmp_path, "fixed", s, {"synthetic": exact(1, 5, 40)}) for s in range(2)]
    paths = compare_runs(runs, tmp_path / "out")
    md = paths["table"].read_text()
    pk = {k: pass_at_k(5, 1, k) for k in (1, 2, 4, 5)}  # 0.2, 0.4, 0.8, 1.0
    assert "| hot | 2 | 40 | 10 | 0.800 [0.800, 0.800] | 0.800 [0.800, 0.800] | 1.000 [1.000, 1.000] |" in md
    fixed_row = " | ".join(f"{v:.3f} [{v:.3f}, {v:.3f}]" for v in (0.2, *pk.values()))
    assert f"| fixed | 2 | 40 | 10 | {fixed_row} |" in md
    assert "| hot − fixed | problem and seed | 40 | +0.600 [+0.600, +0.600] | +0.600 [+0.600, +0.600] |" in md
    assert "higher than fixed at 95% on avg@5, pass@1, pass@2, pass@4" in md
    assert "not distinguishable from fixed at 95% on pass@5 (interval includes zero)" in md


def test_different_arms_interval_excludes_zero(tmp_path):
    """Arm A 80% correct, arm B 20%, 200 problems x 3 seeds x 4 samples: difference 0.6, interval excludes 0."""
    rng = np.random.default_rng(0)
    data = {arm: [bernoulli(rng, p, 200, 4) for _ in range(3)] for arm, p in (("hot", 0.8), ("fixed", 0.2))}
    runs = [make_run(tmp_path, arm, s, {"synthetic": o}) for arm, outs in data.items() for s, o in enumerate(outs)]
    arms = group_runs([load_run(r) for r in runs])
    ho = heldout_scores(arms)
    assert ho["step"] == 10 and ho["datasets"]["synthetic"]["metrics"] == ["avg@4", "pass@1", "pass@2", "pass@4"]
    members = {a: [sc for _, sc, _ in m] for a, m in ho["datasets"]["synthetic"]["arms"].items()}
    known = {a: np.mean([[np.mean(c) for c in o.values()] for o in outs]) for a, outs in data.items()}
    for arm in ("hot", "fixed"):
        ivs, n = mean_intervals(members[arm])
        assert n == 200 and ivs[0].mean == pytest.approx(known[arm], abs=1e-12)  # exactly the sample mean
        assert ivs[1].mean == pytest.approx(known[arm], abs=1e-12)  # pass@1 == avg@n
        assert ivs[0].low < known[arm] < ivs[0].high and ivs[0].high - ivs[0].low < 0.08
    diff, n = diff_intervals(members["hot"], members["fixed"], paired_seeds=True)
    assert n == 200 and diff[0].mean == pytest.approx(known["hot"] - known["fixed"], abs=1e-12)
    assert diff[0].mean == pytest.approx(0.6, abs=0.03) and diff[0].low > 0.5 and diff[0].sign() == 1
    md = compare_runs(runs, tmp_path / "out", baseline="fixed")["table"].read_text()
    assert f"| hot − fixed | problem and seed | 200 | {diff[0].format(signed=True)} |" in md
    assert "**hot** vs fixed on `synthetic`: higher than fixed at 95% on avg@4, pass@1, pass@2, pass@4" in md


def test_same_distribution_interval_includes_zero(tmp_path):
    """Two arms drawn from the same per-problem success rates: the difference interval includes zero."""
    rng = np.random.default_rng(1)
    difficulty = rng.random(150)
    data = {arm: [bernoulli(rng, difficulty, 150, 4) for _ in range(3)] for arm in ("token", "fixed")}
    runs = [make_run(tmp_path, arm, s, {"synthetic": o}) for arm, outs in data.items() for s, o in enumerate(outs)]
    paths = compare_runs(runs, tmp_path / "out")
    ho = heldout_scores(group_runs([load_run(r) for r in runs]))
    members = {a: [sc for _, sc, _ in m] for a, m in ho["datasets"]["synthetic"]["arms"].items()}
    diff, _ = diff_intervals(members["token"], members["fixed"], paired_seeds=True)
    assert all(iv.includes(0.0) for iv in diff) and all(iv.high - iv.low > 0.01 for iv in diff)
    md = paths["table"].read_text()
    assert "not distinguishable from fixed at 95% on avg@4, pass@1, pass@2, pass@4 (interval includes zero)" in md
    # identical outcomes: a zero-width interval at zero
    same = [make_run(tmp_path / "same", arm, 0, {"synthetic": data["fixed"][0]}) for arm in ("token", "fixed")]
    md = compare_runs(same, tmp_path / "out2")["table"].read_text()
    assert "| token − fixed | problem and seed | 150 | +0.000 [+0.000, +0.000] |" in md


def test_unpaired_seeds_and_missing_problems(tmp_path):
    """Different seeds: seeds resampled within each arm; only problems every run evaluated are compared."""
    a = [make_run(tmp_path, "token", s, {"synthetic": exact(3, 4, 30)}) for s in (0, 1, 2)]
    b = [make_run(tmp_path, "fixed", s, {"synthetic": exact(1, 4, 30 if s == 5 else 20)}) for s in (5, 6)]
    md = compare_runs(a + b, tmp_path / "out")["table"].read_text()
    assert "| fixed | 2 | 20 | 10 | 0.250 [0.250, 0.250] |" in md
    assert "| token − fixed | problem (seeds averaged within each arm) | 20 | +0.500 [+0.500, +0.500] |" in md


def test_group_by_config_key_and_eval_step(tmp_path):
    """--group-by temperature.mode; --step picks the evaluation; a step nobody evaluated has no held-out table."""
    runs = [
        make_run(tmp_path, f"r{i}", i, {"synthetic": exact(k, 2, 10)}, name=None, mode=mode, steps=(5, 10))
        for i, (mode, k) in enumerate((("token", 2), ("token", 2), ("fixed", 0), ("fixed", 0)))
    ]
    out = tmp_path / "out"
    argv = ["compare", *map(str, runs), "--out", str(out), "--group-by", "temperature.mode"]
    assert main([*argv, "--baseline", "fixed", "--step", "5"]) == 0
    md = (out / "summary.md").read_text()
    assert "Evaluation after step 5" in md and "| token | 2 | 10 | 5 | 1.000 [1.000, 1.000] |" in md
    assert "| token − fixed | problem (seeds averaged within each arm) | 10 | +1.000 [+1.000, +1.000] |" in md
    assert main([*argv, "--step", "7"]) == 0
    assert "No held-out evaluation at step 7 (evaluated steps: 5, 10)" in (out / "summary.md").read_text()
    assert main([*argv, "--baseline", "nope"]) == 2


def test_runs_without_eval_compare_on_training_curves(tmp_path):
    runs = [make_run(tmp_path, arm, s, None, reward=r) for arm, r in (("fixed", 0.2), ("token", 0.4)) for s in (0, 1)]
    paths = compare_runs(runs, tmp_path / "out")
    md = paths["table"].read_text()
    assert "No held-out evaluation" in md and "pass_at_k" not in paths
    assert "| token | 2 | 0, 1 | 10 |" in md  # arms table: runs, seeds, steps ...
    last = [0.4 + 0.01 * s + 0.02 * seed for seed in (0, 1) for s in range(5, 10)]
    assert f"{np.mean(last):.3f} ({np.mean(last[:5]):.3f}–{np.mean(last[5:]):.3f})" in md
    assert paths["plot"].stat().st_size > 10_000


def test_report_html_is_self_contained(tmp_path):
    rng = np.random.default_rng(2)
    runs = [
        make_run(tmp_path, arm, s, {"synthetic": bernoulli(rng, p, 30, 8), "other": bernoulli(rng, p, 20, 8)})
        for arm, p in (("fixed", 0.3), ("mixture", 0.6))
        for s in range(2)
    ]
    paths = compare_runs(runs, tmp_path / "out", smooth=3)
    page = paths["report"].read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count('src="data:image/png;base64,') == 2
    assert "How to read this" in page and "<table>" in page and "pass@8" in page
    assert 'src="http' not in page and '.png"' not in page
    assert paths["pass_at_k"].stat().st_size > 10_000
    md = paths["table"].read_text()
    assert "![" in md and "(compare.png)" in md and "(pass_at_k.png)" in md
    assert "### `other`: arm − fixed" in md and "### `synthetic`: arm − fixed" in md


# ------------------------------------------------------------------------------------------------- what a new user sees
def test_one_evaluation_step_is_drawn_as_points(tmp_path):
    """One held-out evaluation per run: each arm's held-out curve is one point, drawn with a marker (a line
    through one point draws nothing), and a band over seeds becomes an error bar."""
    runs = [make_run(tmp_path, "fixed", s, {"synthetic": exact(1, 4, 10)}, steps=(9,), log_eval=True) for s in (0, 1)]
    runs.append(make_run(tmp_path, "token", 0, {"synthetic": exact(3, 4, 10)}, steps=(9,), log_eval=True, mode="token"))
    paths = compare_runs(runs, tmp_path / "out")
    assert "pass_at_k" in paths and paths["plot"].stat().st_size > 10_000
    panels = curve_panels(group_runs([load_run(r) for r in runs]), ["eval/synthetic/avg@4"], [], 1)
    fig = draw_panels(panels)
    ax = fig.axes[0]
    curves = [line for line in ax.lines if not line.get_label().startswith("_")]  # not the error bars' caps
    assert ax.get_title() == "eval/synthetic/avg@4" and [c.get_label() for c in curves] == ["fixed (2 seeds)", "token"]
    assert all(len(c.get_xdata()) == 1 and c.get_marker() == "o" for c in curves)
    assert len(ax.collections) == 1  # fixed's two seeds: an error bar, not an invisible band
    lone = draw_panels({"a": [{"x": [3], "y": [0.5], "label": "one point"}]})
    assert lone.axes[0].lines[0].get_marker() == "o"  # any one-point series, marker asked for or not
    import matplotlib.pyplot as plt  # after draw_panels chose the Agg backend

    plt.close(fig)
    plt.close(lone)


def test_config_differences_show_only_the_keys_of_each_arms_mode(tmp_path):
    """``temperature.token.*`` is a difference for the token arm, not for the fixed one; settings of a mode that no
    arm uses are no difference at all."""
    section = {"token": {"t_low": 0.9, "t_high": 1.2}, "mixture": {"step": 0.05}, "learned": {"heads": 4}}
    token = {"token": {"t_low": 0.9, "t_high": 1.3}, "mixture": {"step": 0.1}, "learned": {"heads": 4}}
    learned = {"token": {"t_low": 0.9, "t_high": 1.2}, "mixture": {"step": 0.05}, "learned": {"heads": 8}}
    runs = [
        make_run(tmp_path, arm, 0, None, mode=mode, temperature=t)
        for arm, mode, t in (("fixed", "fixed", section), ("token", "token", token), ("learned", "learned", learned))
    ]
    loaded = [load_run(r) for r in runs]
    assert config_differences(loaded) == ["temperature.learned.heads", "temperature.mode", "temperature.token.t_high"]
    md = compare_runs(runs, tmp_path / "out")["table"].read_text()
    assert "- `temperature.token.t_high`: token=1.3\n" in md
    assert "- `temperature.learned.heads`: learned=8\n" in md
    assert "- `temperature.mode`: fixed='fixed'; token='token'; learned='learned'\n" in md
    assert "mixture.step" not in md and "fixed=1.2" not in md


def test_compare_a_sweep_directory(tmp_path, capsys):
    """``compare <sweep --out>``: the runs of its sweep.json (found under <out>/<recipe>/seed<k> wherever the sweep
    ran), those without a finished step left out with a note; a directory of run directories works too."""
    study = tmp_path / "study"
    planned = []
    for arm in ("fixed", "token"):
        for seed in (0, 1, 2):
            status = "pending" if (arm, seed) == ("token", 2) else "done"
            if status == "done":
                make_run(study / arm, arm, seed, None, dirname=f"seed{seed}", mode=arm)
            run_dir = f"elsewhere/{arm}/seed{seed}"  # relative to where the sweep ran
            planned.append({"recipe": f"recipes/demo/{arm}.yaml", "arm": arm, "seed": seed, "run_dir": run_dir})
            planned[-1] |= {"config_hash": "x", "status": status, "error": None}
    (study / "sweep.json").write_text(json.dumps({"command": "rlvr-temp sweep ...", "runs": planned}))
    assert main(["compare", str(study), "--out", str(study / "compare")]) == 0
    md = (study / "compare" / "summary.md").read_text()
    assert "| fixed | 3 | 0, 1, 2 | 10 |" in md and "| token | 2 | 0, 1 | 10 |" in md
    assert "- `token/seed2` (pending): no step finished, left out" in md
    # a directory of runs (rlvr-temp demo's out): every run below it
    demo = tmp_path / "demo"
    for arm in ("fixed", "token"):
        make_run(demo, arm, 0, None, dirname=arm, mode=arm)
    md = compare_runs([demo], demo / "compare")["table"].read_text()
    assert "| fixed | 1 | 0 | 10 |" in md and "| token | 1 | 0 | 10 |" in md
    # nothing finished yet: one line
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "sweep.json").write_text(json.dumps({"runs": [planned[0] | {"status": "pending"}]}))
    assert main(["compare", str(empty), "--out", str(tmp_path / "out")]) == 2
    assert "a sweep of 1 runs, none of which has finished a step yet" in capsys.readouterr().err
