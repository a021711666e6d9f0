"""GradMonitor's reports from the rows read back: the data arrays, per-layer statistics,
the text summary and the CSV file."""
from __future__ import annotations

import csv
import math
from typing import Any, Dict, List, Sequence

import numpy as np

from .events import GradEvent, fmt

__all__ = ["data_of", "layer_stats", "summary_text", "write_csv"]


def data_of(rows: np.ndarray) -> Dict[str, np.ndarray]:
    """step, total, clipped, skipped (1-D) and norms (steps x layers, NaN where a layer had
    no gradient) from recorder rows [step, total, clipped, skipped, norms...]."""
    norms = rows[:, 4:].copy()
    norms[norms < 0] = np.nan
    return {"step": rows[:, 0].astype(np.int64), "total": rows[:, 1],
            "clipped": rows[:, 2] > 0.5, "skipped": rows[:, 3] > 0.5, "norms": norms}


def layer_stats(d: Dict[str, np.ndarray], names: Sequence[str], numels: Sequence[int],
                events: Sequence[GradEvent]) -> List[Dict[str, Any]]:
    """One dict per layer (and a first one, '(total)', for the global norm): name, numel,
    last, median, max, and the number of events of each kind that involved it."""
    counts: Dict[tuple, int] = {}
    for e in events:
        for layer in (e.layers or ("(total)",)):
            counts[(layer, e.kind)] = counts.get((layer, e.kind), 0) + 1
    series = [("(total)", None, d["total"])] + [
        (name, numel, d["norms"][:, i]) for i, (name, numel) in enumerate(zip(names, numels))]
    out = []
    for name, numel, x in series:
        finite = x[np.isfinite(x)]
        last = x[~np.isnan(x)]
        out.append({
            "layer": name, "numel": numel,
            "last": float(last[-1]) if last.size else math.nan,
            "median": float(np.median(finite)) if finite.size else math.nan,
            "max": float(np.max(finite)) if finite.size else math.nan,
            "nonfinite": counts.get((name, "nonfinite"), 0),
            "exploding": counts.get((name, "exploding"), 0),
            "vanishing": counts.get((name, "vanishing"), 0),
        })
    return out


def summary_text(stats: List[Dict[str, Any]], d: Dict[str, np.ndarray], n_events: int) -> str:
    """A text table of layer_stats, with a closing line of step / clip / skip / event counts."""
    head = ["layer", "numel", "last", "median", "max", "nonfinite", "exploding", "vanishing"]
    body = [[r["layer"], "" if r["numel"] is None else str(r["numel"]), fmt(r["last"]),
             fmt(r["median"]), fmt(r["max"]), str(r["nonfinite"]), str(r["exploding"]),
             str(r["vanishing"])] for r in stats]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    text = [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
    text.append(f"{len(d['step'])} steps, {int(d['clipped'].sum())} clipped, "
                f"{int(d['skipped'].sum())} skipped, {n_events} events")
    return "\n".join(text)


def write_csv(path, d: Dict[str, np.ndarray], names: Sequence[str]) -> None:
    """One row per step: step, total, clipped, skipped, then one column per layer (empty
    where the layer had no gradient); floats as repr, so they read back exactly."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "total", "clipped", "skipped"] + list(names))
        for k in range(len(d["step"])):
            w.writerow([int(d["step"][k]), repr(float(d["total"][k])),
                        int(d["clipped"][k]), int(d["skipped"][k])]
                       + ["" if v != v else repr(float(v)) for v in d["norms"][k]])
