"""The logits helpers the rollout and the learner share: sanitising, entropies, log-probs and truncation.

Pure functions, fp32 math (fp64 for fp64 input), row-chunked so that no full ``[N, V]`` fp32 copy is made:
:func:`sanitize_logits` (the TGR seed's ``ClampLogits``), :func:`entropy_from_logits` (the entropy the token rule
thresholds) and its cheaper twin for sanitised logits :func:`entropy_of_sanitized` (the processors'),
:func:`token_logprobs` (``log_softmax(logits / T)`` at the sampled token with a custom backward that recomputes the
softmax chunk by chunk; the learner's), :func:`token_entropies` and :func:`truncate_logits` (top-p / top-k of the
tempered distribution). A scalar temperature is expanded to a tensor and goes through the same code as per-token
temperatures, so the two agree bit for bit when all temperatures are equal.

:data:`MIN_TEMPERATURE` is the one lower clamp of every temperature in the project (rule, processors, learner).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "MIN_TEMPERATURE",
    "entropy_from_logits",
    "entropy_of_sanitized",
    "row_chunk",
    "sanitize_logits",
    "token_entropies",
    "token_logprobs",
    "truncate_logits",
]

MIN_TEMPERATURE = 1e-4
"""Lower clamp of every temperature (docs/temperature.md: the learner clamps ``T_t >= 1e-4``)."""

_CHUNK_ELEMENTS = 1 << 24  # rows per chunk = this // vocab: ~64 MiB of fp32 temporaries


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def row_chunk(vocab: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return chunk_size
    return max(1, _CHUNK_ELEMENTS // max(vocab, 1))


def sanitize_logits(logits: torch.Tensor, clamp: float = 50.0, inplace: bool = False) -> torch.Tensor:
    """Make logits safe to sample from: NaN -> ``-clamp``; +-inf and the rest clipped to ``[-clamp, clamp]``.

    The guard of the TGR / Quasar seed's ``ClampLogits`` processor (logits clamped to [-50, 50]). A row that
    is all NaN becomes uniform (finite entropy ``log V``, finite temperatures). The dtype is kept.
    """
    if clamp <= 0 or not math.isfinite(clamp):
        raise ValueError(f"clamp must be a positive finite number, got {clamp}")
    out = logits if inplace else logits.clone()
    torch.nan_to_num_(out, nan=-clamp, posinf=clamp, neginf=-clamp)
    return out.clamp_(-clamp, clamp)


def _entropy_rows(z: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(z)`` over the last dim; NaN entries are ignored; no usable entry gives 0."""
    z = torch.nan_to_num(z, nan=-math.inf, posinf=torch.finfo(z.dtype).max)
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, torch.zeros((), dtype=z.dtype, device=z.device))
    h = -plogp.sum(dim=-1)
    return torch.nan_to_num(h, nan=0.0).clamp_min(0.0)


def _as_temperatures(
    temperatures: torch.Tensor | float, shape: torch.Size, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    t = torch.as_tensor(temperatures, device=device).detach()
    t = t.to(dtype).broadcast_to(shape).reshape(-1)
    return t.clamp_min(MIN_TEMPERATURE)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Entropy ``-sum p log p`` of ``softmax(logits)`` at temperature 1 over the last dim: ``logits[..., 0]``.

    The quantity the token rule thresholds (arXiv 2510.08892: logits after penalties, before temperature).
    fp32 (fp64 for fp64 input), via ``log_softmax`` (numerically stable); NaN logits count as masked, ``-inf``
    entries contribute 0, a row with no usable logit has entropy 0, so the result is always finite and >= 0.
    """
    return token_entropies(logits, 1.0, chunk_size=chunk_size)


def entropy_of_sanitized(logits: torch.Tensor) -> torch.Tensor:
    """:func:`entropy_from_logits` of logits that :func:`sanitize_logits` made finite, with fewer kernels.

    Bit-identical to ``entropy_from_logits`` for finite input: the division by ``T = 1`` and the NaN/inf
    guards are identities there, and ``where(p > 0, p * log p, 0)`` differs from ``p * log p`` only in the
    sign of zero terms, which never changes the (non-zero) row sum. Same row chunks, hence the same kernels
    over the same shapes, as ``entropy_from_logits``.
    """
    cdt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    vocab = logits.shape[-1]
    step = row_chunk(vocab, None)
    outs = []
    for i in range(0, logits.shape[0], step):
        z = logits[i : i + step]
        z = z.to(cdt) if z.dtype != cdt else z.contiguous()
        logp = torch.log_softmax(z, dim=-1)
        outs.append(torch.mul(logp.exp(), logp).sum(dim=-1).neg_().clamp_min_(0.0))
    if not outs:
        return torch.empty(0, dtype=cdt, device=logits.device)
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def token_entropies(
    logits: torch.Tensor, temperatures: torch.Tensor | float = 1.0, chunk_size: int | None = None
) -> torch.Tensor:
    """Entropy of ``softmax(logits / T)`` per position; ``temperatures``: a float or ``[...]`` broadcastable.

    Computed in row chunks with plain ops (differentiable); ``T`` is clamped to ``>= 1e-4``. With ``T = 1``
    this equals :func:`entropy_from_logits` exactly.
    """
    vocab = logits.shape[-1]
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, vocab)
    cdt = _compute_dtype(logits.dtype)
    t = _as_temperatures(temperatures, lead, cdt, logits.device)
    step = row_chunk(vocab, chunk_size)
    outs = [_entropy_rows(flat[i : i + step].to(cdt) / t[i : i + step, None]) for i in range(0, flat.shape[0], step)]
    if not outs:
        return torch.empty(lead, dtype=cdt, device=logits.device)
    return torch.cat(outs).reshape(lead)


def truncate_logits(logits: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Nucleus / top-k truncation of ``[B, V]`` logits (already divided by their temperatures): per row, keep the
    ``top_k`` largest (``<= 0``: all) and of those the smallest set whose probability reaches ``top_p`` (vLLM's and
    Hugging Face's rule: a token goes when the tokens above it already hold ``top_p``); the rest become ``-inf``.
    The most likely token always stays. Returns a new tensor."""
    vocab = logits.shape[-1]
    ordered, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device)
    k = torch.where(top_k > 0, top_k, vocab).clamp(max=vocab).to(logits.device)
    drop = ranks[None, :] >= k[:, None]
    probs = ordered.masked_fill(drop, -math.inf).float().softmax(dim=-1)
    above = probs.cumsum(dim=-1) - probs  # probability held by the strictly more likely tokens
    drop |= above >= top_p.to(logits.device, torch.float32)[:, None]
    drop[:, 0] = False
    return logits.scatter(-1, order, ordered.masked_fill(drop, -math.inf))


