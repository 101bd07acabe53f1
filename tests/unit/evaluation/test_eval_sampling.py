"""Nucleus / top-k truncation applied by the processor, and `eval` as the README shows it and at the paper's
evaluation settings (top-p 0.95 with seeded, reproducible sampling on vLLM's CPU build)."""

from __future__ import annotations

import json

import pytest
import torch

from rlvr_temp.temperature import truncate_logits


def _reference(row: torch.Tensor, top_p: float, top_k: int) -> set[int]:
    """The kept token ids, by the definition: the k most likely, then the smallest prefix reaching top_p."""
    order = torch.argsort(row, descending=True).tolist()
    if top_k > 0:
        order = order[:top_k]
    probs = torch.softmax(row[order], -1).tolist()
    kept, mass = [], 0.0
    for tok, p in zip(order, probs):
        if kept and mass >= top_p:
            break
        kept.append(tok)
        mass += p
    return set(kept)


@pytest.mark.parametrize("top_p, top_k", [(0.95, -1), (0.5, -1), (1.0, 5), (0.9, 3), (0.01, -1)])
def test_truncation_keeps_the_nucleus(top_p, top_k):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g) * 3
    out = truncate_logits(logits, torch.full((6,), top_p), torch.full((6,), top_k))
    for row, cut in zip(logits, out):
        kept = set(torch.isfinite(cut).nonzero().flatten().tolist())
        assert kept == _reference(row, top_p, top_k)
        assert torch.equal(cut[sorted(kept)], row[sorted(kept)])  # kept logits untouched


@pytest.mark.slow
def test_eval_as_documented_and_at_top_p_095(tmp_path, capsys):
    from rlvr_temp.cli import main

    # README.md, as written (the engine length now comes from the model)
    assert (
        main(["eval", "--model", "tiny", "--data", "synthetic", "--n", "8", "--top-p", "1", "--max-tokens", "48"]) == 0
    )
    assert "synthetic" in capsys.readouterr().out
    runs = []
    for k in range(2):  # the paper's protocol: top-p 0.95, seeded: the same samples twice
        out = tmp_path / f"eval{k}.json"
        argv = ["eval", "--model", "tiny", "--data", "synthetic", "--n", "4", "--limit", "16", "--top-p", "0.95"]
        assert main([*argv, "--max-tokens", "32", "--seed", "3", "--out", str(out)]) == 0
        runs.append(json.loads(out.read_text())["results"]["synthetic"])
    assert runs[0] == runs[1]
    assert 0.0 <= runs[0]["avg@4"] <= 1.0
