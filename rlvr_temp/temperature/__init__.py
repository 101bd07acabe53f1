"""The one home of temperature logic: the per-mode strategy, entropy windows, the token rule, rollout mixtures,
schedules, and the request format the strategies write and the vLLM processors read (``request``).

Pure torch / numpy, vectorised over the batch; used by the vLLM logits processor (one call per decode step)
and by the learner (log-probs at the per-token temperatures the rollout used). Method: Wu et al., "Exploring
Multi-Temperature Strategies for Token- and Rollout-Level Control in RLVR" (arXiv 2510.08892); the semantics are
written out in ``docs/temperature.md``.
"""

from .logits import (
    MIN_TEMPERATURE,
    entropy_from_logits,
    sanitize_logits,
    token_entropies,
    token_logprobs,
    truncate_logits,
)
from .mixture import (
    authors_offsets,
    expand_counts,
    group_by_temperature,
    offset_pattern,
    rollout_temperatures,
)
from .schedule import (
    SCHEDULES,
    ConstantSchedule,
    CosineSchedule,
    LinearSchedule,
    Schedule,
    SpikeSchedule,
    make_schedule,
    register_schedule,
)
from .seq_window import SequenceEntropyWindows
from .strategy import MODES, TemperatureStrategy, make_strategy, register_mode
from .token_rule import TokenTemperatureRule
from .ttm import (
    TokenTemperatureHead,
    gsot_mask,
    gsot_weights,
    load_head,
    save_head,
    temperature_regularization,
    to_sampling_range,
)
from .window import GlobalEntropyWindow, quantile_index

__all__ = [
    "MIN_TEMPERATURE",
    "MODES",
    "SCHEDULES",
    "ConstantSchedule",
    "CosineSchedule",
    "GlobalEntropyWindow",
    "LinearSchedule",
    "Schedule",
    "SequenceEntropyWindows",
    "SpikeSchedule",
    "TemperatureStrategy",
    "TokenTemperatureHead",
    "TokenTemperatureRule",
    "authors_offsets",
    "entropy_from_logits",
    "expand_counts",
    "group_by_temperature",
    "gsot_mask",
    "gsot_weights",
    "load_head",
    "make_schedule",
    "make_strategy",
    "offset_pattern",
    "quantile_index",
    "register_mode",
    "register_schedule",
    "rollout_temperatures",
    "sanitize_logits",
    "save_head",
    "temperature_regularization",
    "to_sampling_range",
    "token_entropies",
    "token_logprobs",
    "truncate_logits",
]
