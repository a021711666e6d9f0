"""GradMonitor: per-layer gradient norms recorded on the device, checked every N steps.

Each step the global norm and every parameter's gradient norm (one native pass, see
``grad_norms``) are written into a small buffer on the gradients' device: no host
synchronisation. Every ``every`` steps the buffer is copied to the host in one transfer and
analysed there: exploding gradients (a non-finite norm, or a global norm above
``explode_factor`` times its running median) and vanishing ones (a layer whose gradient is
``vanish_ratio`` times smaller than the typical layer's, or ``vanish_drop`` times smaller
than its own running median) are reported through ``warnings``, the ``gradfast.health``
logger and ``monitor.events``.
"""
from __future__ import annotations

import csv
import logging
import math
import sys
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .._native.norm_kind import parse_norm_type
from .norms import grad_norms

__all__ = ["GradMonitor", "GradEvent", "GradientHealthWarning"]

logger = logging.getLogger("gradfast.health")

_MISSING = -1.0  # per-tensor entry of a parameter without a gradient (norms are >= 0)


class GradientHealthWarning(UserWarning):
    """Issued by GradMonitor the first time a kind of problem is seen in a layer."""


@dataclass(frozen=True)
class GradEvent:
    """One problem found by GradMonitor.

    kind: 'nonfinite' (an inf/NaN norm), 'exploding' (global norm above explode_factor
    times its running median) or 'vanishing' (one layer's norm far below the others' or
    its own history). layers: the layers concerned ('nonfinite': those with a non-finite
    norm; 'exploding': those above explode_factor times their own median, empty when no
    single layer stands out; 'vanishing': the one layer). value and threshold: the norm that
    triggered the event and the bound it crossed (for 'vanishing' against the other
    layers, both are scale-free RMS values, norm / numel ** (1 / norm_type)).
    """

    step: int
    kind: str
    layers: Tuple[str, ...]
    value: float
    threshold: float
    message: str


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


