"""What the learner's weight source sends (rlvr_temp.weights.source): a tied LM head is not sent besides the
embedding it is tied to from a GPU policy (a GPU engine's head shares the embedding's parameter; +467 MB per sync
at 1.5B), an untied one always is, and on the CPU the tied head is still sent: a real vLLM CPU engine computes its
head from a prepacked copy that a reload refreshes only when ``lm_head.weight`` arrives."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from rlvr_temp.learner.policy import load_policy
from rlvr_temp.weights.source import PolicySource, export_state, tied_head
from tests.helpers import policy_settings

HEAD = "lm_head.weight"


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()


def _policy(path: str, mode: str) -> torch.nn.Module:
    settings = policy_settings(mode)
    model = SimpleNamespace(dtype="float32", trust_remote_code=False)
    return load_policy(path, model, settings, torch.device("cpu"))


@pytest.mark.gpu_contract
@pytest.mark.parametrize("mode", ["full", "lora", "qlora"])
def test_tied_lm_head_is_not_sent_twice(tiny_model_path: str, mode: str):
    """The tiny model ties its embeddings. As a GPU policy sends it (``skip_tied_head``, the default on CUDA) its
    source lists no ``lm_head.weight``, and its bytes are the untied model's minus the head's; the same model untied
    sends the head; on the CPU (the default here) the tied head is sent, for the CPU engines."""
    config = AutoConfig.from_pretrained(tiny_model_path)
    assert config.tie_word_embeddings
    policy = _policy(tiny_model_path, mode)
    source = PolicySource(policy, torch.float32, skip_tied_head=True)
    names = [m.name for m in source.metadata()]
    sent = sum(_nbytes(m.shape, m.dtype) for m in source.metadata())

    untied = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_model_path, tie_word_embeddings=False))
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    untied_meta = PolicySource(untied, torch.float32, skip_tied_head=True).metadata()
    assert HEAD in [m.name for m in untied_meta]
    head = untied.lm_head.weight
    assert HEAD not in names, f"{names.count(HEAD)} x {HEAD} in the tied model's metadata"
    assert sent == sum(_nbytes(m.shape, m.dtype) for m in untied_meta) - _nbytes(tuple(head.shape), torch.float32)
    assert names == [m.name for m in untied_meta if m.name != HEAD]
    # iteration and export agree with the metadata
    assert [n for n, _ in source] == names
    assert HEAD not in export_state(policy, torch.float32, skip_tied_head=True)
    # the default follows the policy's device: on the CPU the tied head travels (the CPU engines need it)
    assert tied_head(policy) is None and tied_head(policy, True) == HEAD
    assert [m.name for m in PolicySource(policy, torch.float32).metadata()] == [m.name for m in untied_meta]


@pytest.mark.slow
@pytest.mark.gpu_contract
def test_cpu_engine_needs_the_tied_lm_head_and_gets_it(tiny_model_path: str):
    """A real in-process vLLM CPU engine (gloo weight transfer) and the tied tiny model, perturbed before each send:
    with the head (the CPU default) the engine's greedy tokens equal transformers' send after send; without it the
    engine keeps the previous send's head (its prepacked LM head is refreshed only when ``lm_head.weight`` is
    loaded), which is why only a GPU policy leaves it out (rlvr_temp.weights.source)."""
    from transformers import AutoTokenizer

    from rlvr_temp.weights.clients import LocalLLMClient
    from tests.unit.weights.test_weight_sync import _greedy, _hf_greedy, _inprocess_llm, _perturbed, _trainer

    llm = _inprocess_llm(tiny_model_path, seed=0)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
        results = []
        for seed, skip in ((5, None), (6, True), (6, None), (7, None)):
            model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
            _perturbed(model, seed)
            source = PolicySource(model, torch.float32, skip_tied_head=skip)
            stats = _trainer(LocalLLMClient(llm), source, bucket_bytes=1 << 16).send()
            full = sum(t.numel() * t.element_size() for t in model.state_dict().values())
            assert stats["bytes"] == full - (model.lm_head.weight.numel() * 4 if skip else 0)
            results.append(_greedy(llm) == _hf_greedy(model, tokenizer))
        assert results == [True, False, True, True]
    finally:
        llm.llm_engine.engine_core.shutdown()
