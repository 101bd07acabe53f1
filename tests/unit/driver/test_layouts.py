"""Placement-group layouts (``resources.layout``): the bundles and slots each layout plans, a recipe the cluster
cannot hold failing in one line (and leaving no pending group), and a colocated run training end to end with
every actor in its bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlvr_temp.config.schema import load_config
from rlvr_temp.driver.placement import PlacementError, Slot, plan
from tests.helpers import worst_token

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "recipes/demo/base.yaml"


def test_colocated_plan_shares_each_bundle_and_gives_each_phase_all_of_it():
    cfg = load_config(DEMO)  # 1 engine, 1 learner rank, ray.rollout_cpus = ray.learner_cpus = 1
    layout = plan(cfg)
    assert layout.kind == "colocated" and layout.bundles == [{"CPU": 2.0}]
    assert layout.learners == [Slot(0, 1.0, 0.0, 2)] and layout.engines == [Slot(0, 1.0, 0.0, 2)]

    gpu = load_config(DEMO, ["resources.learner_ranks=8", "rollout.num_workers=8", "resources.bundle_cpus=8"])
    gpu.resources.bundle_gpus = 1.0
    layout = plan(gpu)
    assert layout.bundles == [{"CPU": 8.0, "GPU": 1.0}] * 8
    assert [s.bundle for s in layout.engines] == list(range(8)) == [s.bundle for s in layout.learners]
    assert {(s.num_cpus, s.num_gpus, s.threads) for s in layout.engines + layout.learners} == {(4.0, 0.5, 8)}

    three = plan(load_config(DEMO, ["rollout.num_workers=3", "resources.learner_ranks=2", "resources.bundle_cpus=3"]))
    assert [s.bundle for s in three.engines] == [0, 1, 0]  # engine e in bundle e % ranks
    assert three.learners[0] == Slot(0, 1.0, 0.0, 3) and three.engines[0] == Slot(0, 1.0, 0.0, 1)
    assert three.learners[1] == Slot(1, 1.5, 0.0, 3) and three.engines[1] == Slot(1, 1.5, 0.0, 3)


def test_split_plan_is_one_bundle_per_actor():
    cfg = load_config(DEMO, ["resources.layout=split", "resources.learner_ranks=2", "ray.learner_gpus=1"])
    layout = plan(cfg)
    assert layout.bundles == [{"CPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}]
    assert layout.engines == [Slot(0, 1.0, 0.0, 1)]
    assert layout.learners == [Slot(1, 1.0, 1.0, 1), Slot(2, 1.0, 1.0, 1)]
    with pytest.raises(PlacementError, match="bundle 0 reserves no CPU and no GPU"):
        plan(load_config(DEMO, ["resources.layout=split", "ray.rollout_cpus=0"]))


@pytest.mark.slow
def test_a_recipe_the_cluster_cannot_hold_fails_in_one_line(ray_cluster):
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    from rlvr_temp.driver.placement import reserve

    def pending() -> list[str]:
        return [g["name"] for g in placement_group_table().values() if g["state"] == "PENDING"]

    too_many = load_config(DEMO, ["resources.bundle_gpus=2"])  # the cluster has no GPU at all
    with pytest.raises(PlacementError) as err:
        reserve(too_many)
    assert str(err.value).startswith("resources: the recipe needs 2 GPUs") and "the cluster has 0 GPUs" in str(
        err.value
    )
    assert "\n" not in str(err.value)
    with pytest.raises(PlacementError, match=r"the recipe needs 64 CPUs .* the cluster has 2 CPUs"):
        reserve(load_config(DEMO, ["resources.bundle_cpus=64"]))

    # it would fit, but another job holds the CPUs: wait resources.timeout_s, then fail and remove the group
    hold = placement_group([{"CPU": 2}])
    ray_cluster.get(hold.ready())
    try:
        with pytest.raises(PlacementError, match=r"not placed within 1 s; free now") as err:
            reserve(load_config(DEMO, ["resources.timeout_s=1", "trainer.run_dir=runs/held"]))
        assert "\n" not in str(err.value)
        assert "rlvr_temp:runs/held" not in pending()
    finally:
        remove_placement_group(hold)


@pytest.mark.slow
def test_the_cli_says_what_is_missing(tmp_path, tiny_model_path, error_line):
    cmd = [sys.executable, "-m", "rlvr_temp.cli", "train", str(DEMO), f"trainer.run_dir={tmp_path / 'run'}"]
    cmd += ["resources.bundle_cpus=64", "logging.progress=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode != 0
    assert "the recipe needs 64 CPUs" in error_line(proc.stderr) and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_colocated_run_trains_and_records_each_actor_in_its_bundle(ray_cluster, tmp_path, tiny_model_path):
    from rlvr_temp.driver.trainer import Trainer

    overrides = [
        f"trainer.run_dir={tmp_path / 'run'}",
        "trainer.total_steps=1",
        "rollout.prompts_per_step=4",
        "rollout.group_size=4",
        "rollout.max_response_len=24",
        "algorithm.dynamic_sampling=false",
        "learner.mini_batch_size=16",
        "learner.micro_batch_size=16",
        "logging.progress=false",
        "logging.tensorboard=false",
        "eval.every=0",
    ]
    trainer = Trainer(load_config(DEMO, overrides))
    try:
        placement = json.loads((trainer.run_dir / "placement.json").read_text())
        assert placement["layout"] == "colocated" and placement["bundles"] == [{"CPU": 2.0}]
        roles = {(a["role"], a["index"]): a for a in placement["actors"]}
        assert set(roles) == {("engine", 0), ("learner", 0)}
        assert all(a["bundle"] == 0 and a["threads"] == 2 and a["num_cpus"] == 1.0 for a in roles.values())
        assert roles["engine", 0]["node_id"] == roles["learner", 0]["node_id"] is not None

        def where(actor):  # the placement group and OpenMP threads the actor really runs with
            return ray_cluster.get(
                actor.__ray_call__.remote(
                    lambda self: (
                        __import__("ray").get_runtime_context().get_placement_group_id(),
                        __import__("os").environ.get("OMP_NUM_THREADS"),
                    )
                )
            )

        engine, learner = where(trainer.workers[0]), where(trainer.learner.ranks[0])
        assert engine[0] is not None and engine == learner == (engine[0], "2")
        trainer.run()
        rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 1 and rows[0]["actor/updates"] >= 1
        assert rows[0]["logprob/mismatch_mean"] <= 2e-6 and rows[0]["logprob/mismatch_max"] <= 1e-4, worst_token(
            rows[0]
        )
        assert (trainer.run_dir / "checkpoints" / "step_00000001" / "manifest.json").is_file()
    finally:
        trainer.close()
    pending = [g for g in __import__("ray").util.placement_group_table().values() if g["state"] != "REMOVED"]
    assert not pending  # the run's group went with it