def _user_stacklevel() -> int:
    """The warnings.warn stacklevel of the first caller outside gradfast.health (and
    torch.no_grad's wrapper)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(
            ("gradfast.health", "torch.utils._contextlib")):
        frame, level = frame.f_back, level + 1
    return level


def _fmt(x: float) -> str:
    if x != x:
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.3g}"


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
        self.explode_factor = float(explode_factor)
        self.vanish_ratio = float(vanish_ratio)
        self.vanish_drop = float(vanish_drop)
        self.vanish_patience = max(1, int(vanish_patience))
        self.warmup = int(warmup)
        self.warn = bool(warn)
        self.keep = None if keep is None else int(keep)
        self.events: List[GradEvent] = []
        n = len(self.names)
        p = self.norm_type
        numels = np.array([max(q.numel(), 1) for q in self.parameters], dtype=np.float64)
        if p == 0:
            self._rms_scale = numels
        elif math.isfinite(p) and p > 0:
            self._rms_scale = numels ** (1.0 / p)
        else:
            self._rms_scale = np.ones(n)
        # Device side: one row per step, [total, clipped, skipped, norm_0 .. norm_{n-1}].
        self._buf: Optional[torch.Tensor] = None
        self._pending = 0
        self.num_steps = 0  # steps recorded so far (the next step's index)
        # Host side.
        self._chunks: List[np.ndarray] = []  # read-back rows, plus a leading step column
        self._win_total: deque = deque(maxlen=self.history)
        self._win_layers = np.full((self.history, n), np.nan)
        self._win_pos = 0
        self._vanish_streak = np.zeros(n, dtype=np.int64)
        self._warned: set = set()
        self._index_cache: Dict[Tuple[int, ...], torch.Tensor] = {}
        self._writer = self._open_writer(tensorboard)

    # ---- feeding from a gradfast optimizer ------------------------------------------------
    def attach(self, optimizer) -> "GradMonitor":
        """Let a gradfast optimizer record each step's norms from its own norm pass.

        After ``monitor.attach(opt)`` (``opt`` a ``gradfast.optim.Adam``/``AdamW``), every
        ``opt.step()`` records the pre-clip norms of the gradients it steps with (unscaled
        under GradScaler), the clip threshold it used and whether it skipped the step: do
        not also call :meth:`step`. When the optimizer clips or skips with the monitor's
        norm order, one norm pass serves both. Returns the monitor.
        """
        if not hasattr(optimizer, "_gf_monitor"):
            raise TypeError(
                f"GradMonitor.attach: {type(optimizer).__name__} is not a gradfast optimizer; "
                "with other optimizers call monitor.step() after backward()")
        optimizer._gf_monitor = self
        return self

    def detach(self, optimizer) -> None:
        """Stop ``optimizer`` from feeding this monitor."""
        if getattr(optimizer, "_gf_monitor", None) is self:
            optimizer._gf_monitor = None

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
        total, per_tensor = grad_norms(self.parameters, self.norm_type, missing=_MISSING)
        self.record(total, per_tensor, max_norm=max_norm, skipped=skipped)
        return total, per_tensor

    def _aligned(self, per_tensor: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        key = tuple(id(q) for q in params)
        idx = self._index_cache.get(key)
        if idx is None or idx.device != per_tensor.device:
            where = {id(q): i for i, q in enumerate(params)}
            host = torch.tensor([where.get(id(q), len(params)) for q in self.parameters],
                                dtype=torch.int64)
            if per_tensor.device.type == "cuda":
                host = host.pin_memory()
            idx = host.to(per_tensor.device, non_blocking=True)
            self._index_cache = {key: idx}
        padded = torch.cat([per_tensor.reshape(-1),
                            per_tensor.new_full((1,), _MISSING)])
        return padded.index_select(0, idx)

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
        if self._pending == self.every:
            self._readback()
        per_tensor = per_tensor.detach()
        if params is not None:
            per_tensor = self._aligned(per_tensor, list(params))
        n = len(self.parameters)
        if per_tensor.numel() != n:
            raise ValueError(f"GradMonitor.record: per_tensor has {per_tensor.numel()} "
                             f"entries, expected {n} (one per watched parameter)")
        device = per_tensor.device
        if self._buf is None or self._buf.device != device:
            if self._buf is not None:
                self._readback()
            self._buf = torch.zeros((self.every, 3 + n), dtype=torch.float32, device=device)
        row = self._buf[self._pending]
        total = total.detach().to(device=device, dtype=torch.float32).reshape(1)
        torch.cat([total, self._flag(max_norm, total, device), self._flag(skipped, None, device),
                   per_tensor.to(torch.float32).reshape(-1)], out=row)
        self._pending += 1
        self.num_steps += 1

    @staticmethod
    def _flag(value, total, device) -> torch.Tensor:
        if value is None:
            return torch.zeros(1, dtype=torch.float32, device=device)
        if total is not None:  # max_norm: clipped when total > max_norm
            if isinstance(value, torch.Tensor):
                value = value.detach().to(device=device, dtype=torch.float32).reshape(1)
            return torch.gt(total, value).to(torch.float32)
        if isinstance(value, torch.Tensor):
            return value.detach().to(device=device, dtype=torch.float32).reshape(1)
        return torch.full((1,), float(bool(value)), dtype=torch.float32, device=device)

    @torch.no_grad()
    def annotate(self, max_norm=None, skipped=None, clipped=None) -> None:
        """Mark the latest recorded step as clipped and/or skipped, without a sync.

        For when the threshold is known only after recording, e.g.
        ``total, _ = monitor.step(); thr = clipper.clip_with_norm_(params, total);
        monitor.annotate(max_norm=thr)``. ``max_norm``: clipped when total > max_norm;
        ``clipped``: a bool or 0-d bool tensor saying so directly (e.g. from AGC);
        ``skipped``: the optimizer skipped the step.
        """
        if self._pending == 0:
            raise RuntimeError("GradMonitor.annotate: no step recorded since the last read-back")
        row = self._buf[self._pending - 1]
        if max_norm is not None:
            row[1:2].copy_(self._flag(max_norm, row[0:1], row.device))
        if clipped is not None:
            row[1:2].copy_(self._flag(clipped, None, row.device))
        if skipped is not None:
            row[2:3].copy_(self._flag(skipped, None, row.device))

    # ---- read-back and analysis (host side) ----------------------------------------------
    def flush(self) -> None:
        """Read back and analyse every recorded step now (one host synchronisation)."""
        self._readback()

    def _readback(self) -> None:
        if self._pending == 0:
            return
        rows = self._buf[: self._pending].to("cpu", dtype=torch.float64).numpy()
        first = self.num_steps - self._pending
        self._pending = 0
        steps = np.arange(first, first + rows.shape[0], dtype=np.float64)[:, None]
        block = np.concatenate([steps, rows], axis=1)
        self._chunks.append(block)
        self._trim()
        for r in range(block.shape[0]):
            self._analyse(int(block[r, 0]), block[r, 1], block[r, 4:])
        if self._writer is not None:
            self._write_tensorboard(block)

    def _trim(self) -> None:
        if self.keep is None:
            return
        rows = sum(c.shape[0] for c in self._chunks)
        if rows > 2 * self.keep or (len(self._chunks) > 64 and rows > self.keep):
            allrows = np.concatenate(self._chunks)[-self.keep:]
            self._chunks = [allrows]

    def _analyse(self, step: int, total: float, norms: np.ndarray) -> None:
        present = ~(norms < 0)  # negative: no gradient; NaN counts as present
        nonfinite = present & ~np.isfinite(norms)
        if not math.isfinite(total) or nonfinite.any():
            layers = tuple(self.names[i] for i in np.flatnonzero(nonfinite))
            where = ", ".join(layers) if layers else "the global norm"
            self._event(step, "nonfinite", layers, total, math.inf,
                        f"non-finite gradient norm in {where}")
            return  # a non-finite step enters no running statistic
        win = self._win_layers
        counts = np.sum(~np.isnan(win), axis=0)
        # Exploding: the global norm against its running median.
        if len(self._win_total) >= self.warmup:
            ref = float(np.median(np.fromiter(self._win_total, dtype=np.float64)))
            bound = self.explode_factor * ref
            if total > bound:
                cand = np.flatnonzero(present & (counts >= self.warmup))
                layers: Tuple[str, ...] = ()
                if cand.size:
                    med = np.nanmedian(win[:, cand], axis=0)
                    hot = cand[norms[cand] > self.explode_factor * med]
                    layers = tuple(self.names[i] for i in hot)
                self._event(step, "exploding", layers, total, bound,
                            f"exploding gradients: global norm {_fmt(total)} > "
                            f"{self.explode_factor:g} x running median {_fmt(ref)}"
                            + (f" (layers: {', '.join(layers)})" if layers else ""))
        # Vanishing: against the other layers (scale-free RMS values), or against the
        # layer's own history; reported once the condition has held `vanish_patience`
        # analysed steps in a row (a single small value is noise: a 1-element bias's
        # gradient crosses zero now and then).
        found: Dict[int, Tuple[float, float, str]] = {}
        rms = norms / self._rms_scale
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
                                         f"norm {_fmt(norms[i])} < {self.vanish_drop:g} x its "
                                         f"running median {_fmt(m)}")
        if idx.size >= 2:
            med = float(np.median(rms[idx]))
            bound = self.vanish_ratio * med
            for i in idx[rms[idx] < bound]:
                found[int(i)] = (float(rms[i]), bound, f"RMS {_fmt(rms[i])} < "
                                 f"{self.vanish_ratio:g} x median layer RMS {_fmt(med)}")
        streak = self._vanish_streak
        hit = np.zeros(len(self.names), dtype=bool)
        hit[list(found)] = True
        streak[:] = np.where(hit, streak + 1, np.where(present, 0, streak))
        for i in sorted(found):
            if streak[i] >= self.vanish_patience:
                value, bound, why = found[i]
                held = (f" (for {streak[i]} steps)" if self.vanish_patience > 1 else "")
                self._event(step, "vanishing", (self.names[i],), value, bound,
                            f"vanishing gradient in {self.names[i]}: {why}{held}")
        # Update the running windows.
        self._win_total.append(total)
        win[self._win_pos] = np.where(present, norms, np.nan)
        self._win_pos = (self._win_pos + 1) % self.history

    def _event(self, step, kind, layers, value, threshold, message) -> None:
        text = f"GradMonitor step {step}: {message}"
        self.events.append(GradEvent(step, kind, tuple(layers), float(value),
                                     float(threshold), text))
        logger.warning(text)
        if self.warn:
            key = (kind, tuple(layers))
            if key not in self._warned:
                self._warned.add(key)
                warnings.warn(text + " (reported once per kind and layer; all events are in "
                              "monitor.events and the 'gradfast.health' logger)",
                              GradientHealthWarning, stacklevel=_user_stacklevel())

    def _write_tensorboard(self, block: np.ndarray) -> None:
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
        n = len(self.names)
        block = np.concatenate(self._chunks) if self._chunks else np.zeros((0, 4 + n))
        norms = block[:, 4:].copy()
        norms[norms < 0] = np.nan
        return {"step": block[:, 0].astype(np.int64), "total": block[:, 1],
                "clipped": block[:, 2] > 0.5, "skipped": block[:, 3] > 0.5, "norms": norms}

    def stats(self) -> List[Dict[str, Any]]:
        """Per-layer statistics: name, numel, last, median, max, and event counts."""
        d = self.data()
        out = []
        counts: Dict[Tuple[str, str], int] = {}
        for e in self.events:
            for layer in (e.layers or ("(total)",)):
                counts[(layer, e.kind)] = counts.get((layer, e.kind), 0) + 1
        series = [("(total)", None, d["total"])] + [
            (name, q.numel(), d["norms"][:, i]) for i, (name, q) in
            enumerate(zip(self.names, self.parameters))]
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

    def summary(self) -> str:
        """A text table, one row per layer (and one for the global norm): last, median and
        max gradient norm over the kept steps, and how many events involved the layer."""
        rows = self.stats()
        d = self.data()
        head = ["layer", "numel", "last", "median", "max", "nonfinite", "exploding", "vanishing"]
        body = [[r["layer"], "" if r["numel"] is None else str(r["numel"]), _fmt(r["last"]),
                 _fmt(r["median"]), _fmt(r["max"]), str(r["nonfinite"]), str(r["exploding"]),
                 str(r["vanishing"])] for r in rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
        line = lambda cells: "  ".join(  # noqa: E731
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        text = [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
        text.append(f"{len(d['step'])} steps, {int(d['clipped'].sum())} clipped, "
                    f"{int(d['skipped'].sum())} skipped, {len(self.events)} events")
        return "\n".join(text)

    def to_csv(self, path) -> None:
        """One row per step: step, total, clipped, skipped, then one column per layer."""
        d = self.data()
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "total", "clipped", "skipped"] + self.names)
            for k in range(len(d["step"])):
                w.writerow([int(d["step"][k]), repr(float(d["total"][k])),
                            int(d["clipped"][k]), int(d["skipped"][k])]
                           + ["" if v != v else repr(float(v)) for v in d["norms"][k]])

    def plot(self, path, max_layers: int = 12, title: Optional[str] = None) -> None:
        """Save a PNG of per-layer gradient norms over steps (log scale) with the global
        norm, and clip, skip, non-finite, exploding and vanishing steps marked.

        Needs matplotlib. With more than ``max_layers`` layers, the ones with the largest
        and smallest median norms are drawn.
        """
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            from matplotlib.transforms import blended_transform_factory
        except ImportError as exc:  # pragma: no cover
            raise ImportError("GradMonitor.plot needs matplotlib (pip install matplotlib)") from exc
        d = self.data()
        steps, norms = d["step"], d["norms"]
        clean = lambda x: np.where(np.isfinite(x) & (x > 0), x, np.nan)  # noqa: E731
        order = list(range(len(self.names)))
        if len(order) > max_layers:
            med = np.array([np.nanmedian(clean(norms[:, i])) if np.isfinite(
                clean(norms[:, i])).any() else -np.inf for i in order])
            ranked = list(np.argsort(med))
            half = max_layers // 2
            order = sorted(set(ranked[-(max_layers - half):] + ranked[:half]))
        fig, ax = plt.subplots(figsize=(10, 5.5))
        cmap = plt.get_cmap("tab20")
        for k, i in enumerate(order):
            ax.plot(steps, clean(norms[:, i]), lw=0.9, color=cmap(k % 20), label=self.names[i])
        ax.plot(steps, clean(d["total"]), lw=1.8, color="black", label="global norm")
        ax.set_yscale("log")
        tr = blended_transform_factory(ax.transData, ax.transAxes)
        marks = [
            (steps[d["clipped"]], 0.02, "|", "tab:gray", "clipped"),
            (steps[d["skipped"]], 0.06, "s", "tab:purple", "skipped"),
            (np.array([e.step for e in self.events if e.kind == "nonfinite"]), 0.97, "x",
             "red", "non-finite"),
            (np.array([e.step for e in self.events if e.kind == "exploding"]), 0.93, "^",
             "tab:orange", "exploding"),
            (np.unique([e.step for e in self.events if e.kind == "vanishing"]), 0.10, "v",
             "tab:blue", "vanishing"),
        ]
        for xs, y, marker, color, label in marks:
            if len(xs):
                ax.scatter(xs, np.full(len(xs), y), marker=marker, color=color, s=18,
                           transform=tr, label=f"{label} ({len(xs)})", zorder=3, clip_on=False)
        ax.set_xlabel("step")
        ax.set_ylabel(f"gradient norm (L{self.norm_type:g})")
        ax.set_title(title or "Gradient norms per layer")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def close(self) -> None:
        """Flush, and close the TensorBoard writer if the monitor opened it."""
        self.flush()
        if self._writer is not None and hasattr(self._writer, "flush"):
            self._writer.flush()