class _TokenLogprob(torch.autograd.Function):
    """``log_softmax(x / T)[token]`` with a chunked forward and a backward that recomputes the softmax.

    Saves only the logits (which the model keeps anyway), the token ids, the temperatures and ``logsumexp``
    (``[N]``), so training memory does not grow by an fp32 ``[N, V]`` copy.
    """

    @staticmethod
    def forward(ctx, logits, token_ids, temps, step):  # type: ignore[override]
        cdt = _compute_dtype(logits.dtype)
        n = logits.shape[0]
        out = torch.empty(n, dtype=cdt, device=logits.device)
        lse = torch.empty(n, dtype=cdt, device=logits.device)
        for i in range(0, n, step):
            z = logits[i : i + step].to(cdt) / temps[i : i + step, None]
            lse[i : i + step] = torch.logsumexp(z, dim=-1)
            out[i : i + step] = z.gather(1, token_ids[i : i + step, None]).squeeze(1) - lse[i : i + step]
        ctx.save_for_backward(logits, token_ids, temps, lse)
        ctx.step = step
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        logits, token_ids, temps, lse = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        step = ctx.step
        cdt = lse.dtype
        grad = torch.empty_like(logits)
        for i in range(0, logits.shape[0], step):
            t = temps[i : i + step, None]
            g_t = grad_out[i : i + step, None].to(cdt) / t  # d log p / d z_v = (1[v = token] - p_v) / T
            # one buffer, in place (log_softmax's backward makes as few passes): z / T - lse -> p -> -p g / T
            p = torch.div(logits[i : i + step], t, out=grad[i : i + step] if grad.dtype == cdt else None)
            p.sub_(lse[i : i + step, None]).exp_().mul_(-g_t)
            p.scatter_add_(1, token_ids[i : i + step, None], g_t)
            if p.data_ptr() != grad[i : i + step].data_ptr():
                grad[i : i + step] = p.to(grad.dtype)
        return grad, None, None, None


def token_logprobs(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    temperatures: torch.Tensor | float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``log_softmax(logits / T)`` gathered at ``token_ids``: the learner's on-policy log-probs (docs/temperature.md).

    Args:
        logits: ``[..., V]`` (any float dtype; math in fp32, fp64 for fp64 input).
        token_ids: ``[...]`` integer ids.
        temperatures: per-token ``T_t`` broadcastable to ``token_ids`` (on-policy, arXiv 2510.08892), or one
            float (off-policy / plain sampling). Clamped to ``>= 1e-4``; treated as data (no gradient).
        chunk_size: rows per chunk (default: ~64 MiB of fp32 temporaries).

    Returns:
        ``[...]`` log-probs, differentiable with respect to ``logits``. A scalar and an all-equal per-token
        tensor give bit-identical results.
    """
    vocab = logits.shape[-1]
    if token_ids.shape != logits.shape[:-1]:
        raise ValueError(f"token_ids shape {tuple(token_ids.shape)} != logits shape {tuple(logits.shape)}[:-1]")
    lead = token_ids.shape
    flat = logits.reshape(-1, vocab)
    ids = token_ids.reshape(-1).to(device=logits.device, dtype=torch.long)
    t = _as_temperatures(temperatures, lead, _compute_dtype(logits.dtype), logits.device).contiguous()
    out = _TokenLogprob.apply(flat, ids, t, row_chunk(vocab, chunk_size))
    return out.reshape(lead)
