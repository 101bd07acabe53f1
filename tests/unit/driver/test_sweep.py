"""`rlvr-temp sweep`: planning, placement-group sizing, the manifest's command check, engine sharing; end to end, a
2 recipes x 2 seeds sweep killed after its first run and run again trains only what was missing, a run on the shared
engine logging bitwise what it logs alone; the cluster path
(placement group per run, capturing the run's actors; a failed run reported in one line) with a stand-in for
``train`` on a local Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlvr_temp.cli import parse_args
from rlvr_temp.driver import local_runs, sweep

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "recipes" / "demo"
GPU = ROOT / "recipes" / "gpu"
SMALL = [
    "trainer.total_steps=2",
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "rollout.max_response_len=24",
    "eval.every=0",
    "logging.progress=false",
    "logging.tensorboard=false",
]


def test_plan_sets_seed_run_dir_name_and_resume(tmp_path):
    runs = sweep.plan([str(DEMO / "fixed.yaml"), str(DEMO / "mixture.yaml")], 2, tmp_path, SMALL)
    assert [r.label for r in runs] == ["fixed/seed0", "fixed/seed1", "mixture/seed0", "mixture/seed1"]
    for r in runs:
        t = r.cfg.trainer
        assert (t.seed, t.name, t.resume, t.total_steps) == (r.seed, r.arm, "auto", 2)
        assert Path(t.run_dir) == tmp_path / r.arm / f"seed{r.seed}" and r.config_hash == r.cfg.hash()
    assert len({r.config_hash for r in runs}) == 4
    with pytest.raises(sweep.SweepError, match=r"trainer\.seed=5"):
        sweep.plan([str(DEMO / "fixed.yaml")], 2, tmp_path, ["trainer.seed=5"])
    with pytest.raises(sweep.SweepError, match="share the name"):
        sweep.plan([str(DEMO / "fixed.yaml"), str(GPU / "../demo/fixed.yaml")], 1, tmp_path, [])
    args = parse_args(["sweep", "a.yaml", "b.yaml", "--seeds", "3", "x.y=1", "--out", "o", "z=2"])
    assert (args.recipes, args.overrides, args.seeds, args.out) == (["a.yaml", "b.yaml"], ["x.y=1", "z=2"], 3, "o")


def test_placement_bundles_follow_the_recipe():
    from rlvr_temp.config.schema import load_config

    gpu = load_config(GPU / "qwen_math_token.yaml")
    assert sweep.placement_bundles(gpu) == [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 1.0}]
    two = load_config(GPU / "qwen_math_token.yaml", ["rollout.num_workers=2", "ray.learner_cpus=0"])
    assert sweep.placement_bundles(two) == [{"CPU": 4.0, "GPU": 1.0}] * 2 + [{"GPU": 1.0}]
    assert sweep.placement_bundles(load_config(DEMO / "token.yaml")) == [{"CPU": 1.0}, {"CPU": 1.0}]
    none = load_config(DEMO / "token.yaml", ["ray.rollout_cpus=0", "ray.learner_cpus=0"])
    assert sweep.placement_bundles(none) == []


def test_engines_are_shared_when_model_and_engine_settings_match(tmp_path):
    arms = [str(DEMO / f"{a}.yaml") for a in ("fixed", "learned", "mixture")]
    runs = sweep.plan(arms, 2, tmp_path, SMALL)
    [(cfg, group)] = local_runs.engine_groups(runs)
    assert group == runs and cfg.temperature.mode == "learned"  # the TTM head's engine serves every arm
    runs += sweep.plan([str(DEMO / "token.yaml")], 1, tmp_path, [*SMALL, "model.max_model_len=200"])
    groups = local_runs.engine_groups(runs)
    assert [len(g) for _, g in groups] == [6, 1]


def test_another_command_in_the_same_out_is_refused(tmp_path, capsys, error_line):
    from rlvr_temp.cli import main

    recipes = [str(DEMO / "fixed.yaml")]
    runs = sweep.plan(recipes, 1, tmp_path, SMALL)
    command = {"command": "x", "recipes": recipes, "seeds": 1, "overrides": SMALL, "out": str(tmp_path)}
    sweep.Manifest(tmp_path, command, runs).write()
    before = (tmp_path / "sweep.json").read_text()
    assert main(["sweep", *recipes, "--seeds", "1", "--out", str(tmp_path), *SMALL, "rollout.top_p=0.9"]) == 2
    err = error_line(capsys.readouterr().err)
    assert "another sweep command" in err and "+rollout.top_p=0.9" in err
    assert main(["sweep", *recipes, str(DEMO / "token.yaml"), "--seeds", "1", "--out", str(tmp_path), *SMALL]) == 2
    assert f"(recipes: +{DEMO / 'token.yaml'})" in capsys.readouterr().err
    data = json.loads(before)  # same command, but the recipe resolves differently now: refused too
    data["runs"][0]["config_hash"] = "0" * 16
    (tmp_path / "sweep.json").write_text(json.dumps(data))
    assert main(["sweep", *recipes, "--seeds", "1", "--out", str(tmp_path), *SMALL]) == 2
    assert "fixed/seed0 changed" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- end to end
def _sweep_cmd(out: Path, model: str) -> list[str]:
    recipes = [str(DEMO / "fixed.yaml"), str(DEMO / "mixture.yaml")]
    options = ["--seeds", "2", "--out", str(out), *SMALL, "rollout.dump=true", f"model.path={model}"]
    return [sys.executable, "-m", "rlvr_temp.cli", "sweep", *recipes, *options]


def _logged(run_dir: Path) -> tuple[list[dict], list[str]]:
    """A run's metrics rows without their timings, and its rollout dumps (token ids, temperatures, log-probs,
    rewards of every response)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if k != "time" and not k.startswith("time/")} for r in rows]
    return rows, [p.read_text() for p in sorted((run_dir / "rollouts").glob("step_*.jsonl"))]


