"""Token Temperature Mechanism (TTM) and Guided Sequence of Thought (GSoT) of Quasar-1.

Gomaa & Salah, "Guidance is All You Need: Temperature-Guided Reasoning in Large Language Models"
(arXiv 2412.06822). The paper gives every token a learned *temperature* in (0, 1): "hot" tokens (near 1) are
contextually important, "cold" tokens (near 0) supplementary. Its seed script realises that as a small head on
the model's final hidden states; this module is our implementation of the pieces that are well defined:

* :class:`TokenTemperatureHead` -- ``Linear(hidden, heads) -> sigmoid -> clamp[t_min, t_max]`` per token
  (``forward``: ``[B, L, H] -> [B, L, heads]``); :meth:`TokenTemperatureHead.token_temperature` is the mean over
  heads, ``[B, L]``. The clamp passes gradients straight through (a plain clamp has zero gradient outside
  its range, so a head driven past ``t_min`` never comes back). Initialised so that its output is ``t0``
  (bias ``logit(t0)``) up to tiny random weights that break the symmetry between heads.
* :func:`temperature_regularization` -- ``weight * mean((t - t0)^2)`` over real tokens only (mask-aware; the
  seed script also averaged over padding).
* :func:`gsot_mask` / :func:`gsot_weights` -- GSoT: tokens whose mean TTM temperature is below a threshold are
  *cold*. We use that at training time to down-weight (``cold_weight`` in [0, 1]) or exclude (``0``) the cold
  tokens' language-model loss terms. The seed script instead zeroed the hidden states of cold tokens before the
  LM head, so the model predicts from a zero vector there (all-zero logits for Llama, whose LM head has no
  bias: a uniform distribution) -- it corrupts the predictions instead of re-weighting the objective.
* :func:`to_sampling_range` -- the affine map from the head's ``[t_min, t_max]`` into a sampling-temperature
  range ``[T_low, T_high]`` (the ``learned`` rollout mode samples each token at the mapped temperature; the
  TGR trainer uses the same map for its calibration loss, see ``docs/tgr.md``).
* :func:`save_head` / :func:`load_head` -- one safetensors file with the head's settings in its metadata.

Pure torch; shapes are ``B`` (batch), ``L`` (sequence) and ``H`` (hidden size).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "TokenTemperatureHead",
    "gsot_mask",
    "gsot_weights",
    "load_head",
    "save_head",
    "temperature_regularization",
    "to_sampling_range",
]


class TokenTemperatureHead(nn.Module):
    """Per-token temperatures in ``[t_min, t_max]`` from hidden states (Quasar-1's TTM).

    ``init_temperature`` (``t0``) must lie strictly inside ``(t_min, t_max)``. The weights start as
    ``N(0, init_std^2)`` (default ``0.01 / sqrt(hidden_size)``: for unit-scale hidden states the initial
    logits deviate from ``logit(t0)`` by about 0.01, the temperatures from ``t0`` by about 0.0025) and the bias
    at ``logit(t0)``; ``init_std=0`` gives exactly ``t0`` but then every head receives the same gradient and the
    heads stay identical.
    """

    def __init__(
        self,
        hidden_size: int,
        heads: int = 8,
        t_min: float = 0.01,
        t_max: float = 0.99,
        init_temperature: float = 0.5,
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        if hidden_size < 1 or heads < 1:
            raise ValueError(f"hidden_size ({hidden_size}) and heads ({heads}) must be >= 1")
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        if not t_min < init_temperature < t_max:
            raise ValueError(f"init_temperature ({init_temperature}) must lie in (t_min, t_max) = ({t_min}, {t_max})")
        self.hidden_size, self.heads = hidden_size, heads
        self.t_min, self.t_max, self.init_temperature = float(t_min), float(t_max), float(init_temperature)
        self.proj = nn.Linear(hidden_size, heads)
        std = 0.01 / math.sqrt(hidden_size) if init_std is None else float(init_std)
        with torch.no_grad():
            if std > 0:
                self.proj.weight.normal_(0.0, std)
            else:
                self.proj.weight.zero_()
            self.proj.bias.fill_(math.log(init_temperature / (1.0 - init_temperature)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``[B, L, H] -> [B, L, heads]`` temperatures (computed in the head's dtype)."""
        soft = torch.sigmoid(self.proj(hidden_states.to(self.proj.weight.dtype)))
        # value: the clamp, exactly; gradient: the sigmoid's (straight through the clamp), so that a head pushed
        # past t_min / t_max is not stuck there with zero gradient, not even from the regulariser
        return soft.clamp(self.t_min, self.t_max).detach() + (soft - soft.detach())

    def token_temperature(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Mean temperature over heads, ``[B, L]``."""
        return self(hidden_states).mean(dim=-1)

    def settings(self) -> dict[str, float | int]:
        """Constructor arguments (stored beside the weights by :func:`save_head`)."""
        return {
            "hidden_size": self.hidden_size,
            "heads": self.heads,
            "t_min": self.t_min,
            "t_max": self.t_max,
            "init_temperature": self.init_temperature,
        }

    def extra_repr(self) -> str:
        return f"range=[{self.t_min}, {self.t_max}], t0={self.init_temperature}"


def _mean_over_mask(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    m = mask.to(values.dtype)
    while m.dim() < values.dim():
        m = m.unsqueeze(-1)
    m = m.expand_as(values)
    return (values * m).sum() / m.sum().clamp(min=1.0)


def temperature_regularization(
    temperatures: torch.Tensor, t0: float, weight: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``weight * mean((t - t0)^2)`` over real tokens.

    ``temperatures``: ``[B, L]`` or per head ``[B, L, heads]``; ``mask`` (``[B, L]``, 1 = real token, e.g. the
    attention mask) is broadcast over heads. Without a mask every element counts; with an all-zero mask the
    result is 0.
    """
    return weight * _mean_over_mask((temperatures.float() - t0) ** 2, mask)


def gsot_mask(temperatures: torch.Tensor, attention_mask: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """Cold tokens: real tokens whose (mean over heads, if ``[B, L, heads]``) temperature is ``< threshold``.

    Returns a bool ``[B, L]``; padding (``attention_mask == 0``) is never cold.
    """
    t = temperatures.mean(dim=-1) if temperatures.dim() == 3 else temperatures
    cold = t < threshold
    if attention_mask is not None:
        cold = cold & attention_mask.bool()
    return cold


def gsot_weights(
    temperatures: torch.Tensor, attention_mask: torch.Tensor | None, threshold: float, cold_weight: float = 0.0
) -> torch.Tensor:
    """Loss weights for GSoT: 1 for hot real tokens, ``cold_weight`` for cold ones, 0 for padding (float ``[B, L]``).

    ``cold_weight = 0`` excludes the cold tokens' loss terms; ``1`` switches GSoT off. The weights carry no
    gradient (the threshold is a hard decision).
    """
    if not 0.0 <= cold_weight <= 1.0:
        raise ValueError(f"cold_weight must be in [0, 1], got {cold_weight}")
    cold = gsot_mask(temperatures.detach(), attention_mask, threshold)
    real = attention_mask.bool() if attention_mask is not None else torch.ones_like(cold)
    w = torch.where(cold, torch.full_like(cold, cold_weight, dtype=torch.float32), real.float())
    return w


def to_sampling_range(
    t: torch.Tensor | float, t_low: float, t_high: float, t_min: float = 0.01, t_max: float = 0.99
) -> torch.Tensor | float:
    """Affine map of head temperatures ``[t_min, t_max] -> [t_low, t_high]`` (``t_min -> t_low``,
    ``t_max -> t_high``); inputs outside ``[t_min, t_max]`` are clamped first. Works on tensors and floats."""
    if t_max <= t_min:
        raise ValueError(f"need t_min < t_max, got {t_min}, {t_max}")
    if t_high < t_low:
        raise ValueError(f"need t_low <= t_high, got {t_low}, {t_high}")
    scale = (t_high - t_low) / (t_max - t_min)
    if isinstance(t, torch.Tensor):
        return t_low + (t.clamp(t_min, t_max) - t_min) * scale
    return t_low + (min(max(float(t), t_min), t_max) - t_min) * scale


def save_head(head: TokenTemperatureHead, path: str | Path) -> Path:
    """Write the head's weights (fp32) and settings (safetensors metadata) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(tensors, str(path), metadata={k: str(v) for k, v in head.settings().items()})
    return path


def load_head(path: str | Path, device: torch.device | str = "cpu") -> TokenTemperatureHead:
    """Rebuild a head written by :func:`save_head`."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    try:
        head = TokenTemperatureHead(
            int(meta["hidden_size"]),
            int(meta["heads"]),
            float(meta["t_min"]),
            float(meta["t_max"]),
            float(meta["init_temperature"]),
            init_std=0.0,
        )
    except KeyError as exc:
        raise ValueError(f"{path}: not a TTM head file (metadata lacks {exc})") from None
    head.load_state_dict(load_file(str(path)))
    return head.to(device)
