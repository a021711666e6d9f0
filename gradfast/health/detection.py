"""GradMonitor's rules for exploding and vanishing gradients, applied on the host to the
rows read back from the device.

* nonfinite: an inf/NaN global or per-layer norm (such a step enters no statistic);
* exploding: the global norm above ``explode_factor`` x its running median (after
  ``warmup`` finite steps), naming the layers above that factor x their own median;
* vanishing: a layer whose RMS gradient (norm / numel ** (1/p)) is below ``vanish_ratio``
  x the median layer RMS of that step, or whose norm is below ``vanish_drop`` x its own
  running median, for ``vanish_patience`` analysed steps in a row (one small value is
  noise: a 1-element bias's gradient crosses zero now and then).
"""
from __future__ import annotations

import math
from collections import deque
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .events import fmt

__all__ = ["HealthRules"]

Finding = Tuple[str, Tuple[str, ...], float, float, str]  # kind, layers, value, bound, why


class HealthRules:
    """Running windows over ``history`` steps and the checks against them."""

    def __init__(self, names: Sequence[str], numels: Sequence[int], norm_type: float, *,
                 history: int, explode_factor: float, vanish_ratio: float,
                 vanish_drop: float, vanish_patience: int, warmup: int) -> None:
        self.names = list(names)
        self.history = history
        self.explode_factor = explode_factor
        self.vanish_ratio = vanish_ratio
        self.vanish_drop = vanish_drop
        self.vanish_patience = vanish_patience
        self.warmup = warmup
        n = len(self.names)
        numels = np.array([max(k, 1) for k in numels], dtype=np.float64)
        p = norm_type
        if p == 0:
            self._rms_scale = numels
        elif math.isfinite(p) and p > 0:
            self._rms_scale = numels ** (1.0 / p)
        else:
            self._rms_scale = np.ones(n)
        self._win_total: deque = deque(maxlen=history)
        self._win_layers = np.full((history, n), np.nan)
        self._win_pos = 0
        self._vanish_streak = np.zeros(n, dtype=np.int64)

    def check(self, total: float, norms: np.ndarray) -> List[Finding]:
        """The findings of one step (norms: per layer, negative = no gradient), and the
        step entered into the running windows when it is finite."""
        present = ~(norms < 0)  # negative: no gradient; NaN counts as present
        nonfinite = present & ~np.isfinite(norms)
        if not math.isfinite(total) or nonfinite.any():
            layers = tuple(self.names[i] for i in np.flatnonzero(nonfinite))
            where = ", ".join(layers) if layers else "the global norm"
            return [("nonfinite", layers, total, math.inf,
                     f"non-finite gradient norm in {where}")]
        out: List[Finding] = []
        counts = np.sum(~np.isnan(self._win_layers), axis=0)
        exploding = self._exploding(total, norms, present, counts)
        if exploding is not None:
            out.append(exploding)
        out += self._vanishing(norms, present, counts)
        self._win_total.append(total)
        self._win_layers[self._win_pos] = np.where(present, norms, np.nan)
        self._win_pos = (self._win_pos + 1) % self.history
        return out

    def _exploding(self, total, norms, present, counts):
        if len(self._win_total) < self.warmup:
            return None
        ref = float(np.median(np.fromiter(self._win_total, dtype=np.float64)))
        bound = self.explode_factor * ref
        if not total > bound:
            return None
        cand = np.flatnonzero(present & (counts >= self.warmup))
        layers: Tuple[str, ...] = ()
        if cand.size:
            med = np.nanmedian(self._win_layers[:, cand], axis=0)
            layers = tuple(self.names[i] for i in cand[norms[cand] > self.explode_factor * med])
        return ("exploding", layers, total, bound,
                f"exploding gradients: global norm {fmt(total)} > {self.explode_factor:g} x "
                f"running median {fmt(ref)}" + (f" (layers: {', '.join(layers)})" if layers else ""))

    def _vanishing(self, norms, present, counts) -> List[Finding]:
        win = self._win_layers
        found: Dict[int, Tuple[float, float, str]] = {}
        idx = np.flatnonzero(present)
        cand = idx[counts[idx] >= self.warmup]
        if cand.size:
            hi = np.nanmax(win[:, cand], axis=0)
            cand = cand[norms[cand] < self.vanish_drop * hi]  # cheap pre-filter
            if cand.size:
                med = np.nanmedian(win[:, cand], axis=0)
                for i, m in zip(cand, med):
                    if norms[i] < self.vanish_drop * m:
                        found[int(i)] = (float(norms[i]), self.vanish_drop * float(m),
                                         f"norm {fmt(norms[i])} < {self.vanish_drop:g} x its "
                                         f"running median {fmt(m)}")
        if idx.size >= 2:
            rms = norms / self._rms_scale
            med = float(np.median(rms[idx]))
            bound = self.vanish_ratio * med
            for i in idx[rms[idx] < bound]:
                found[int(i)] = (float(rms[i]), bound, f"RMS {fmt(rms[i])} < "
                                 f"{self.vanish_ratio:g} x median layer RMS {fmt(med)}")
        streak = self._vanish_streak
        hit = np.zeros(len(self.names), dtype=bool)
        hit[list(found)] = True
        streak[:] = np.where(hit, streak + 1, np.where(present, 0, streak))
        out: List[Finding] = []
        for i in sorted(found):
            if streak[i] >= self.vanish_patience:
                value, bound, why = found[i]
                held = f" (for {streak[i]} steps)" if self.vanish_patience > 1 else ""
                out.append(("vanishing", (self.names[i],), value, bound,
                            f"vanishing gradient in {self.names[i]}: {why}{held}"))
        return out
