"""The report of ``rlvr-temp compare``: a small document model rendered twice, as markdown (``summary.md``, images
linked) and as one self-contained HTML page (``report.html``, images embedded as base64 PNG), and its plots
(matplotlib, Agg). Runs in the process of the ``compare`` command. Text may use markdown's `code` and **bold**.
Left out: interactive plots (the page has no script)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlvr_temp.evaluation.stats import Interval

HOW_TO_READ = (
    "**How to read this.** Runs are grouped into arms; an arm's training curve is the mean over its seeds and the "
    "shaded band spans the lowest to the highest seed. Held-out numbers are means over problems and seeds at one "
    "evaluation step; brackets are {level:.0%} percentile bootstrap intervals ({n_boot} resamples of the problems "
    "and of the seeds, both with replacement, RNG seed {rng_seed}). Differences to the baseline are paired by "
    "problem (and by seed when both arms ran the same seeds). An interval that includes zero means these data "
    "cannot tell the arm from the baseline at this level — not that the arms are equal. With few seeds the "
    "seed-to-seed spread is underestimated, and with one seed not measured at all. Each difference also gets a "
    "Holm–Bonferroni verdict over all the report's comparisons (at the end); see docs/evaluation.md."
)
ONE_SEED = "problem-level interval; one seed: says nothing about seed-to-seed variation"
ONE_SEED_NOTE = (
    "**One seed: problem noise only.** {arms} ran a single seed, so every interval involving {them} resamples "
    "problems only (which problems are in the held-out set, and each problem's sampling noise), not training "
    "seeds: it captures problem noise only and says nothing about seed-to-seed variation. A verdict involving "
    "such an arm says that these trained runs differ on these problems, not that the arms (the training methods) "
    "do: one seed per arm cannot tell the arms apart. For that, run several seeds (`rlvr-temp sweep --seeds 3`)."
)
MULTIPLE_NOTE = (
    "This report makes **{m} comparisons** (every Δ cell above), each tested at {level:.0%} on its own: among {m} "
    "differences that are all truly zero, about {chance:.1f} would exclude zero by chance. The Holm column controls "
    "the family-wise error at {alpha:.0%} over all {m} (Holm–Bonferroni on each difference's two-sided bootstrap "
    "p-value; docs/evaluation.md); the pass@k columns share their samples, so it is conservative."
)


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{_inline(c)}</th>" for c in self.header)
        body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass
class Doc:
    """Blocks in order: ``("h1" | "h2" | "h3" | "p", text)``, ``("ul", [text, ...])``, ``("table", Table)``,
    ``("img", (path, caption))``."""

    blocks: list[tuple[str, object]] = field(default_factory=list)

    def h1(self, text: str) -> None:
        self.blocks.append(("h1", text))

    def h2(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def h3(self, text: str) -> None:
        self.blocks.append(("h3", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def ul(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("ul", list(items)))

    def table(self, table: Table) -> None:
        self.blocks.append(("table", table))

    def img(self, path: Path, caption: str) -> None:
        self.blocks.append(("img", (Path(path), caption)))

    def markdown(self, base: Path | None = None) -> str:
        """Markdown; image links relative to ``base`` (the directory the file is written to) when possible."""
        out: list[str] = []
        for kind, value in self.blocks:
            if kind in ("h1", "h2", "h3"):
                out += ["#" * int(kind[1]) + " " + str(value), ""]
            elif kind == "p":
                out += [str(value), ""]
            elif kind == "ul":
                out += [f"- {item}" for item in value] + [""]
            elif kind == "table":
                out += [value.markdown(), ""]
            elif kind == "img":
                path, caption = value
                out += [f"![{caption}]({_relative(path, base)})", ""]
        return "\n".join(out).rstrip() + "\n"

    def html(self, title: str) -> str:
        """One self-contained HTML page."""
        parts = []
        for kind, value in self.blocks:
            if kind in ("h1", "h2", "h3"):
                parts.append(f"<{kind}>{_inline(str(value))}</{kind}>")
            elif kind == "p":
                parts.append(f"<p>{_inline(str(value))}</p>")
            elif kind == "ul":
                parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in value) + "</ul>")
            elif kind == "table":
                parts.append(value.html())
            elif kind == "img":
                path, caption = value
                data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
                parts.append(
                    f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{_inline(caption)}</figcaption></figure>"
                )
        return (
            "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(parts)
            + "\n</body></html>\n"
        )


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
    "th,td{border:1px solid #ccc;padding:0.3em 0.6em;text-align:left;white-space:nowrap}"
    "th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3;padding:0 0.2em}"
    "figcaption{color:#666;font-size:0.9em}"
)


def _inline(text: str) -> str:
    """Escape, then render `code` and **bold**."""
    out = html.escape(str(text), quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _relative(path: Path, base: Path | None) -> str:
    if base is not None:
        try:
            return Path(path).resolve().relative_to(Path(base).resolve()).as_posix()
        except ValueError:
            pass
    return Path(path).as_posix()


def verdict(
    arm: str,
    base: str,
    name: str,
    metrics: list[str],
    ivs: list[Interval],
    level: float,
    *,
    one_seed: bool = False,
    holm: tuple[list[bool], int] | None = None,
) -> str:
    """One line on ``arm - base``: the metrics whose interval lies above zero, below zero, and includes zero
    (:meth:`~rlvr_temp.evaluation.stats.Interval.sign`, bounds within its ``tol`` of 0 count as 0). ``one_seed``:
    an arm has a single seed, and the line says its verdicts are problem-level (:data:`ONE_SEED`). ``holm``:
    ``(rejected per metric, m)``: the line ends with the metrics still higher / lower after Holm over ``m``."""
    groups: dict[int, list[str]] = {1: [], -1: [], 0: []}
    for metric, iv in zip(metrics, ivs):
        groups[iv.sign()].append(metric)
    parts = [
        f"{word} than {base} at {level:.0%} on " + ", ".join(groups[s]) for s, word in ((1, "higher"), (-1, "lower"))
    ]
    parts = [p for p, s in zip(parts, (1, -1)) if groups[s]]
    if groups[0]:
        parts.append(
            f"not distinguishable from {base} at {level:.0%} on " + ", ".join(groups[0]) + " (interval includes zero)"
        )
    head = f"**{arm}** vs {base} on `{name}`" + (f" ({ONE_SEED})" if one_seed else "")
    line = f"{head}: " + "; ".join(parts)
    if holm is not None:
        kept = [(m, iv.sign()) for m, iv, r in zip(metrics, ivs, holm[0]) if r and iv.sign()]
        held = [f"{w} on " + ", ".join(m for m, s in kept if s == v) for v, w in ((1, "higher"), (-1, "lower"))]
        held = [h for h, v in zip(held, (1, -1)) if any(s == v for _, s in kept)]
        line += f". After Holm over {holm[1]} comparisons: " + ("; ".join(held) or "none")
    return line


def holm_table(rows: list[dict[str, Any]], level: float) -> Table:
    """One row per comparison of the family: ``rows`` of ``name``, ``arm``, ``base``, ``metric``, ``iv``
    (:class:`~rlvr_temp.evaluation.stats.Interval`), ``p_holm`` (its Holm-adjusted p-value), ``rejected``
    (Holm's decision) and ``one_seed``. The Holm-adjusted verdict is the unadjusted one when Holm rejects and
    "not distinguishable" otherwise, so the two columns never point in opposite directions."""
    words = {1: "higher", -1: "lower", 0: "not distinguishable"}
    head = ["set", "comparison", "metric", f"Δ [{level:.0%}]", "bootstrap p", "Holm p", f"unadjusted {level:.0%}"]
    table = Table([*head, f"Holm ({len(rows)} comparisons)", "interval over"])
    for r in rows:
        iv, sign = r["iv"], r["iv"].sign()
        over = "problems only (one seed)" if r["one_seed"] else "problems and seeds"
        cells = [f"`{r['name']}`", f"{r['arm']} − {r['base']}", r["metric"], iv.format(signed=True)]
        cells += [f"{iv.p:.4f}", f"{r['p_holm']:.4f}", words[sign], words[sign if r["rejected"] else 0], over]
        table.rows.append(cells)
    return table


def plot_panels(
    panels: dict[str, list[dict]], png: Path, *, xlabel: str = "step", ylabel: str | None = None, log2_x: bool = False
) -> Path:
    """:func:`draw_panels` saved as ``png``; returns its path."""
    import matplotlib.pyplot as plt

    fig = draw_panels(panels, xlabel=xlabel, ylabel=ylabel, log2_x=log2_x)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Path(png)


def draw_panels(
    panels: dict[str, list[dict]], *, xlabel: str = "step", ylabel: str | None = None, log2_x: bool = False
) -> Any:
    """A matplotlib figure, one panel per title, up to three a row. A series is a dict with ``x``, ``y``, ``label``
    and optionally ``color``, ``ls``, ``lw``, ``marker``, and ``low`` / ``high`` (a shaded band). A series of one
    point gets a marker (a line through one point draws nothing), and its band an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ncols = min(3, len(panels)) or 1
    nrows = max(1, -(-len(panels) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels.items()):
        for s in series:
            style = {k: s[k] for k in ("color", "ls", "lw", "marker") if s.get(k) is not None}
            single = len(s["x"]) == 1
            if single:
                style.setdefault("marker", "o")
            ax.plot(s["x"], s["y"], label=s["label"], **{"lw": 1.6, **style})
            if s.get("low") is not None and single:
                low, high = np.asarray(s["low"], float), np.asarray(s["high"], float)
                y = np.asarray(s["y"], float)
                ax.errorbar(s["x"], y, yerr=[y - low, high - y], fmt="none", ecolor=s.get("color"), capsize=3, lw=1)
            elif s.get("low") is not None:
                ax.fill_between(s["x"], s["low"], s["high"], color=s.get("color"), alpha=0.2, lw=0)
        if log2_x and series:
            ticks = sorted({int(x) for s in series for x in s["x"]})
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, [str(t) for t in ticks])
        elif len(steps := {float(x) for s in series for x in s["x"]}) == 1:  # one evaluated step: a tick at it
            (only,) = steps
            ax.set_xticks([only], [f"{only:g}"])
            ax.set_xlim(only - 1, only + 1)
        else:  # steps: whole numbers
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        if ylabel:
            ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig
