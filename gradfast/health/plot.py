"""GradMonitor's PNG: per-layer gradient norms over steps with clip, skip and event marks.

Drawn with matplotlib's object API (a Figure on an Agg canvas), so the process-wide
backend and pyplot's figure list are never touched: a notebook's inline figures keep
working after a plot.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from .events import GradEvent

__all__ = ["plot_norms"]

_MISSING_MATPLOTLIB = ('GradMonitor.plot needs matplotlib, which is not installed: '
                       'pip install "gradfast[bench]" (or pip install matplotlib)')


def _matplotlib():
    try:
        import matplotlib as mpl
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.transforms import blended_transform_factory
    except ImportError as exc:
        raise ImportError(_MISSING_MATPLOTLIB) from exc
    return Figure, FigureCanvasAgg, blended_transform_factory, mpl


def _shown_layers(norms: np.ndarray, max_layers: int):
    """All layers, or the max_layers with the largest and smallest median norms."""
    order = list(range(norms.shape[1]))
    if len(order) <= max_layers:
        return order
    clean = np.where(np.isfinite(norms) & (norms > 0), norms, np.nan)
    med = np.array([np.nanmedian(clean[:, i]) if np.isfinite(clean[:, i]).any() else -np.inf
                    for i in order])
    ranked = list(np.argsort(med))
    half = max_layers // 2
    return sorted(set(ranked[-(max_layers - half):] + ranked[:half]))


def plot_norms(path, d: Dict[str, np.ndarray], names: Sequence[str],
               events: Sequence[GradEvent], norm_type: float, max_layers: int = 12,
               title: Optional[str] = None) -> None:
    """Save the PNG of GradMonitor.plot (see there) from data_of(...) arrays."""
    Figure, FigureCanvasAgg, blended, mpl = _matplotlib()
    steps, norms = d["step"], d["norms"]

    def clean(x):
        return np.where(np.isfinite(x) & (x > 0), x, np.nan)

    fig = Figure(figsize=(10, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = mpl.colormaps["tab20"]
    for k, i in enumerate(_shown_layers(norms, max_layers)):
        ax.plot(steps, clean(norms[:, i]), lw=0.9, color=cmap(k % 20), label=names[i])
    ax.plot(steps, clean(d["total"]), lw=1.8, color="black", label="global norm")
    ax.set_yscale("log")
    tr = blended(ax.transData, ax.transAxes)
    marks = [
        (steps[d["clipped"]], 0.02, "|", "tab:gray", "clipped"),
        (steps[d["skipped"]], 0.06, "s", "tab:purple", "skipped"),
        (np.array([e.step for e in events if e.kind == "nonfinite"]), 0.97, "x", "red",
         "non-finite"),
        (np.array([e.step for e in events if e.kind == "exploding"]), 0.93, "^", "tab:orange",
         "exploding"),
        (np.unique([e.step for e in events if e.kind == "vanishing"]), 0.10, "v", "tab:blue",
         "vanishing"),
    ]
    for xs, y, marker, color, label in marks:
        if len(xs):
            ax.scatter(xs, np.full(len(xs), y), marker=marker, color=color, s=18, transform=tr,
                       label=f"{label} ({len(xs)})", zorder=3, clip_on=False)
    ax.set_xlabel("step")
    ax.set_ylabel(f"gradient norm (L{norm_type:g})")
    ax.set_title(title or "Gradient norms per layer")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
