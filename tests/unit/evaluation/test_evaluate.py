"""Evaluation estimators against hand-computed values, and the eval loop end to end on the tiny model."""

from __future__ import annotations

from math import comb

import pytest

from rlvr_temp.evaluation.evaluate import summarize
from rlvr_temp.evaluation.stats import k_values, maj_at_k, pass_at_k


@pytest.mark.parametrize(
    "n, c, k",
    [(1, 0, 1), (1, 1, 1), (5, 0, 3), (5, 5, 3), (5, 2, 5), (10, 3, 1), (10, 3, 4), (16, 1, 16), (256, 7, 32)],
)
def test_pass_at_k_matches_the_combinatorial_definition(n, c, k):
    expected = 1 - comb(n - c, k) / comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_edges_and_errors():
    assert pass_at_k(4, 4, 4) == 1.0  # n = k, c = n
    assert pass_at_k(4, 0, 4) == 0.0  # c = 0
    assert pass_at_k(4, 1, 4) == 1.0  # n = k, any correct
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_maj_at_k():
    assert maj_at_k(["5", "6", "5", None], [1, 0, 1, 0], 4) == 1.0
    assert maj_at_k(["6", "6", "5", "5"], [0, 0, 1, 1], 4) == 0.0  # tie: the earliest answer wins
    assert maj_at_k(["6", "5", "5"], [0, 1, 1], 1) == 0.0  # only the first sample votes
    assert maj_at_k([None, None], [0, 0], 2) == 0.0


def test_summarize_fixture():
    samples = [
        {"problem": "a", "correct": 1.0, "answer": "1", "length": 10, "truncated": False},
        {"problem": "a", "correct": 0.0, "answer": "2", "length": 20, "truncated": True},
        {"problem": "b", "correct": 0.0, "answer": "3", "length": 30, "truncated": False},
        {"problem": "b", "correct": 0.0, "answer": "3", "length": 40, "truncated": False},
    ]
    out = summarize(samples, 2)
    assert out["problems"] == 2
    assert out["avg@2"] == 0.25
    assert out["pass@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["pass@2"] == pytest.approx((1.0 + 0.0) / 2)
    assert out["maj@2"] == pytest.approx(0.5)  # a: tie 1 vs 2, earliest ("1", correct) wins; b: "3" wrong
    assert out["length_mean"] == 25 and out["truncated"] == 0.25
    assert k_values(8) == [1, 2, 4, 8] and k_values(6) == [1, 2, 4, 6] and k_values(1) == [1]


@pytest.mark.slow
def test_eval_tiny_model_on_its_synthetic_test_set(tmp_path, tiny_model_path, monkeypatch, capsys):
    import json

    from rlvr_temp.cli import main

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    out = tmp_path / "eval.json"
    code = main(
        [
            "eval",
            "--model",
            tiny_model_path,
            "--data",
            "synthetic",
            "--n",
            "4",
            "--limit",
            "24",
            "--temperature",
            "0.6",
            "--top-p",
            "1.0",
            "--max-tokens",
            "48",
            "--max-model-len",
            "256",
            "--template",
            "Q: {question}\nA:",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    res = json.loads(out.read_text())["results"]["synthetic"]
    assert res["problems"] == 24
    assert 0.0 < res["avg@4"] < 1.0
    assert res["pass@1"] <= res["pass@2"] <= res["pass@4"]
    assert res["pass@1"] == pytest.approx(res["avg@4"])
    assert "| synthetic | 24 |" in capsys.readouterr().out
