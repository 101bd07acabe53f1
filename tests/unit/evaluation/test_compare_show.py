"""compare (plots + table from metrics.jsonl) and show-rollout (HTML + PNG from a rollout dump) on fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rlvr_temp.cli import main
from rlvr_temp.evaluation.compare import compare_runs


def _fake_run(path: Path, name: str, mode: str, steps: int, slope: float) -> Path:
    path.mkdir(parents=True)
    cfg = {"trainer": {"name": None, "run_dir": str(path)}, "temperature": {"mode": mode}, "model": {"path": "x"}}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    with (path / "metrics.jsonl").open("w") as fh:
        for s in range(steps):
            row = {"step": s, "reward/mean": 0.2 + slope * s, "acc/mean": 0.2 + slope * s, "time/step": 2.0}
            if mode == "mixture":
                row |= {"acc/T=0.9": 0.3, "acc/T=1.1": 0.1}
            if mode == "token":
                row["rollout/hot_token_share"] = 0.2
                row["control/knob"] = 1.0 + 0.05 * s  # a controlled run: its knob gets a panel and a column
            if s % 5 == 4:
                row["eval/synthetic/avg@4"] = 0.3 + slope * s
            fh.write(json.dumps(row) + "\n")
        fh.write('{"step": 99, "reward')  # a torn last line from a killed run is ignored
    return path


def test_compare_two_runs_of_different_lengths(tmp_path, monkeypatch):
    from rlvr_temp.evaluation import compare

    a = _fake_run(tmp_path / "a", "a", "token", 12, 0.01)
    b = _fake_run(tmp_path / "b", "b", "mixture", 7, 0.02)
    titles: list[str] = []
    draw = compare.plot_panels
    monkeypatch.setattr(compare, "plot_panels", lambda panels, png, **kw: titles.extend(panels) or draw(panels, png))
    paths = compare_runs([a, b], tmp_path / "out", smooth=3)
    assert "control/knob" in titles and "rollout/hot_token_share" in titles  # panels of metrics some run has
    assert paths["plot"].stat().st_size > 10_000
    table = paths["table"].read_text()
    rows = [line for line in table.splitlines() if line.startswith("| mode=")]
    assert len(rows) == 2  # arms named by their config difference
    assert "| mode=token | 12 | 24 |" in table and "| mode=mixture | 7 | 14 |" in table
    assert "`temperature.mode`" in table
    assert "No held-out evaluation" in table  # no eval/step_*.json: training curves only
    assert "| a | 1 | ? | 12 |" in table  # arms: directory names (no trainer.name, no trainer.seed)
    assert 'src="data:image/png;base64,' in paths["report"].read_text()
    from rlvr_temp.evaluation.runs import load_run

    assert any("eval/synthetic/avg@4" in r for r in load_run(a)["rows"])


def test_compare_cli_errors(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    run = _fake_run(tmp_path / "a", "a", "token", 3, 0.01)
    assert main(["compare", str(run), "--out", str(tmp_path / "out"), "--baseline", "fixed"]) == 2
    assert "baseline 'fixed' is not an arm; the arms are: a" in capsys.readouterr().err
    assert main(["compare", str(run), "--out", str(tmp_path / "out")]) == 0
    assert "report: " in capsys.readouterr().out


@pytest.fixture
def run_with_dump(tmp_path):
    from rlvr_temp.data.tiny_model import build_tokenizer

    tok_dir = tmp_path / "tok"
    build_tokenizer().save_pretrained(tok_dir)
    run = tmp_path / "run"
    (run / "rollouts").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"path": str(tok_dir)}}))
    tok = build_tokenizer()
    ids = tok(" 3+4=7. \\boxed{7}")["input_ids"]
    row = {
        "step": 2,
        "prompt_id": "p0",
        "temperature": 1.0,
        "token_ids": ids,
        "finish_reason": "stop",
        "token_temperatures": [0.8 if i % 3 else 1.3 for i in range(len(ids))],
        "token_entropies": [0.1 * i for i in range(len(ids))],
        "token_logprobs": [-0.5] * len(ids),
        "reward": 1.0,
    }
    (run / "rollouts" / "step_000002.jsonl").write_text(json.dumps(row) + "\n")
    return run


def test_show_rollout_writes_html_and_png(run_with_dump, capsys):
    assert main(["show-rollout", str(run_with_dump), "--step", "2", "--index", "0"]) == 0
    html_file = run_with_dump / "views" / "rollout_s2_i0.html"
    page = html_file.read_text()
    assert page.count("<span title=") == 2 * 17 and "T=1.300" in page and ">b</span>" in page
    assert (run_with_dump / "views" / "rollout_s2_i0.png").stat().st_size > 5_000


def test_show_rollout_errors(run_with_dump, capsys):
    assert main(["show-rollout", str(run_with_dump), "--step", "5"]) == 2
    assert "no rollout dump" in capsys.readouterr().err
    assert main(["show-rollout", str(run_with_dump), "--step", "2", "--index", "9"]) == 2
    assert "out of range" in capsys.readouterr().err
