"""LoRA gradients through an NF4 (4-bit) base on CPU equal those of the same LoRA on the dequantised base.

The learner trains LoRA adapters on a bitsandbytes NF4 base (``learner.mode=qlora``). On CPUs with AVX512-BF16,
bitsandbytes repacks a Linear4bit's weight on its first no-grad eval-mode forward, and from then on runs the
layer through a kernel without autograd, so LoRA gradients are silently wrong; rlvr_temp.learner.policy
``disable_cpu_4bit_repacking`` turns that off. This test does what a training step does (one no-grad eval forward,
then forward + backward in train mode) and checks the adapters' gradients against a plain fp32 model built from
the dequantised weights.
"""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import peft
import pytest
import torch
import transformers

from rlvr_temp.learner.policy import disable_cpu_4bit_repacking

# Every Linear4bit output width a multiple of 32 (q/o 128, k/v 64, gate/up 256, down 128, lm_head 96).
CONFIG = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=96,
    max_position_embeddings=128,
)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _lora(model: torch.nn.Module) -> torch.nn.Module:
    cfg = peft.LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, bias="none", task_type="CAUSAL_LM"
    )
    return peft.get_peft_model(model, cfg)


def _lora_params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def _step(model: torch.nn.Module, ids: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    """One no-grad eval-mode forward (what sets off the repacking), then forward + backward of the mean
    log-probability of ``ids`` in train mode; the loss and the LoRA gradients."""
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    model.train()
    model.zero_grad(set_to_none=True)
    params = _lora_params(model)
    logits = model(input_ids=ids).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    loss = -logp.mean()
    loss.backward()
    grads = {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for n, p in params.items()}
    return loss.item(), grads


def _models(path: Path, workaround: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The NF4 LoRA model (random non-zero lora_B) and its fp32 reference with the same adapter weights."""
    quant = transformers.BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    q = transformers.AutoModelForCausalLM.from_pretrained(
        path, quantization_config=quant, device_map="cpu", dtype=torch.float32
    )
    q = peft.prepare_model_for_kbit_training(q, use_gradient_checkpointing=False)
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in q.modules())
    assert n4 >= 2 * len(TARGETS), n4
    if workaround:
        assert disable_cpu_4bit_repacking(q) == n4

    # the reference: same base weights, NF4 ones dequantised (before any forward can repack them)
    state = {}
    for name, module in q.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            w = module.weight
            assert not getattr(w.quant_state, "packing_format_for_cpu", False)
            state[f"{name}.weight"] = bnbf.dequantize_4bit(w.data, w.quant_state).float()
            if module.bias is not None:
                state[f"{name}.bias"] = module.bias.detach().float()
    for name, p in q.named_parameters():
        state.setdefault(name, p.detach().float())
    ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).float()
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"} and (not missing or ref.config.tie_word_embeddings), missing

    q, ref = _lora(q), _lora(ref)
    gen = torch.Generator().manual_seed(1)
    q_params, ref_params = _lora_params(q), _lora_params(ref)
    assert q_params.keys() == ref_params.keys() and len(q_params) == 2 * len(TARGETS) * CONFIG["num_hidden_layers"]
    with torch.no_grad():
        for name, p in q_params.items():
            if "lora_B" in name:  # peft starts B at zero, which would leave lora_A without gradient
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            ref_params[name].copy_(p)
    return q, ref


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).float()
    path = tmp_path_factory.mktemp("nf4-llama")
    model.save_pretrained(path)
    return path


def _compare(q_grads: dict[str, torch.Tensor], ref_grads: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Cosine similarity of the concatenated gradients, and the largest per-tensor relative difference."""
    a = torch.cat([q_grads[n].flatten() for n in sorted(q_grads)]).double()
    b = torch.cat([ref_grads[n].flatten() for n in sorted(q_grads)]).double()
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    rel = max(((q_grads[n] - ref_grads[n]).norm() / ref_grads[n].norm()).item() for n in q_grads)
    return cosine, rel


def test_nf4_lora_gradients_match_the_dequantised_reference(model_dir: Path) -> None:
    q, ref = _models(model_dir, workaround=True)
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(2))
    q_loss, q_grads = _step(q, ids)
    ref_loss, ref_grads = _step(ref, ids)
    cosine, rel = _compare(q_grads, ref_grads)
    print(
        f"NF4 vs dequantised fp32: loss {q_loss:.6f} vs {ref_loss:.6f}, gradient cosine {cosine:.8f}, "
        f"max per-tensor relative difference {rel:.2e}"
    )
    assert all(g.abs().sum() > 0 for g in (*q_grads.values(), *ref_grads.values()))  # lora_A and lora_B both do
    assert q_loss == pytest.approx(ref_loss, rel=1e-4)
    assert cosine >= 0.9999
    assert rel <= 1e-3


def test_without_the_workaround_gradients_go_wrong(model_dir: Path) -> None:
    """The negative check: only meaningful where bitsandbytes would repack (CPUs with AVX512-BF16)."""
    if not bnbf.has_avx512bf16():
        pytest.skip(
            "this CPU has no AVX512-BF16, so bitsandbytes never repacks 4-bit weights and the gradient bug "
            "disable_cpu_4bit_repacking works around cannot occur here"
        )
    # Not yet observed: written from bitsandbytes' code (Linear4bit.forward repacks on a no-grad eval forward,
    # matmul_4bit then calls gemv_4bit outside autograd); on the first machine with AVX512-BF16, check it holds.
    q, ref = _models(model_dir, workaround=False)
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(2))
    _, q_grads = _step(q, ids)
    assert any(
        getattr(m.weight.quant_state, "packing_format_for_cpu", False)
        for m in q.modules()
        if isinstance(m, bnb.nn.Linear4bit)
    )
    cosine, rel = _compare(q_grads, _step(ref, ids)[1])
    print(f"without the workaround: gradient cosine {cosine:.6f}, max per-tensor relative difference {rel:.2e}")
    assert cosine < 0.99
