"""The command line: options and overrides in any order, `validate` for every recipe kind, settings that cannot
work refused up front, and every `rlvr-temp` line shown in README.md and docs/ accepted as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from rlvr_temp.cli import main, parse_args

ROOT = Path(__file__).resolve().parents[3]


def test_overrides_may_follow_options():
    argv = ["train", "recipes/demo/token.yaml", "--ray-address", "127.0.0.1:6379", "trainer.total_steps=3", "a.b=1"]
    args = parse_args(argv)
    assert args.ray_address == "127.0.0.1:6379"
    assert args.overrides == ["trainer.total_steps=3", "a.b=1"]
    assert parse_args(["train", "r.yaml", "x.y=2", "--ray-address", "auto"]).overrides == ["x.y=2"]


def test_unknown_options_are_still_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["validate", "recipes/demo/token.yaml", "--bogus"])
    assert exc.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").rglob("*.yaml")))
def test_validate_accepts_every_shipped_recipe_by_kind(recipe, capsys):
    assert main(["validate", recipe]) == 0, capsys.readouterr().err
    assert "valid" in capsys.readouterr().out


@pytest.mark.parametrize(
    "override, message",
    [
        ("temperature.token.window=16", "smaller than one decode step"),
        ("temperature.token.hot_fraction=1.5", "hot_fraction"),
        ("rollout.engine.tensor_parallel_size=2 rollout.engine.multiprocess=false", "tensor_parallel_size"),
    ],
)
def test_settings_that_cannot_work_are_refused_in_one_line(override, message, capsys, error_line):
    assert main(["validate", "recipes/demo/token.yaml", *override.split()]) == 2
    assert message in error_line(capsys.readouterr().err)


def _doc_commands() -> list[tuple[str, list[str]]]:
    """Every `rlvr-temp ...` command line in a fenced block of README.md and docs/*.md (continuations joined)."""
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"\\\n\s*", " ", doc.read_text())
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
            for line in block.splitlines():
                m = re.search(r"(?:^|\s|/)rlvr-temp\s+(.*)", line.split("#")[0].strip())
                if m and not line.lstrip().startswith("$"):  # `$ ...` lines show a session's output
                    out.append((f"{doc.name}: {line.strip()}", shlex.split(m.group(1))))
    return out


@pytest.mark.parametrize("where, argv", _doc_commands(), ids=[w for w, _ in _doc_commands()])
def test_documented_command_lines_parse_and_their_recipes_validate(where, argv, capsys):
    args = parse_args(argv)  # exits with "unrecognized arguments" on a line the CLI does not accept
    recipe = getattr(args, "recipe", None)
    if recipe and Path(ROOT / recipe).is_file():
        assert main(["validate", recipe, *args.overrides]) == 0, f"{where}: {capsys.readouterr().err}"
