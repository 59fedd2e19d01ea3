"""The comparison plot: per-source validation loss vs training tokens, one panel per source, one
colour per group (mean over its seeds, band from the lowest to the highest seed), each group's phase
boundaries as dashed lines of its colour. Needs matplotlib (imported here, so `compare` without it
still writes its table)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _curves(rows: list, source: str) -> dict:
    return {
        r["tokens"]: r["valid_loss"][source]
        for r in rows
        if isinstance(r.get("valid_loss"), dict) and source in r["valid_loss"] and "tokens" in r
    }


def _boundaries(rec) -> list[int]:
    """Token counts where a phase ends (all but the last), from the run's config (phases in steps),
    else from the metrics rows (the last logged step of each phase)."""
    cfg = rec.config or {}
    phases = (cfg.get("data") or {}).get("phases") or []
    seq, gbs = (cfg.get("data") or {}).get("seq_length"), (cfg.get("train") or {}).get("global_batch_size")
    if phases and seq and gbs and all(p.get("steps") for p in phases):
        out, steps = [], 0
        for p in phases[:-1]:
            steps += p["steps"]
            out.append(steps * gbs * seq)
        return out
    out, prev, prev_tokens = [], None, 0
    for r in rec.rows:
        if prev is not None and r.get("phase") != prev:
            out.append(prev_tokens)
        prev, prev_tokens = r.get("phase"), r.get("tokens", 0)
    return out


def plot_curves(records, sources: list[str], stem: Path, formats=("svg", "png")) -> list[str]:
    groups: dict[str, list] = {}
    for r in records:
        if r.rows:
            groups.setdefault(r.label, []).append(r)
    n = len(sources)
    cols = min(3, n) or 1
    rows_n = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.4 * rows_n), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, src in enumerate(sources):
        ax = axes[i // cols][i % cols]
        for gi, (label, rs) in enumerate(groups.items()):
            color = colors[gi % len(colors)]
            per_seed = [_curves(r.rows, src) for r in rs]
            xs = sorted(set.intersection(*(set(c) for c in per_seed))) if per_seed else []
            if not xs:
                continue
            vals = [[c[x] for c in per_seed] for x in xs]
            mean = [sum(v) / len(v) for v in vals]
            mx = [x / 1e6 for x in xs]
            ax.plot(mx, mean, color=color, lw=1.4, marker=".", ms=3, label=f"{label} (n={len(rs)})")
            if len(rs) > 1:
                ax.fill_between(mx, [min(v) for v in vals], [max(v) for v in vals], color=color, alpha=0.2, lw=0)
            for tokens in _boundaries(rs[0]):
                ax.axvline(tokens / 1e6, color=color, ls="--", lw=0.8, alpha=0.7)
        ax.set_title(src, fontsize=10)
        ax.set_xlabel("training tokens (M)", fontsize=8)
        ax.set_ylabel("validation loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for j in range(n, rows_n * cols):
        axes[j // cols][j % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.suptitle("validation loss per source (mean over seeds, band: min-max; dashed: phase boundaries)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    out = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        tmp = path.with_name(path.stem + ".tmp." + fmt)
        fig.savefig(tmp, format=fmt, dpi=110)
        tmp.replace(path)
        out.append(str(path))
    plt.close(fig)
    return out
