"""`rlvr-temp show-rollout RUN --step N --index I`: one response with every token coloured by the temperature it
was sampled at and by its entropy, as HTML (hover a token for its numbers) and PNG. Reads the rollout dumps a run
writes with ``rollout.dump=true``; runs in the process of the ``show-rollout`` command. Left out: several responses
on one page."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import yaml


def load_rollout(run_dir: str | Path, step: int, index: int) -> dict[str, Any]:
    path = Path(run_dir) / "rollouts" / f"step_{step:06d}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no rollout dump (train with rollout.dump=true)")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not 0 <= index < len(lines):
        raise ValueError(f"{path}: index {index} out of range (0..{len(lines) - 1})")
    return json.loads(lines[index])


def _tokenizer(run_dir: Path) -> Any:
    from transformers import AutoTokenizer

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    path = (cfg or {}).get("model", {}).get("path", "tiny")
    if path == "tiny":
        from rlvr_temp.data.tiny_model import ensure_tiny_model

        path = str(ensure_tiny_model())
    return AutoTokenizer.from_pretrained(path)


def _colour(x: float, lo: float, hi: float) -> tuple[float, float, float]:
    """Pastel blue (lo) -> white -> pastel red (hi), light enough to read black text on."""
    t = 0.5 if hi <= lo or x is None or math.isnan(x) else min(1.0, max(0.0, (x - lo) / (hi - lo)))
    s = 1.0 - 0.6 * abs(t - 0.5) / 0.5
    return (s, s, 1.0) if t < 0.5 else (1.0, s, s)


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{int(255 * c):02x}" for c in rgb)


def render(run_dir: str | Path, step: int, index: int, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``rollout_s<step>_i<index>.html`` and ``.png``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    row = load_rollout(run_dir, step, index)
    tok = _tokenizer(run_dir)
    pieces = [tok.decode([t]) for t in row["token_ids"]]
    temps, ents, lps = row["token_temperatures"], row["token_entropies"], row["token_logprobs"]
    t_lo, t_hi = min(temps, default=0.0), max(temps, default=1.0)
    finite = [h for h in ents if h is not None and not math.isnan(h)]
    h_lo, h_hi = min(finite, default=0.0), max(finite, default=1.0)
    out = Path(out_dir or run_dir / "views")
    out.mkdir(parents=True, exist_ok=True)
    stem = f"rollout_s{step}_i{index}"

    def spans(values: list[float], lo: float, hi: float) -> str:
        cells = []
        for p, t, h, lp, v in zip(pieces, temps, ents, lps, values):
            tip = f"T={t:.3f} H={h:.3f} logp={lp:.3f}"
            text = html.escape(p).replace("\n", "↵<br>") or "&nbsp;"
            cells.append(f'<span title="{tip}" style="background:{_hex(_colour(v, lo, hi))}">{text}</span>')
        return "".join(cells)

    head = (
        f"<h3>{html.escape(str(run_dir))} step {step} response {index}: prompt {row['prompt_id']}, rollout "
        f"temperature {row['temperature']}, reward {row.get('reward')}, finish {row['finish_reason']}</h3>"
    )
    body = (
        f"{head}<p><b>temperature</b> (blue {t_lo:.2f} → red {t_hi:.2f})</p><pre>{spans(temps, t_lo, t_hi)}</pre>"
        f"<p><b>entropy</b> (blue {h_lo:.2f} → red {h_hi:.2f})</p><pre>{spans(ents, h_lo, h_hi)}</pre>"
    )
    html_path = out / f"{stem}.html"
    html_path.write_text(f"<!doctype html><meta charset='utf-8'><body style='font-family:monospace'>{body}</body>\n")

    per_line = 48
    n_lines = max(1, math.ceil(len(pieces) / per_line))
    fig, axes = plt.subplots(2, 1, figsize=(per_line * 0.22 + 1, 2 * (0.35 * n_lines + 0.8)))
    for ax, values, lo, hi, title in (
        (axes[0], temps, t_lo, t_hi, "sampling temperature"),
        (axes[1], ents, h_lo, h_hi, "entropy (T=1)"),
    ):
        ax.set_xlim(0, per_line)
        ax.set_ylim(n_lines, 0)
        ax.axis("off")
        ax.set_title(f"{title}: blue {lo:.2f} → red {hi:.2f}", fontsize=9, loc="left")
        for k, (p, v) in enumerate(zip(pieces, values)):
            x, y = k % per_line, k // per_line
            ax.add_patch(plt.Rectangle((x, y), 1, 1, color=_colour(v, lo, hi)))
            ax.text(
                x + 0.5, y + 0.55, p.replace("\n", "↵") or " ", ha="center", va="center", fontsize=8, family="monospace"
            )
    fig.tight_layout()
    png_path = out / f"{stem}.png"
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return {"html": html_path, "png": png_path}
