"""Models and datasets named as on the Hugging Face hub, resolved offline from caches laid out as the hub's libraries
lay them out (built here in tmp_path); run directories made absolute where the command runs (or under
``$RLVR_TEMP_RUN_ROOT``), and refused when relative inside a Ray job; the Ray job's env vars left to the job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlvr_temp.config.schema import load_config, save_config
from rlvr_temp.data.models import resolve_model
from rlvr_temp.data.prompts import load_train_rows
from rlvr_temp.data.sources import DataError, load_prompts
from rlvr_temp.driver.launch import _job_env_vars
from tests.helpers import fake_hub_dataset, fake_hub_model

ROOT = Path(__file__).resolve().parents[3]
ROWS = [{"question": "12+7", "answer": "19"}, {"question": "3*4", "answer": "12"}, {"question": "9-5", "answer": "4"}]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty hub cache that huggingface_hub uses (offline, as in every test)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert constants.HF_HUB_OFFLINE
    return cache


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """An empty ``datasets`` cache, offline."""
    import datasets

    cache = tmp_path / "datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", Path(cache))
    assert datasets.config.HF_HUB_OFFLINE
    return cache


# ----------------------------------------------------------------------------------------------- models
def test_hub_model_id_resolves_to_the_cached_snapshot(hub_cache, tiny_model_path):
    from transformers import AutoConfig, AutoTokenizer

    snapshot = fake_hub_model(hub_cache, "rlvr-test/tiny-math", tiny_model_path)
    path = resolve_model("rlvr-test/tiny-math")
    assert Path(path) == snapshot
    assert AutoConfig.from_pretrained(path).model_type == AutoConfig.from_pretrained(tiny_model_path).model_type
    ids = AutoTokenizer.from_pretrained(path)("Q: 1+1")["input_ids"]
    assert ids and ids == AutoTokenizer.from_pretrained(tiny_model_path)("Q: 1+1")["input_ids"]


def test_missing_hub_model_offline_is_one_line_naming_id_and_cache(hub_cache):
    with pytest.raises(FileNotFoundError) as err:
        resolve_model("rlvr-test/not-downloaded")
    msg = str(err.value)
    assert "\n" not in msg and "'rlvr-test/not-downloaded'" in msg and str(hub_cache) in msg
    assert "HF_HUB_OFFLINE" in msg


def test_local_directory_and_tiny_still_work(tmp_path, tiny_model_path):
    assert resolve_model(tiny_model_path) == tiny_model_path
    from rlvr_temp.data.tiny_model import ensure_tiny_model

    assert resolve_model("tiny") == str(ensure_tiny_model()) and (Path(resolve_model("tiny")) / "config.json").is_file()
    with pytest.raises(FileNotFoundError, match="no such directory, and not a Hugging Face hub id"):
        resolve_model(str(tmp_path / "no" / "such" / "model"))


def test_train_with_a_missing_hub_model_fails_in_one_line(tmp_path, error_line):
    """The user's path: `rlvr-temp train` with HF_HUB_CACHE pointing at a cache without the model (exit 2)."""
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "empty_cache"), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "rlvr_temp.cli", "train", str(ROOT / "recipes/demo/base.yaml")]
    cmd += ["model.path=rlvr-test/absent", f"trainer.run_dir={tmp_path / 'run'}", "logging.progress=false"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = error_line(proc.stderr)
    assert "'rlvr-test/absent'" in line and str(tmp_path / "empty_cache") in line


# ----------------------------------------------------------------------------------------------- datasets
def test_hub_dataset_loads_from_the_datasets_cache_offline(datasets_cache, tmp_path):
    fake_hub_dataset(datasets_cache, "rlvr-test/arith", ROWS, tmp_path)
    ds = load_prompts("rlvr-test/arith")
    assert ds["question"] == [r["question"] for r in ROWS] and ds["ground_truth"] == ["19", "12", "4"]
    assert ds["id"] == ["0", "1", "2"] and set(ds["data_source"]) == {"arith"}
    assert load_prompts("rlvr-test/arith:default", limit=2)["question"] == ["12+7", "3*4"]
    cfg = load_config(None, ["data.train=rlvr-test/arith", "data.limit=2"])
    assert [r["question"] for r in load_train_rows(cfg)] == ["12+7", "3*4"]


def test_hub_dataset_errors_are_one_line(datasets_cache, tmp_path):
    fake_hub_dataset(datasets_cache, "rlvr-test/arith", ROWS, tmp_path)
    with pytest.raises(DataError) as err:
        load_prompts("rlvr-test/not-cached")
    msg = str(err.value)
    assert "\n" not in msg and "'rlvr-test/not-cached'" in msg and str(datasets_cache) in msg
    with pytest.raises(DataError, match="split test") as err:
        load_prompts("rlvr-test/arith", split="test")
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="nope") as err:
        load_prompts("rlvr-test/arith:nope")
    assert "\n" not in str(err.value) and "default" in str(err.value)  # the configs that are cached


def test_local_files_win_over_hub_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "data").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with pytest.raises(DataError, match="unsupported file type"):  # an existing path is a file, not a hub name
        load_prompts("org/data")


# ----------------------------------------------------------------------------------------------- run_dir
def test_relative_run_dir_is_absolute_from_the_launch_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RLVR_TEMP_RUN_ROOT", raising=False)
    cfg = load_config(None, ["trainer.run_dir=runs/a/../b"])
    assert cfg.trainer.run_dir == str(tmp_path / "runs" / "b")
    assert load_config(None).trainer.run_dir == str(tmp_path / "runs" / "default")  # the default too
    save_config(cfg, cfg.trainer.run_dir)
    assert f"run_dir: {tmp_path / 'runs' / 'b'}" in (tmp_path / "runs" / "b" / "config.yaml").read_text()
    monkeypatch.setenv("RLVR_TEMP_RUN_ROOT", str(tmp_path / "shared"))
    assert load_config(None, ["trainer.run_dir=runs/c"]).trainer.run_dir == str(tmp_path / "shared" / "runs" / "c")
    assert load_config(None, ["trainer.run_dir=/abs/d"]).trainer.run_dir == "/abs/d"


def test_relative_run_dir_in_a_ray_job_needs_the_run_root(tmp_path, monkeypatch):
    from rlvr_temp.config.schema import ConfigError

    monkeypatch.delenv("RLVR_TEMP_RUN_ROOT", raising=False)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://x.zip"}}))
    with pytest.raises(ConfigError) as err:
        load_config(None, ["trainer.run_dir=runs/x"])
    assert "\n" not in str(err.value) and "RLVR_TEMP_RUN_ROOT" in str(err.value)
    assert load_config(None, [f"trainer.run_dir={tmp_path}"]).trainer.run_dir == str(tmp_path)
    monkeypatch.setenv("RLVR_TEMP_RUN_ROOT", str(tmp_path))
    assert load_config(None, ["trainer.run_dir=runs/x"]).trainer.run_dir == str(tmp_path / "runs" / "x")


# ----------------------------------------------------------------------------------------------- Ray jobs
def test_job_env_vars_are_left_to_the_job(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert _job_env_vars() == {}
    job = {"runtime_env": {"working_dir": "gcs://x.zip", "env_vars": {"HF_HUB_OFFLINE": "1"}}, "metadata": {}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert _job_env_vars() == {"HF_HUB_OFFLINE": "1"}
