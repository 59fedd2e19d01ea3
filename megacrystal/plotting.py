"""The project's one plotting module: a grid of line panels, written as PNG and SVG with matplotlib.

    panels = [Panel("loss", "step", "loss", [Line("run", xs, ys)], marks=[Mark(400, "code")])]
    draw(panels, Path("out/metrics"), "run metrics")        # -> [out/metrics.png, out/metrics.svg]

`megacrystal plot` (a run's metrics), `megacrystal compare` (validation curves of several runs, and
with --trajectory every metric of a run's evaluated checkpoints) and `megacrystal study` draw through
`draw`; they turn their data into `Panel`s and know nothing of matplotlib. The Agg backend renders
without a display; SVG text stays text (searchable, small) and the files carry no date, so drawing
the same data twice gives the same SVG. Each file is written to a temporary name and renamed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after the backend is chosen

from .atomic_io import own_temp

FORMATS = ("png", "svg")
_STYLE = {"svg.fonttype": "none", "svg.hashsalt": "megacrystal"}


@dataclass
class Line:
    label: str
    xs: list
    ys: list
    lo: list | None = None  # a band from lo to hi (e.g. the lowest and highest seed)
    hi: list | None = None


@dataclass
class Mark:
    """A dashed vertical line (a phase boundary), in the colour of the line labelled `of` (grey if None)."""

    x: float
    text: str | None = None
    of: str | None = None


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    lines: list = field(default_factory=list)
    marks: list = field(default_factory=list)


def draw(panels: list[Panel], stem, title: str, formats=FORMATS, cols: int = 3) -> list[str]:
    """Draw `panels` on one figure; writes `stem`.<fmt> for each format; returns the paths."""
    stem = Path(stem)
    n = max(1, len(panels))
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    labels = list(dict.fromkeys(ln.label for p in panels for ln in p.lines))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {lab: palette[i % len(palette)] for i, lab in enumerate(labels)}
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
        for i, p in enumerate(panels):
            _panel(axes[i // cols][i % cols], p, color)
        for j in range(len(panels), rows * cols):
            fig.delaxes(axes[j // cols][j % cols])
        legend = len(labels) > 1
        if legend:
            handles = [plt.Line2D([], [], color=color[lab], lw=1.6) for lab in labels]
            fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8, frameon=False)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout(rect=(0, 0.05 if legend else 0, 1, 0.96))
        out = []
        stem.parent.mkdir(parents=True, exist_ok=True)
        for fmt in formats:
            path = stem.with_name(f"{stem.name}.{fmt}")
            tmp = own_temp(path)
            try:
                fig.savefig(tmp, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else None)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            out.append(str(path))
        plt.close(fig)
    return out


def _panel(ax, p: Panel, color: dict) -> None:
    for ln in p.lines:
        c = color[ln.label]
        ax.plot(ln.xs, ln.ys, color=c, lw=1.4, marker="." if len(ln.xs) <= 60 else None, ms=4, label=ln.label)
        if ln.lo is not None and ln.hi is not None:
            ax.fill_between(ln.xs, ln.lo, ln.hi, color=c, alpha=0.2, lw=0)
    top = ax.get_ylim()[1]
    for m in p.marks:
        c = color.get(m.of, "0.4")
        ax.axvline(m.x, color=c, ls="--", lw=0.8, alpha=0.7)
        if m.text:
            ax.text(m.x, top, f" {m.text}", color=c, fontsize=7, va="top", ha="left")
    ax.set_title(p.title, fontsize=10)
    ax.set_xlabel(p.xlabel, fontsize=8)
    ax.set_ylabel(p.ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
