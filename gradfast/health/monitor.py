"""GradMonitor: per-layer gradient norms recorded on the device, checked every N steps.

Each step the global norm and every parameter's gradient norm (one native pass, see
``grad_norms``) are written into a small buffer on the gradients' device: no host
synchronisation (recorder.py). Every ``every`` steps the buffer is copied to the host in
one transfer and analysed there (detection.py): exploding gradients and vanishing ones are
reported through ``warnings``, the ``gradfast.health`` logger and ``monitor.events``
(events.py). Summaries, CSV and the plot are in report.py and plot.py.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch

from .._native.norm_kind import parse_norm_type
from .detection import HealthRules
from .events import GradEvent, GradientHealthWarning, publish
from .norms import grad_norms
from .plot import plot_norms
from .recorder import MISSING, NormRecorder
from .report import data_of, layer_stats, summary_text, write_csv

__all__ = ["GradMonitor", "GradEvent", "GradientHealthWarning"]


def _named(model_or_named_parameters) -> List[Tuple[str, torch.Tensor]]:
    if isinstance(model_or_named_parameters, torch.nn.Module):
        return [(n, p) for n, p in model_or_named_parameters.named_parameters()
                if p.requires_grad]
    if isinstance(model_or_named_parameters, torch.Tensor):
        return [("param0", model_or_named_parameters)]
    out = []
    for i, item in enumerate(model_or_named_parameters):
        if isinstance(item, torch.Tensor):
            out.append((f"param{i}", item))
        else:
            name, p = item
            out.append((str(name), p))
    return out


def _inner_optimizer(optimizer):
    """The gradfast optimizer behind framework wrappers (Lightning's LightningOptimizer,
    accelerate's AcceleratedOptimizer, ...), found along their ``.optimizer`` chain."""
    seen = []
    opt = optimizer
    while not callable(getattr(type(opt), "register_step_norms_hook", None)):
        seen.append(type(opt).__name__)
        inner = getattr(opt, "optimizer", None)
        if inner is None or inner is opt or len(seen) > 8:
            chain = " -> ".join(seen)
            raise TypeError(
                f"GradMonitor.attach: {chain} is not a gradfast optimizer (nor a wrapper "
                "of one reachable through .optimizer); with other optimizers call "
                "monitor.step() after backward()")
        opt = inner
    return opt


class GradMonitor:
    """Watches per-layer gradient norms for exploding and vanishing gradients.

    Args:
        model_or_named_parameters: an ``nn.Module`` (its parameters that require grad are
            watched, under their qualified names), or an iterable of ``(name, parameter)``
            pairs or of parameters (named ``param0``, ``param1``, ...).
        every: copy the recorded norms to the host and analyse them every ``every`` steps
            (the only host synchronisation; ``every=1`` checks each step). The copy happens
            at the first ``step``/``record`` after the buffer fills, or at :meth:`flush`.
        history: how many past steps the running medians look at.
        norm_type: order of the norms (2 by default).
        explode_factor: global norm > explode_factor x its running median is 'exploding'.
        vanish_ratio: a layer whose RMS gradient (norm / numel ** (1/p)) is below
            vanish_ratio x the median RMS of the layers at that step is 'vanishing'.
        vanish_drop: a layer whose norm is below vanish_drop x its own running median is
            'vanishing'.
        vanish_patience: a vanishing condition is reported once it has held this many
            consecutive steps (then at every step while it holds).
        warmup: running-median checks start once this many finite values are in the window.
        warn: issue a :class:`GradientHealthWarning` the first time each kind of problem is
            seen in each layer (every event also goes to the ``gradfast.health`` logger at
            WARNING level and to :attr:`events`).
        tensorboard: a log directory (str) or an object with ``add_scalar`` (such as a
            ``torch.utils.tensorboard.SummaryWriter``): norms are written as scalars
            ``grad_norm/total`` and ``grad_norm/<layer>`` at each read-back. Skipped with a
            warning when a directory is given and tensorboard is not installed.
        keep: keep at most this many recent steps on the host for summary/to_csv/plot
            (None: all).

    Use ``monitor.step()`` after ``backward()`` and before clipping (it computes the norms;
    it returns ``(total, per_tensor)`` so clipping can reuse them), or
    ``monitor.record(total, per_tensor)`` with norms computed elsewhere, or
    ``monitor.attach(optimizer)`` to let a gradfast optimizer record them from its own norm
    pass at every ``step()``. Pass ``max_norm=`` (a float or a device tensor, e.g.
    ``AutoClip.last_threshold``) and ``skipped=`` there or via :meth:`annotate` to mark
    clip and skip events for :meth:`plot`, :meth:`to_csv` and the summary.
    """

    def __init__(
        self,
        model_or_named_parameters: Union[torch.nn.Module, Iterable[Any]],
        every: int = 1,
        history: int = 200,
        *,
        norm_type: float = 2.0,
        explode_factor: float = 10.0,
        vanish_ratio: float = 1e-3,
        vanish_drop: float = 1e-3,
        vanish_patience: int = 3,
        warmup: int = 10,
        warn: bool = True,
        tensorboard: Any = None,
        keep: Optional[int] = None,
    ) -> None:
        named = _named(model_or_named_parameters)
        if not named:
            raise ValueError("GradMonitor: no parameters to watch")
        if int(every) < 1 or int(history) < 1:
            raise ValueError("every and history must be >= 1")
        self.names: List[str] = [n for n, _ in named]
        self.parameters: List[torch.Tensor] = [p for _, p in named]
        self.every = int(every)
        self.history = int(history)
        self.norm_type = parse_norm_type(norm_type)
        self.warn = bool(warn)
        self.keep = None if keep is None else int(keep)
        self.events: List[GradEvent] = []
        self._rules = HealthRules(
            self.names, [q.numel() for q in self.parameters], self.norm_type,
            history=self.history, explode_factor=float(explode_factor),
            vanish_ratio=float(vanish_ratio), vanish_drop=float(vanish_drop),
            vanish_patience=max(1, int(vanish_patience)), warmup=int(warmup))
        self._recorder = NormRecorder(self.parameters, self.every, self.keep)
        self._warned: set = set()
        self._handles: Dict[int, Any] = {}  # id(optimizer) -> its step-norms hook handle
        self._writer = self._open_writer(tensorboard)

    # The rules' settings, readable (and settable) on the monitor as before the split.
    explode_factor = property(lambda self: self._rules.explode_factor,
                              lambda self, v: setattr(self._rules, "explode_factor", float(v)))
    vanish_ratio = property(lambda self: self._rules.vanish_ratio,
                            lambda self, v: setattr(self._rules, "vanish_ratio", float(v)))
    vanish_drop = property(lambda self: self._rules.vanish_drop,
                           lambda self, v: setattr(self._rules, "vanish_drop", float(v)))
    vanish_patience = property(lambda self: self._rules.vanish_patience,
                               lambda self, v: setattr(self._rules, "vanish_patience",
                                                       max(1, int(v))))
    warmup = property(lambda self: self._rules.warmup,
                      lambda self, v: setattr(self._rules, "warmup", int(v)))

    @property
    def num_steps(self) -> int:
        """Steps recorded so far (the next step's index)."""
        return self._recorder.num_steps

    # ---- feeding from a gradfast optimizer ------------------------------------------------
    def attach(self, optimizer) -> "GradMonitor":
        """Let a gradfast optimizer record each step's norms from its own norm pass.

        After ``monitor.attach(opt)`` (``opt`` a ``gradfast.optim.Adam``/``AdamW``, or a
        framework's wrapper of one such as Lightning's ``self.optimizers()`` or
        accelerate's prepared optimizer: the ``.optimizer`` chain is followed), every
        ``opt.step()`` records the pre-clip norms of the gradients it steps with (unscaled
        under GradScaler), the clip threshold it used and whether it skipped the step: do
        not also call :meth:`step`. When the optimizer clips or skips with the monitor's
        norm order, one norm pass serves both. Uses the optimizer's public
        ``register_step_norms_hook``. A compiled ``opt.step()`` records too (traced with
        fullgraph=True): its rows wait on the device until the next eager call (``flush``,
        ``data``, ...), which reads and analyses them. Returns the monitor.
        """
        opt = _inner_optimizer(optimizer)
        self.detach(opt)
        self._recorder.prepare_compiled(self.parameters[0].device)
        self._handles[id(opt)] = opt.register_step_norms_hook(self._on_step,
                                                              norm_type=self.norm_type)
        return self

    def detach(self, optimizer) -> None:
        """Stop ``optimizer`` (or the gradfast optimizer it wraps) from feeding this monitor."""
        try:
            opt = _inner_optimizer(optimizer)
        except TypeError:
            return
        handle = self._handles.pop(id(opt), None)
        if handle is not None:
            handle.remove()

    def _on_step(self, optimizer, rec) -> None:
        self.record(rec.total, rec.per_tensor, params=rec.params, max_norm=rec.max_norm,
                    skipped=rec.skipped)

    # ---- recording (device side, no sync) --------------------------------------------------
    def _open_writer(self, tensorboard):
        if tensorboard is None or tensorboard is False:
            return None
        if hasattr(tensorboard, "add_scalar"):
            return tensorboard
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn("GradMonitor: tensorboard is not installed, so no TensorBoard "
                          "scalars will be written (pip install tensorboard)", stacklevel=3)
            return None
        return SummaryWriter(log_dir=None if tensorboard is True else str(tensorboard))

    @torch.no_grad()
    def step(self, max_norm=None, skipped=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Compute and record this step's gradient norms; return ``(total, per_tensor)``.

        Call after ``backward()`` and before clipping. ``per_tensor`` is aligned with
        :attr:`parameters`, with -1 for parameters that have no gradient.
        """
        total, per_tensor = grad_norms(self.parameters, self.norm_type, missing=MISSING)
        self.record(total, per_tensor, max_norm=max_norm, skipped=skipped)
        return total, per_tensor

    @torch.no_grad()
    def record(self, total: torch.Tensor, per_tensor: torch.Tensor, *, params=None,
               max_norm=None, skipped=None) -> None:
        """Record norms computed elsewhere (no host synchronisation).

        total: the global norm (0-d tensor). per_tensor: 1-D norms aligned with
        :attr:`parameters` (negative entries mean 'no gradient', e.g. from
        ``gradfast.grad_norms(params, missing=-1.0)``), or aligned with ``params`` when
        given (a list of parameters, matched by identity; watched parameters not in it
        count as having no gradient). max_norm: the clip threshold used this step, so
        ``total > max_norm`` marks a clip event. skipped: whether the optimizer skipped
        this step (bool or 0-d bool tensor).
        """
        if torch.compiler.is_compiling():
            self._recorder.record_compiled(total, per_tensor, params, max_norm, skipped)
            return
        block = self._recorder.record(total, per_tensor, params, max_norm, skipped)
        if block is not None:
            self._analyse(block)

    @torch.no_grad()
    def annotate(self, max_norm=None, skipped=None, clipped=None) -> None:
        """Mark the latest recorded step as clipped and/or skipped, without a sync.

        For when the threshold is known only after recording, e.g.
        ``total, _ = monitor.step(); thr = clipper.clip_with_norm_(params, total);
        monitor.annotate(max_norm=thr)``. ``max_norm``: clipped when total > max_norm;
        ``clipped``: a bool or 0-d bool tensor saying so directly (e.g. from AGC);
        ``skipped``: the optimizer skipped the step.
        """
        self._recorder.annotate(max_norm=max_norm, skipped=skipped, clipped=clipped)

    # ---- read-back and analysis (host side) ----------------------------------------------
    def flush(self) -> None:
        """Read back and analyse every recorded step now (one host synchronisation)."""
        for block in (self._recorder.drain(), self._recorder.readback()):
            if block is not None:
                self._analyse(block)

    def _analyse(self, block: np.ndarray) -> None:
        for r in range(block.shape[0]):
            step = int(block[r, 0])
            for kind, layers, value, bound, why in self._rules.check(block[r, 1], block[r, 4:]):
                publish(self.events, self._warned, self.warn, step, kind, layers, value,
                        bound, why)
        if self._writer is not None:
            for r in range(block.shape[0]):
                step = int(block[r, 0])
                self._writer.add_scalar("grad_norm/total", float(block[r, 1]), step)
                for name, v in zip(self.names, block[r, 4:]):
                    if not v < 0:
                        self._writer.add_scalar(f"grad_norm/{name}", float(v), step)

    # ---- reports ----------------------------------------------------------------------------
    def data(self) -> Dict[str, np.ndarray]:
        """Everything read back so far (after a flush): step, total, clipped, skipped (1-D)
        and norms (steps x layers, NaN where a layer had no gradient)."""
        self.flush()
        return data_of(self._recorder.rows())

    def stats(self) -> List[Dict[str, Any]]:
        """Per-layer statistics: name, numel, last, median, max, and event counts."""
        return layer_stats(self.data(), self.names, [q.numel() for q in self.parameters],
                           self.events)

    def summary(self) -> str:
        """A text table, one row per layer (and one for the global norm): last, median and
        max gradient norm over the kept steps, and how many events involved the layer."""
        return summary_text(self.stats(), self.data(), len(self.events))

    def to_csv(self, path) -> None:
        """One row per step: step, total, clipped, skipped, then one column per layer."""
        write_csv(path, self.data(), self.names)

    def plot(self, path, max_layers: int = 12, title: Optional[str] = None) -> None:
        """Save a PNG of per-layer gradient norms over steps (log scale) with the global
        norm, and clip, skip, non-finite, exploding and vanishing steps marked.

        Needs matplotlib (``pip install "gradfast[bench]"``); an ImportError saying so
        otherwise. Uses matplotlib's object API, so the process's backend (a notebook's
        inline figures) is left alone. With more than ``max_layers`` layers, the ones with
        the largest and smallest median norms are drawn.
        """
        plot_norms(path, self.data(), self.names, self.events, self.norm_type,
                   max_layers=max_layers, title=title)

    def close(self) -> None:
        """Flush, and close the TensorBoard writer if the monitor opened it."""
        self.flush()
        if self._writer is not None and hasattr(self._writer, "flush"):
            self._writer.flush()
