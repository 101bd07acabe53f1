"""Metrics: per-step rollout statistics, and the sinks they go to (``metrics.jsonl``, TensorBoard, wandb, a rich
progress bar). ``metrics.jsonl`` is the source of truth: one JSON object per step, appended and flushed, so a run
that dies keeps every step it finished; the compare command and the tests read it."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlvr_temp.batch import Rollout
from rlvr_temp.utils import atomic_write_text


def rollout_metrics(
    groups: Sequence[Sequence[Rollout]],
    *,
    hot_bounds: tuple[float, float] | None = None,
    base_temperature: float = 1.0,
) -> dict[str, float]:
    """Reward, accuracy, length and entropy overall and per rollout temperature; with ``hot_bounds`` (the cold and hot
    temperature of a response at ``base_temperature``, per-token modes) the hot-token share and the hot tokens' mean
    entropy.

    A token is *hot* when its recorded temperature, minus its response's rollout shift, is nearer the hot bound
    than the cold one.
    """
    flat = [r for g in groups for r in g]
    if not flat:
        return {}
    out: dict[str, float] = {}
    rewards = [r.reward or 0.0 for r in flat]
    correct = [float(r.extra.get("correct", 0.0)) for r in flat]
    lengths = [len(r.token_ids) for r in flat]
    out["reward/mean"] = sum(rewards) / len(flat)
    out["acc/mean"] = sum(correct) / len(flat)
    out["response/length_mean"] = sum(lengths) / len(flat)
    out["response/length_max"] = float(max(lengths))
    out["response/truncated"] = sum(r.finish_reason == "length" for r in flat) / len(flat)
    ents = [h for r in flat for h in r.token_entropies if not math.isnan(h)]
    if ents:
        out["rollout/entropy_mean"] = sum(ents) / len(ents)
    by_t: dict[float, list[Rollout]] = defaultdict(list)
    for r in flat:
        by_t[round(r.temperature, 4)].append(r)
    if len(by_t) > 1:
        for t, rs in sorted(by_t.items()):
            out[f"acc/T={t:g}"] = sum(float(r.extra.get("correct", 0.0)) for r in rs) / len(rs)
            out[f"response/length_T={t:g}"] = sum(len(r.token_ids) for r in rs) / len(rs)
            e = [h for r in rs for h in r.token_entropies if not math.isnan(h)]
            if e:
                out[f"rollout/entropy_T={t:g}"] = sum(e) / len(e)
    if hot_bounds is not None:
        mid = (hot_bounds[0] + hot_bounds[1]) / 2
        hot = total = 0
        hot_ents: list[float] = []
        for r in flat:
            shift = r.temperature - base_temperature
            is_hot = [(t - shift) >= mid for t in r.token_temperatures]
            hot += sum(is_hot)
            total += len(r.token_temperatures)
            hot_ents += [h for h, x in zip(r.token_entropies, is_hot) if x and not math.isnan(h)]
        out["rollout/hot_token_share"] = hot / max(1, total)
        if hot_ents:  # the mean entropy (T = 1) of the tokens sampled hot: temperature.control's `hot_entropy`
            out["rollout/hot_entropy_mean"] = sum(hot_ents) / len(hot_ents)
    temps = [t for r in flat for t in r.token_temperatures]
    if temps:
        mean = sum(temps) / len(temps)
        out["rollout/token_temperature_mean"] = mean
        out["rollout/token_temperature_std"] = math.sqrt(sum((t - mean) ** 2 for t in temps) / len(temps))
    return out


class MetricsLogger:
    """Appends one JSON line per step to ``metrics.jsonl``; mirrors scalars to TensorBoard / wandb if enabled."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool = True,
        wandb: bool = False,
        run_name: str | None = None,
        config: dict | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._last: dict[str, Any] | None = None
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        self._wandb = None
        if wandb:
            import wandb as wb  # optional dependency

            self._wandb = wb.init(name=run_name, config=config, dir=str(self.run_dir))

    def log(self, step: int, metrics: dict[str, Any], merge: bool = False) -> None:
        """Append a row; ``merge`` adds the metrics to the last row instead (same step), rewriting it. The file is
        opened for each row (one line per step), so that rows dropped by :func:`truncate_metrics` stay dropped."""
        if merge and self._last is not None and self._last["step"] == step:
            self._last.update(metrics)
            lines = self.path.read_text(encoding="utf-8").splitlines()
            lines[-1] = json.dumps(self._last, allow_nan=True)
            atomic_write_text(self.path, "".join(line + "\n" for line in lines))
        else:
            self._last = {"step": step, "time": time.time(), **metrics}
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(self._last, allow_nan=True) + "\n")
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (a torn last line, from a killed run, is ignored)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (not a run directory, or no step finished yet)")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Drop the rows of steps ``>= step`` (written after the checkpoint being resumed, before a crash), atomically."""
    path = Path(run_dir) / "metrics.jsonl"
    if path.is_file():
        keep = [json.dumps(r, allow_nan=True) for r in read_metrics(run_dir) if r.get("step", step) < step]
        atomic_write_text(path, "".join(line + "\n" for line in keep))