def _manifest(out: Path) -> dict:
    try:
        return json.loads((out / "sweep.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
def test_sweep_killed_after_its_first_run_resumes_only_what_is_missing(tmp_path, tiny_model_path):
    out = tmp_path / "sweep"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        _sweep_cmd(out, tiny_model_path),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        runs = _manifest(out).get("runs", [])
        if runs and runs[0]["status"] == "done":
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    runs = _manifest(out)["runs"]
    assert [r["status"] for r in runs[:2]] == ["done", "running"]
    first = out / "fixed" / "seed0" / "metrics.jsonl"
    stat, text = first.stat().st_mtime_ns, first.read_text()

    again = subprocess.run(_sweep_cmd(out, tiny_model_path), env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 runs in" in again.stdout and "1 done, 3 to run" in again.stdout
    started = [line.split()[1] for line in again.stdout.splitlines() if line.startswith("sweep:") and " -> " in line]
    assert started == ["fixed/seed1", "mixture/seed0", "mixture/seed1"]
    assert first.stat().st_mtime_ns == stat and first.read_text() == text
    manifest = _manifest(out)
    assert [(r["arm"], r["seed"], r["status"]) for r in manifest["runs"]] == [
        ("fixed", 0, "done"),
        ("fixed", 1, "done"),
        ("mixture", 0, "done"),
        ("mixture", 1, "done"),
    ]
    for r in manifest["runs"]:  # ordinary run directories, each with one row per step (none left from the kill)
        rows = [json.loads(line) for line in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        assert [row["step"] for row in rows] == [0, 1]
        assert (Path(r["run_dir"]) / "checkpoints" / "step_00000002" / "manifest.json").is_file()
    compare = [line for line in again.stdout.splitlines() if line.startswith("compare: ")]
    assert compare and compare[0].endswith(f"--baseline fixed --out {out}/compare")

    # a run on a shared engine logs what the same run logs alone (rlvr_temp.driver.local_runs): mixture/seed0 ran
    # second on the engine that fixed/seed1 had just used; alone, it starts its own. Bitwise: every response's
    # token ids and rewards, loss, grad norm, ... (timings aside)
    alone = tmp_path / "alone"
    overrides = [*SMALL, "rollout.dump=true", f"model.path={tiny_model_path}", "trainer.seed=0"]
    overrides += [f"trainer.run_dir={alone}", "trainer.name=mixture"]
    cmd = [sys.executable, "-m", "rlvr_temp.cli", "train", str(DEMO / "mixture.yaml"), *overrides]
    single = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert single.returncode == 0, single.stderr[-3000:]
    rows, dumps = _logged(alone)
    shared_rows, shared_dumps = _logged(out / "mixture" / "seed0")
    assert len(dumps) == 2 and dumps == shared_dumps
    assert [r["step"] for r in rows] == [0, 1] and "actor/grad_norm" in rows[0]
    assert rows == shared_rows


@pytest.mark.slow
def test_cluster_path_runs_each_run_in_its_own_placement_group(tmp_path):
    import ray

    def fake_train(cfg):  # stands in for rlvr_temp.driver.trainer.train inside the run's task (pickled by value)
        import ray as r
        import torch
        from ray.util import get_current_placement_group, placement_group_table

        from rlvr_temp.checkpoint import save_checkpoint
        from rlvr_temp.metrics import MetricsLogger

        @r.remote(num_cpus=cfg.ray.learner_cpus)
        class Probe:
            def group(self):
                return get_current_placement_group().id.hex()

        pg = get_current_placement_group()
        seen = {"task": pg.id.hex(), "actor": r.get(Probe.remote().group.remote())}
        seen["bundles"] = list(placement_group_table(pg)["bundles"].values())
        Path(cfg.trainer.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.trainer.run_dir) / "pg.json").write_text(json.dumps(seen))
        if cfg.trainer.name == "mixture":
            raise ValueError("fake failure\nsecond line")
        logger = MetricsLogger(cfg.trainer.run_dir, tensorboard=False)
        for step in range(cfg.trainer.total_steps):
            logger.log(step, {"reward/mean": 0.0})
        logger.close()
        state = {"trainable": {"w": torch.zeros(1)}}
        save_checkpoint(cfg.trainer.run_dir, cfg.trainer.total_steps, learner_state=state, trainer_state={}, config=cfg)

    half = [*SMALL, "ray.rollout_cpus=0.5", "ray.learner_cpus=0.5"]
    runs = sweep.plan([str(DEMO / "fixed.yaml"), str(DEMO / "mixture.yaml")], 1, tmp_path, half)
    manifest = sweep.Manifest(tmp_path, {"command": "x", "recipes": [], "overrides": []}, runs)
    said: list[str] = []
    ray.init(num_cpus=2, include_dashboard=False)
    assert sweep.run_cluster(runs, manifest, said.append, "local", target=fake_train) == 0
    assert not ray.is_initialized()
    statuses = [(r["arm"], r["status"]) for r in _manifest(tmp_path)["runs"]]
    assert statuses == [("fixed", "done"), ("mixture", "failed")]
    error = _manifest(tmp_path)["runs"][1]["error"]
    assert "fake failure" in error and "second line" not in error and "\n" not in error
    groups = [json.loads((Path(r.run_dir) / "pg.json").read_text()) for r in runs]
    assert groups[0]["task"] != groups[1]["task"]
    for g in groups:
        assert g["actor"] == g["task"] and g["bundles"] == [{"CPU": 0.5}, {"CPU": 0.5}]
    assert any(line.startswith("sweep: mixture/seed0 failed: ") for line in said)
