"""Recipes: inheritance, overrides, validation errors (one line, file + key path, exit 2), docs in sync."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rlvr_temp.cli import main
from rlvr_temp.config.reference import config_reference
from rlvr_temp.config.schema import ConfigError, RunConfig, load_config, save_config

ROOT = Path(__file__).resolve().parents[3]

MALFORMED = {
    "unknown_top_key": ("foo: 1\n", "foo: unknown key"),
    "unknown_nested_key": ("temperature:\n  token:\n    t_lo: 1.0\n", "temperature.token.t_lo: unknown key"),
    "wrong_type": ("rollout:\n  group_size: eight\n", "rollout.group_size"),
    "out_of_range": ("temperature:\n  token:\n    hot_fraction: 1.5\n", "temperature.token.hot_fraction"),
    "negative_temperature": ("temperature:\n  base: -0.5\n", "temperature.base"),
    "invalid_literal": ("temperature:\n  mode: hot\n", "temperature.mode"),
    "invalid_yaml": ("rollout:\n  group_size: [1, 2\n", "invalid YAML"),
    "not_a_mapping": ("- a\n- b\n", "must be a mapping"),
    "section_is_scalar": ("rollout: 5\n", "rollout"),
    "t_high_below_t_low": ("temperature:\n  token:\n    t_low: 1.5\n    t_high: 1.0\n", "t_high"),
    "mixture_counts_mismatch": (
        "rollout:\n  group_size: 8\ntemperature:\n  mode: mixture\n  mixture:\n    kind: explicit\n"
        "    counts: {1.0: 3, 1.2: 3}\n",
        "counts sum to 6",
    ),
    "missing_base": ("base: nowhere.yaml\n", "nowhere.yaml: recipe file not found"),
    "learner_batch_order": ("learner:\n  micro_batch_size: 64\n  mini_batch_size: 8\n", "micro_batch_size"),
    "bad_schedule": ("temperature:\n  schedule:\n    kind: linear\n", "schedule.end is required"),
}


def _run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_recipe_one_line_exit_2(name, tmp_path, capsys, error_line):
    text, expected = MALFORMED[name]
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(text)
    code, _, err = _run_cli(["validate", str(recipe)], capsys)
    assert code == 2
    line = error_line(err)
    assert str(recipe) in line
    assert expected in line
    assert "Traceback" not in err


def test_missing_recipe_file(tmp_path, capsys):
    code, _, err = _run_cli(["validate", str(tmp_path / "absent.yaml")], capsys)
    assert code == 2 and "absent.yaml: recipe file not found" in err


def test_inheritance_cycle(tmp_path, capsys, error_line):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    code, _, err = _run_cli(["validate", str(tmp_path / "a.yaml")], capsys)
    assert code == 2 and "cycle" in error_line(err)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.total_steps", "expected KEY.PATH=VALUE"),
        ("trainer.total_stepz=3", "trainer.total_stepz"),
        ("rollout.group_size=0", "rollout.group_size"),
    ],
)
def test_bad_overrides(override, expected, tmp_path, capsys, error_line):
    recipe = tmp_path / "ok.yaml"
    recipe.write_text("trainer:\n  total_steps: 5\n")
    code, _, err = _run_cli(["validate", str(recipe), override], capsys)
    assert code == 2 and expected in error_line(err)


def test_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("rollout:\n  group_size: 4\n  prompts_per_step: 2\ntrainer:\n  seed: 3\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nrollout:\n  group_size: 6\ntemperature:\n  mode: token\n")
    cfg = load_config(child, ["trainer.total_steps=50", "temperature.token.t_high=2.0"])
    assert cfg.rollout.group_size == 6 and cfg.rollout.prompts_per_step == 2
    assert cfg.trainer.seed == 3 and cfg.trainer.total_steps == 50
    assert cfg.temperature.mode == "token" and cfg.temperature.token.t_high == 2.0


def test_defaults_valid_and_saved(tmp_path):
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    path = save_config(cfg, tmp_path / "run")
    text = path.read_text()
    assert cfg.hash() in text.splitlines()[0]
    assert load_config(path).to_dict() == cfg.to_dict()  # the saved file is itself a valid recipe
    with pytest.raises(ConfigError):
        load_config(None, ["nope=1"])


def test_every_shipped_recipe_validates():
    recipes = sorted((ROOT / "recipes").rglob("*.yaml"))
    assert recipes, "no recipes shipped"
    for path in recipes:
        if path.parent.name == "tgr":  # supervised TGR recipes have their own schema
            from rlvr_temp.learner.tgr_recipe import TGRConfig

            load_config(path, schema=TGRConfig)
        else:
            load_config(path)


def test_every_field_documented_and_docs_in_sync():
    def walk(model):
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                yield from walk(ann)
            else:
                yield name, field.description

    missing = [name for name, desc in walk(RunConfig) if not desc]
    assert not missing, f"fields without help text: {missing}"
    assert (ROOT / "docs" / "configuration.md").read_text() == config_reference(), "run `make docs`"


def test_cli_process_has_no_traceback(tmp_path, error_line):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("rollout:\n  top_p: 2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rlvr_temp.cli", "validate", str(recipe)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "rollout.top_p" in error_line(proc.stderr)
    assert "Traceback" not in proc.stderr


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("train", "eval", "compare", "demo", "validate", "make-tiny-model"):
        assert cmd in out


def test_missing_run_directory_is_a_clear_error(tmp_path, capsys):
    code, _, err = _run_cli(["compare", str(tmp_path / "nope")], capsys)
    assert code == 2 and "no such run directory" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _run_cli(["compare", str(tmp_path / "empty")], capsys)
    assert code == 2 and "no metrics.jsonl" in err
