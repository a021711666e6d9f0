"""AutoClip: clip at a percentile of the history of gradient norms, kept on the device.

Seetharaman et al., "AutoClip: Adaptive Gradient Clipping for Source Separation Networks"
(2020). Each step the global gradient norm is appended to the history and the gradients are
clipped at the given percentile of the history, the current norm included. The reference
implementation keeps the history in a Python list and calls numpy.percentile, which costs a
host synchronisation per step; here the history is a ring buffer on the gradients' device
with a device-side count, and the percentile is computed there (a sort of the buffer and
numpy.percentile's default 'linear' interpolation), so a step never waits for the device.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Optional, Union

import torch

from .._native.norm_kind import parse_norm_type
from ..clip import _coef_from_total, _scale_by_coef
from .norms import norms_of

__all__ = ["AutoClip"]


class AutoClip:
    """Adaptive gradient-norm clipping at a percentile of the norm history.

    Args:
        percentile: the percentile (0-100) of the history to clip at. The paper's
            recommended range is 5-25; 10 is the default used here.
        history: how many of the most recent finite norms the percentile is taken over
            (the paper keeps every norm since the start; a window of a few hundred to a few
            thousand steps behaves the same once training is under way and bounds memory).
        norm_type: order of the global norm used by the standalone ``__call__``.
        min_history, initial_max_norm: until the history holds ``min_history`` finite
            norms (the current one included), clip at ``initial_max_norm`` instead (default:
            1 and inf, the paper's behaviour: the first step is clipped at its own norm,
            i.e. not at all). When gradients explode from the very first step, a few
            unclipped steps are enough to wreck Adam's second-moment estimate for hundreds
            of steps; ``min_history=10, initial_max_norm=1.0`` guards them.

    Two ways to use it:

    * standalone, after ``backward()``: ``total = clipper(model.parameters())`` computes the
      global norm (one native pass), records it, and scales the gradients by
      ``min(threshold / (total + 1e-6), 1)``, like ``clip_grad_norm_`` with
      ``max_norm=threshold``. Returns the total norm before clipping.
    * as ``max_grad_norm=gradfast.AutoClip(...)`` in gradfast's optimizers, which call
      :meth:`threshold` with the global norm from their own norm pass.

    Order of operations (as in the paper's reference code): the current norm is appended to
    the history first, then the threshold is the percentile of the history *including* it.
    Non-finite norms (inf/NaN) are not recorded; the threshold for such a step is the
    percentile of the history so far (``inf`` while the history is empty). Gradients with
    a non-finite norm are scaled exactly as ``clip_grad_norm_`` would scale them.

    The history lives on the device of the first norm it sees, in float32 (float64 when
    that norm is float64). Nothing here synchronises with the device.
    """

    def __init__(self, percentile: float = 10.0, history: int = 1000,
                 norm_type: float = 2.0, *, min_history: int = 1,
                 initial_max_norm: float = math.inf) -> None:
        percentile = float(percentile)
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {percentile}")
        history = int(history)
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self.percentile = percentile
        self.history = history
        self.norm_type = parse_norm_type(norm_type)
        self.min_history = int(min_history)
        self.initial_max_norm = float(initial_max_norm)
        self._buf: Optional[torch.Tensor] = None
        self._count: Optional[torch.Tensor] = None
        self._slots: Optional[torch.Tensor] = None
        #: The threshold returned by the latest :meth:`threshold` call (0-d device tensor).
        self.last_threshold: Optional[torch.Tensor] = None

    # ---- state ---------------------------------------------------------------------------
    def _ensure(self, total: torch.Tensor) -> None:
        if self._buf is not None and self._buf.device == total.device:
            return
        dtype = torch.float64 if total.dtype == torch.float64 else torch.float32
        if self._buf is not None:  # the model moved: carry the history along
            self._buf = self._buf.to(total.device)
            self._count = self._count.to(total.device)
        else:
            self._buf = torch.zeros(self.history, dtype=dtype, device=total.device)
            self._count = torch.zeros((), dtype=torch.int64, device=total.device)
        self._slots = torch.arange(self.history, device=total.device)

    # ---- the percentile ------------------------------------------------------------------
    def _percentile(self) -> torch.Tensor:
        """numpy.percentile(valid history, self.percentile), method='linear', on the device."""
        buf, count = self._buf, self._count
        n = torch.clamp(count, max=self.history)
        valid = self._slots < n
        ordered = torch.sort(torch.where(valid, buf, torch.full_like(buf, math.inf))).values
        # numpy: virtual index (n - 1) * q / 100 in float64, neighbours floor and floor + 1
        # (both clipped to the last value), weight gamma = index - floor.
        rank = (n - 1).to(torch.float64) * (self.percentile / 100.0)
        lo_f = torch.floor(rank)
        last = torch.clamp(n - 1, min=0)
        lo = torch.minimum(lo_f.to(torch.int64).clamp(min=0), last)
        hi = torch.minimum(lo + 1, last)
        gamma = (rank - lo_f).clamp(min=0.0)
        a = ordered.gather(0, lo.view(1))[0]
        b = ordered.gather(0, hi.view(1))[0]
        # numpy's _lerp, in the history's dtype as numpy computes it for a Python-float q:
        # a + (b - a) * g, or b - (b - a) * (1 - g) when g >= 0.5.
        g = gamma.to(buf.dtype)
        one_minus_g = (1.0 - gamma).to(buf.dtype)
        diff = b - a
        value = torch.where(gamma >= 0.5, b - diff * one_minus_g, a + diff * g)
        value = torch.where(n > 0, value, torch.full_like(value, math.inf))
        if self.min_history > 1:
            value = torch.where(n < self.min_history,
                                torch.full_like(value, self.initial_max_norm), value)
        return value

    @torch.no_grad()
    def threshold(self, total_norm: torch.Tensor) -> torch.Tensor:
        """Record ``total_norm`` (when finite) and return the clipping threshold to use.

        The returned 0-d tensor is the percentile of the history including this norm, on
        the history's device; the clip coefficient is then
        ``min(threshold / (total_norm + 1e-6), 1)``. This is the hook gradfast's optimizers
        call with ``max_grad_norm=AutoClip(...)``.
        """
        total = total_norm.detach()
        self._ensure(total)
        buf, count = self._buf, self._count
        value = total.to(device=buf.device, dtype=buf.dtype).reshape(1)
        finite = torch.isfinite(value)
        slot = torch.remainder(count, self.history).reshape(1)
        # A non-finite norm rewrites the slot with its old content and is not counted.
        buf.scatter_(0, slot, torch.where(finite, value, buf.gather(0, slot)))
        count.add_(finite.reshape(()).to(count.dtype))
        self.last_threshold = self._percentile()
        return self.last_threshold

    @torch.no_grad()
    def __call__(self, parameters: Union[torch.Tensor, Iterable[torch.Tensor]]) -> torch.Tensor:
        """Clip the gradients of ``parameters`` in place; return their total norm before.

        One native norm pass, the history update and threshold on the device, one scaling
        pass: no host synchronisation.
        """
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return torch.tensor(0.0)
        total, _ = norms_of(grads, self.norm_type)
        self._clip(grads, total)
        return total

    def _clip(self, grads, total: torch.Tensor) -> torch.Tensor:
        thr = self.threshold(total)
        _scale_by_coef(grads, _coef_from_total(thr.to(total.device), total))
        return thr

    @torch.no_grad()
    def clip_with_norm_(self, parameters: Union[torch.Tensor, Iterable[torch.Tensor]],
                        total_norm: torch.Tensor) -> torch.Tensor:
        """Like ``__call__`` with the global norm already computed (e.g. by
        ``GradMonitor.step()`` or ``gradfast.grad_norms``), so no second norm pass is made.
        Records ``total_norm``, scales the gradients, and returns the threshold used."""
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return self.threshold(total_norm)
        return self._clip(grads, total_norm)

    # ---- inspection and checkpoints -----------------------------------------------------
    def history_values(self) -> torch.Tensor:
        """The recorded norms, oldest first, on the CPU (synchronises; for inspection)."""
        if self._buf is None:
            return torch.empty(0)
        count = int(self._count)
        buf = self._buf.cpu()
        if count <= self.history:
            return buf[:count].clone()
        start = count % self.history
        return torch.cat([buf[start:], buf[:start]])

    def state_dict(self) -> Dict[str, Any]:
        clone = lambda t: None if t is None else t.clone()  # noqa: E731
        return {"percentile": self.percentile, "history": self.history,
                "norm_type": self.norm_type, "min_history": self.min_history,
                "initial_max_norm": self.initial_max_norm, "buffer": clone(self._buf),
                "count": clone(self._count)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.percentile = float(state["percentile"])
        self.history = int(state["history"])
        self.norm_type = float(state["norm_type"])
        self.min_history = int(state.get("min_history", 1))
        self.initial_max_norm = float(state.get("initial_max_norm", math.inf))
        buf, count = state["buffer"], state["count"]
        self._buf = None if buf is None else buf.clone()
        self._count = None if count is None else count.clone()
        self._slots = None if self._buf is None else torch.arange(
            self.history, device=self._buf.device)

    def __repr__(self) -> str:
        return (f"AutoClip(percentile={self.percentile}, history={self.history}, "
                f"norm_type={self.norm_type}, min_history={self.min_history}, "
                f"initial_max_norm={self.initial_max_norm})")
