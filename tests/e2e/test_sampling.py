"""Tokens are *sampled* from ``softmax(logits / T_t)`` at their recorded temperatures: a distributional test of a real
vLLM (CPU build) engine through the rollout worker, in ``token``, ``mixture`` and ``token+mixture`` modes.

The other end-to-end tests compare recorded log-probs, which stay self-consistent whatever the sampler does (vLLM's
CPU sampler draws with its own fused kernel). Here transformers (fp32 model, statistics in fp64) teacher-forces the
generated sequences and recomputes the full next-token distribution at every generated position; for each group of
tokens that share one recorded temperature ``T`` two statistics with an exactly known null distribution under
"``x ~ softmax(logits / T_c)``" are computed for three candidates ``T_c``: ``T`` itself, 1 and ``T**2``:

* a score test: ``z = sum(log q(x) - E_q[log q]) / sqrt(sum Var_q[log q])`` with ``q = softmax(logits / T_c)``, the
  exact per-position mean and variance (``N(0, 1)`` under the null by the CLT over thousands of tokens). Since
  ``log q(x) - E_q[log q] = (l(x) - E_q[l]) / T_c``, it is the score of the inverse temperature: the locally most
  powerful test against another temperature;
* the randomized probability integral transform ``u = F(x-) + V q(x)``, ``V ~ U(0, 1)``, with the vocabulary ordered
  by logit (the same order for every temperature, ties by token id): uniform under the null, and pushed towards 0
  (cooler sampling) or 1 (hotter) otherwise; a one-sample Kolmogorov-Smirnov test against U(0, 1).

At the recorded temperature both must accept; at ``T_c = 1`` and ``T_c = T**2`` both must reject decisively (the
negative controls show the test has the power to tell them apart). The trained tiny model is near-deterministic on
its task (entropy ~0.1 nat), so the engine serves a randomly initialised model of the same architecture (an untied,
scaled output layer) with mean entropies of 2.4-3.2 nats at T = 1 (of log 128 = 4.85) over the generated tokens.
Everything is seeded (model, per-request sampling seeds, one batch per call, the PIT's V), so the statistics are the
same from run to run. Observed (n tokens; z / KS p at T_c = T, 1, T**2):

=============  =====  ====  ==============  ===============  ===============
mode           T      n     at T            at 1             at T**2
=============  =====  ====  ==============  ===============  ===============
token          0.6    4661  -0.7 / 0.50     +42.1 / <1e-300  -72.2 / 1e-74
token          1.6    3531  +0.5 / 0.83     -41.4 / 3e-185   +26.5 / 6e-112
mixture        0.5    4096  +0.8 / 0.89     +47.1 / <1e-300  -87.2 / 4e-93
mixture        1.5    4096  -1.5 / 0.19     -47.2 / 6e-238   +28.1 / 4e-122
token+mixture  0.5    2504  +2.0 / 0.80     +36.1 / 9e-296   -58.1 / 6e-22
token+mixture  0.7    2421  -1.1 / 0.054    +24.0 / 9e-105   -37.6 / 4e-55
token+mixture  1.5    1592  -0.4 / 0.83     -24.7 / 4e-73    +15.7 / 7e-43
token+mixture  1.7    1675  -1.1 / 0.33     -33.9 / 5e-117   +17.7 / 2e-47
=============  =====  ====  ==============  ===============  ===============
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

PROMPTS = [f"Q: {a}+{b}\nA:" for a, b in zip(range(11, 99, 11), range(97, 10, -11))] * 2  # 16 prompts
RESPONSES = 16  # per prompt: 256 requests, one engine batch
MAX_TOKENS = 32  # with ignore_eos: 8,192 tokens per mode
LOGIT_SCALE = 10.0  # output-layer gain of the random model: logits of std ~2.2, entropies of ~3 nats at T = 1

ACCEPT_Z, ACCEPT_P = 4.0, 1e-3  # at the recorded temperature
REJECT_Z, REJECT_P = 8.0, 1e-6  # at T = 1 and at T**2


def _strategy(mode: str):
    from rlvr_temp.config.schema import TemperatureConfig, TokenRuleConfig
    from rlvr_temp.temperature import make_strategy

    token = TokenRuleConfig(t_low=0.6, t_high=1.6, hot_fraction=0.4, window=4096, scope="global")
    return make_strategy(TemperatureConfig(mode=mode, token=token))


# mode -> (rollout temperatures of each prompt's responses, the recorded temperatures expected)
CASES = {
    "token": ([1.0] * RESPONSES, {0.6, 1.6}),
    "mixture": ([0.5, 1.5] * (RESPONSES // 2), {0.5, 1.5}),
    # the rule around each response's rollout temperature: t_low / t_high shifted by -0.1 / +0.1
    "token+mixture": ([0.9, 1.1] * (RESPONSES // 2), {0.5, 0.7, 1.5, 1.7}),
}


# ---------------------------------------------------------------------------------------------- statistics
def score_z(logits: np.ndarray, tokens: np.ndarray, t: float) -> float:
    """Score statistic of ``x ~ softmax(logits / t)`` row by row: ``N(0, 1)`` under that null."""
    logq = logits / t
    logq = logq - np.logaddexp.reduce(logq, axis=1, keepdims=True)
    q = np.exp(logq)
    mean = (q * logq).sum(1)
    var = (q * logq**2).sum(1) - mean**2
    return float((logq[np.arange(len(tokens)), tokens] - mean).sum() / math.sqrt(var.sum()))


def randomized_pit(logits: np.ndarray, tokens: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
    """``F(x-) + V q(x)`` with the vocabulary in descending-logit order: U(0, 1) under ``x ~ softmax(logits / t)``."""
    order = np.argsort(-logits, axis=1, kind="stable")  # the same order at every temperature
    logq = np.take_along_axis(logits, order, 1) / t
    q = np.exp(logq - np.logaddexp.reduce(logq, axis=1, keepdims=True))
    rank = np.argmax(order == tokens[:, None], axis=1)
    rows = np.arange(len(tokens))
    below = np.cumsum(q, axis=1)[rows, rank] - q[rows, rank]
    return below + rng.random(len(tokens)) * q[rows, rank]


def ks_uniform(u: np.ndarray) -> tuple[float, float]:
    """One-sample Kolmogorov-Smirnov test of ``u`` against U(0, 1): (D, p-value), the p-value from Kolmogorov's
    limit distribution with Stephens' finite-sample correction."""
    u = np.sort(u)
    n = len(u)
    i = np.arange(1, n + 1)
    d = float(max((i / n - u).max(), (u - (i - 1) / n).max()))
    return d, kolmogorov_sf((math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d)


def kolmogorov_sf(lam: float) -> float:
    """``P(K > lam)`` for Kolmogorov's distribution (the limit of ``sqrt(n) D``)."""
    if lam < 0.2:
        return 1.0
    return min(max(2 * sum((-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam) for j in range(1, 101)), 0.0), 1.0)


def test_ks_uniform_helper():
    rng = np.random.default_rng(0)
    assert ks_uniform(rng.random(5000))[1] > 0.01
    assert ks_uniform(rng.random(5000) ** 1.1)[1] < 1e-6
    # Kolmogorov's distribution's tabulated quantiles
    assert kolmogorov_sf(1.3581) == pytest.approx(0.05, abs=1e-4)
    assert kolmogorov_sf(1.6276) == pytest.approx(0.01, abs=1e-4)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> str:
    """A randomly initialised model of the tiny model's architecture and tokenizer, with well-spread logits: an
    untied output layer (a tied one makes the current token's logit an outlier that takes all the mass when
    cooled) scaled up to logits of std ~2.2."""
    from transformers import LlamaForCausalLM

    from rlvr_temp.data.tiny_model import TinyModelSettings, build_tokenizer, make_model

    settings = TinyModelSettings(seed=1234)
    tokenizer = build_tokenizer(settings.vocab_size)
    config = make_model(settings, tokenizer).config
    config.tie_word_embeddings = False
    torch.manual_seed(settings.seed)
    model = LlamaForCausalLM(config).float()
    with torch.no_grad():
        model.lm_head.weight.mul_(LOGIT_SCALE)
    path = tmp_path_factory.mktemp("random-llama")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def samples(random_model) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """mode -> (fp64 logits [N, V] from transformers, sampled tokens [N], recorded temperatures [N], recorded
    log-probs [N]) over every generated token of one ``generate`` call per mode, all on one engine."""
    from transformers import AutoModelForCausalLM

    from rlvr_temp.config.schema import EngineConfig, ModelConfig
    from rlvr_temp.engine.worker import RolloutWorker

    worker = RolloutWorker(random_model, ModelConfig(path=random_model, max_model_len=128), EngineConfig(), seed=0)
    try:
        groups = {
            mode: worker.generate(
                PROMPTS,
                [temps] * len(PROMPTS),
                max_tokens=MAX_TOKENS,
                strategy=_strategy(mode),
                seed=17,
                ignore_eos=True,
            )
            for mode, (temps, _) in CASES.items()
        }
    finally:
        worker.close()

    model = AutoModelForCausalLM.from_pretrained(random_model, dtype=torch.float32).eval()
    out = {}
    for mode, gs in groups.items():
        logits, tokens, temps, lps = [], [], [], []
        for g in gs:
            prompt = g[0].prompt_token_ids
            assert all(r.prompt_token_ids == prompt and len(r.token_ids) == MAX_TOKENS for r in g)
            ids = torch.tensor([prompt + r.token_ids for r in g])
            with torch.no_grad():
                logits.append(model(ids).logits[:, len(prompt) - 1 : -1].flatten(0, 1))
            tokens += [x for r in g for x in r.token_ids]
            temps += [x for r in g for x in r.token_temperatures]
            lps += [x for r in g for x in r.token_logprobs]
        out[mode] = (
            torch.cat(logits).double().numpy(),
            np.array(tokens),
            np.array(temps),
            np.array(lps),
        )
    return out


# ---------------------------------------------------------------------------------------------- the test
@pytest.mark.parametrize("mode", list(CASES))
def test_tokens_follow_softmax_at_their_recorded_temperature(samples, mode):
    logits, tokens, temps, lps = samples[mode]
    groups = np.round(temps, 6)
    assert set(groups.tolist()) == CASES[mode][1]
    # the recorded log-probs are the tempered ones at the same positions (the alignment of the teacher forcing)
    logq = logits / temps[:, None]
    logq = logq - np.logaddexp.reduce(logq, axis=1, keepdims=True)
    assert np.abs(logq[np.arange(len(tokens)), tokens] - lps).mean() < 1e-3

    rng = np.random.default_rng(2024)
    report = []
    for t in sorted(set(groups.tolist())):
        sel = groups == t
        lg, tk = logits[sel], tokens[sel]
        logp = lg - np.logaddexp.reduce(lg, axis=1, keepdims=True)
        entropy = float(-(np.exp(logp) * logp).sum(1).mean())
        stats = {c: (score_z(lg, tk, c), ks_uniform(randomized_pit(lg, tk, c, rng))[1]) for c in (t, 1.0, t * t)}
        report.append(
            f"T={t}: n={int(sel.sum())}, H(T=1)={entropy:.2f}, "
            + ", ".join(f"T_c={c:.4g}: z={z:+.1f} p={p:.2g}" for c, (z, p) in stats.items())
        )
        (z_ok, p_ok), (z_one, p_one), (z_sq, p_sq) = stats.values()
        assert abs(z_ok) < ACCEPT_Z and p_ok > ACCEPT_P, report[-1]
        assert abs(z_one) > REJECT_Z and p_one < REJECT_P, report[-1]
        assert abs(z_sq) > REJECT_Z and p_sq < REJECT_P, report[-1]
    print(f"\n{mode}: " + "\n  ".join(report))
