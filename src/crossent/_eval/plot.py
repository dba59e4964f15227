"""``--plot FILE``: reliability diagram, per-example loss histogram, per-class losses.

Headless: draws on a bare :class:`matplotlib.figure.Figure` (no pyplot, no GUI backend,
nothing global changed), written atomically as PNG, SVG or PDF.
"""

from __future__ import annotations

import math
import os
from typing import Any

from .errors import require
from .report import atomic_save

__all__ = ["plot_result", "PLOT_FORMATS"]

PLOT_FORMATS = (".png", ".svg", ".pdf")
_MAX_BARS = 50


def plot_result(result: Any, path: str, *, title: str | None = None) -> None:
    """Draw the three panels of ``result`` into ``path`` (format from the extension)."""
    require("matplotlib", "--plot")
    from matplotlib.figure import Figure

    ext = os.path.splitext(path)[1].lower()
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    ax_rel, ax_hist, ax_cls = fig.subplots(1, 3)
    _reliability(ax_rel, result)
    _histogram(ax_hist, result)
    _per_class(ax_cls, result)
    if title:
        fig.suptitle(title)
    atomic_save(path, lambda tmp: fig.savefig(tmp, format=ext[1:], dpi=110))


def _reliability(ax: Any, r: Any) -> None:
    bins = r.reliability
    width = 1.0 / max(1, len(bins))
    centers = [(b["lower"] + b["upper"]) / 2 for b in bins]
    acc = [b["accuracy"] if b["count"] and not _nan(b["accuracy"]) else 0.0 for b in bins]
    conf = [b["confidence"] if b["count"] and not _nan(b["confidence"]) else c
            for b, c in zip(bins, centers)]
    ax.bar(centers, acc, width=width * 0.95, color="#4878d0", edgecolor="white",
           label="accuracy")
    lows = [min(a, c) for a, c in zip(acc, conf)]
    gaps = [abs(c - a) if b["count"] else 0.0 for a, c, b in zip(acc, conf, bins)]
    ax.bar(centers, gaps, bottom=lows, width=width * 0.95, color="#d65f5f", alpha=0.3,
           edgecolor="#d65f5f", hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1, label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability: ECE {_fmt(r.ece)}")
    ax.legend(loc="upper left", fontsize=8)
    total = sum(b["count"] for b in bins) or 1
    ax2 = ax.twinx()
    ax2.plot(centers, [b["count"] / total for b in bins], color="gray", marker=".",
             linewidth=0.8)
    ax2.set_ylabel("share of examples", color="gray")
    ax2.set_ylim(0, 1)


def _histogram(ax: Any, r: Any) -> None:
    edges = r.loss_histogram["edges"]
    counts = r.loss_histogram["counts"]
    inner_edges = edges[1:-1]  # 1e-6 ... 1e3
    inner = counts[1:-1]
    lefts = inner_edges[:-1]
    widths = [b - a for a, b in zip(inner_edges[:-1], inner_edges[1:])]
    ax.bar(lefts, inner, width=widths, align="edge", color="#6acc64", edgecolor="none")
    ax.set_xscale("log")
    ax.set_xlabel("per-example loss (nats)")
    ax.set_ylabel("examples")
    if not _nan(r.cross_entropy) and 0 < r.cross_entropy < math.inf:
        ax.axvline(r.cross_entropy, color="black", linestyle="--", linewidth=1,
                   label=f"mean {_fmt(r.cross_entropy)}")
        ax.legend(fontsize=8)
    notes = []
    if counts[0]:
        notes.append(f"{counts[0]:,} below 1e-6")
    if counts[-1]:
        notes.append(f"{counts[-1]:,} at or above 1e3 (inf included)")
    ax.set_title("loss histogram" + (f" ({'; '.join(notes)})" if notes else ""), fontsize=10)


def _per_class(ax: Any, r: Any) -> None:
    pcs = [c for c in r.per_class if c["support"]]
    title = "mean loss per class"
    if len(pcs) > _MAX_BARS:
        pcs = sorted(pcs, key=lambda c: -_num(c["mean_loss"]))[:_MAX_BARS]
        title = f"mean loss: the {_MAX_BARS} worst of {len(r.per_class)} classes"
    names = [str(c["name"]) for c in pcs]
    vals = [_num(c["mean_loss"]) for c in pcs]
    finite = [v for v in vals if math.isfinite(v)]
    cap = max(finite) * 1.1 if finite else 1.0
    shown = [min(v, cap) if math.isfinite(v) else cap for v in vals]
    ax.bar(range(len(pcs)), shown, color="#d65f5f")
    ax.set_xticks(range(len(pcs)))
    ax.set_xticklabels(names, rotation=90 if len(pcs) > 12 else 0, fontsize=8)
    ax.set_ylabel("mean loss (nats)")
    ax.set_title(title)
    if not _nan(r.cross_entropy) and math.isfinite(r.cross_entropy):
        ax.axhline(r.cross_entropy, color="black", linestyle="--", linewidth=1,
                   label="overall")
        ax.legend(fontsize=8)


def _nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _fmt(v: Any) -> str:
    return "nan" if _nan(v) else f"{float(v):.4g}"
