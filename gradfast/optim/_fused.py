"""What every gradfast optimizer shares: its extras (max_grad_norm, grad_norm_type,
l1_weight_decay, skip_nonfinite), the global norm, clip thresholds, GradScaler's hand-over,
the per-step inputs of the kernels, the skipped-step counter and the attached monitor.

A subclass says how a parameter group becomes a work item (its tensor lists, checked and
normalised: _group_work) and how one (device, dtype) part of it is updated (_update). The
step is then: every group's work item; one global norm over every gradient when any group
clips or skips (gradfast's norm kernel); one update call per (group, device, dtype).
"""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .. import _torch_fallback
from .._native.norm import total_norm
from .._native.norm_kind import check_empty, norm_kind, parse_norm_type
from .._native.op import compiling
from .._native.step import StepArgs
from ..health.norms import aligned_per_tensor, norms_of
from ._validation import EXTRA_DEFAULTS

_NATIVE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class WorkItem(NamedTuple):
    """One parameter group's part of a step."""
    group: Dict[str, Any]
    lists: Any                      # the subclass's lists; .params and .grads first
    copies: List[Tuple[Tensor, Tensor]]  # (user grad, dense copy the kernel reads)
    split: List[Tuple[torch.device, Optional[List[int]]]]  # (device, indices or None=all)
    host: Optional[tuple]           # CPU pointers a step plan keeps, or None


def on_device(cache: Dict, t: Optional[Tensor], device: torch.device,
              dtypes=(torch.float32,)) -> Optional[Tensor]:
    """t as a 0-d tensor on device (and in one of dtypes), converted at most once per step."""
    if t is None:
        return None
    hit = cache.get(device)
    if hit is None:
        hit = t
        if hit.dtype not in dtypes:
            hit = hit.to(dtype=dtypes[0])
        if hit.device != device:
            hit = hit.to(device, non_blocking=True)
        if hit.dim() != 0:
            hit = hit.reshape(())
        cache[device] = hit
    return hit


def is_threshold_object(max_norm) -> bool:
    return not isinstance(max_norm, Tensor) and callable(getattr(max_norm, "threshold", None))


class FusedOptimizer(torch.optim.Optimizer):
    """Base of gradfast's fused optimizers (see the module docstring)."""

    def __init__(self, params, defaults: Dict[str, Any]) -> None:
        super().__init__(params, defaults)
        # Like torch's fused optimizers: GradScaler hands over grad_scale / found_inf and the
        # kernel unscales and skips on the device.
        self._step_supports_amp_scaling = True
        self._gf_reset()
        # Mutated (never reassigned) by step(), which torch.compile traces more easily.
        self._gf_results: Dict[str, Optional[Tensor]] = {"grad_norm": None,
                                                         "skipped_steps": None}
        self._gf_monitor = None  # a GradMonitor fed by step() (GradMonitor.attach)

    def _gf_reset(self) -> None:
        """Forget what was remembered about the state (after loading or unpickling)."""
        self._checked_state: Dict = {}
        self._plans: Dict = {}

    @property
    def grad_norm(self) -> Optional[Tensor]:
        """The global grad norm before clipping of the last step that clipped or skipped (a
        0-d tensor on the first parameter's device; of the unscaled grads under GradScaler)."""
        return self._gf_results["grad_norm"]

    @property
    def skipped_steps(self) -> Optional[Tensor]:
        """int64 0-d device tensor: steps skipped on the device (non-finite global norm with
        skip_nonfinite, or GradScaler's found_inf). None before the first step."""
        return self._gf_results["skipped_steps"]

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            if torch.is_complex(p):
                raise RuntimeError(
                    f"gradfast.optim.{type(self).__name__} does not support complex "
                    "parameters; optimise them with torch.optim (or as torch.view_as_real "
                    "views)")

    def __getstate__(self) -> Dict[str, Any]:
        state = super().__getstate__()
        state["_gf_results"] = self._gf_results  # pickling keeps grad_norm / skipped_steps
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        defaults = self.defaults
        for group in self.param_groups:
            # A checkpoint of a torch optimizer has no gradfast keys: the values this
            # optimizer was built with apply.
            for key, default in EXTRA_DEFAULTS.items():
                group.setdefault(key, defaults.get(key, default))
        self._gf_reset()
        self.__dict__.setdefault("_gf_monitor", None)
        if "_gf_results" not in self.__dict__:
            self._gf_results = {"grad_norm": None, "skipped_steps": None}
        self._step_supports_amp_scaling = True

    # ---- what a subclass provides ---------------------------------------------------------

    def _group_work(self, group: Dict[str, Any], use_plans: bool) -> Optional[WorkItem]:
        """The group's work item for this step (None when no parameter has a grad)."""
        raise NotImplementedError

    def _update(self, item: WorkItem, device: torch.device, idx: Optional[List[int]],
                step: StepArgs, skipped: Optional[Tensor]) -> None:
        """Update the (device, dtype) part idx of item (None: all of it)."""
        raise NotImplementedError

    def _fused_norm_kind(self, work: List[WorkItem], norm_types: set) -> Optional[int]:
        """A NormKind when the update computes the global norm in its own launch (Adam's
        opt-in one-launch step); None: the norm is computed first, by the norm kernel."""
        return None

    # ---- the step ------------------------------------------------------------------------

    def step(self, closure=None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        self._accelerator_graph_capture_health_check()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            self._fused_step()
        return loss

    def _global_norm(self, grads: List[Tensor], norm_type: float) -> Tensor:
        # The grads passed _group_work's checks: dense, of native dtypes and devices.
        kind = norm_kind(norm_type)
        if kind is None:
            return _torch_fallback.total_norm(grads, norm_type)
        check_empty(grads, norm_type)
        return total_norm(grads, norm_type, kind, 1.0)[0]

    def _skipped_counter(self, device: torch.device) -> Tensor:
        counter = self._gf_results["skipped_steps"]
        if counter is None or counter.device != device:
            counter = torch.zeros((), dtype=torch.int64, device=device)
            self._gf_results["skipped_steps"] = counter
        return counter

    def _set_grad_norm(self, total: Tensor, grad_scale: Optional[Tensor]) -> None:
        if grad_scale is not None:
            total = total / grad_scale.to(total.device, non_blocking=True)
        self._gf_results["grad_norm"] = total

    def _fused_step(self) -> None:
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        use_plans = not compiling()  # plans hold raw pointers: eager mode only
        work: List[WorkItem] = []
        all_grads: List[Tensor] = []
        norm_types = set()
        for group in self.param_groups:
            item = self._group_work(group, use_plans)
            if item is None:
                continue
            work.append(item)
            all_grads.extend(item.lists.grads)
            if group["max_grad_norm"] is not None or group["skip_nonfinite"]:
                norm_types.add(parse_norm_type(group["grad_norm_type"]))
        if not work:
            return
        skipped_steps = self._skipped_counter(work[0].lists.params[0].device)
        if len(norm_types) > 1:
            raise ValueError(
                "parameter groups that clip or skip non-finite steps must use the same "
                f"grad_norm_type, got {sorted(norm_types)}")

        monitor = self._gf_monitor
        total = None
        monitored = None  # (total, per-tensor groups) of this step's one norm pass
        fused_kind = None
        if monitor is not None and (not norm_types or monitor.norm_type in norm_types):
            # One pass gives the monitor its per-tensor norms and the step its total.
            monitored = norms_of(all_grads, monitor.norm_type)
            if norm_types:
                total = monitored[0]
        elif norm_types:
            fused_kind = self._fused_norm_kind(work, norm_types) if monitor is None else None
            if fused_kind is None:
                total = self._global_norm(all_grads, next(iter(norm_types)))
            else:
                check_empty(all_grads, next(iter(norm_types)))
        if total is not None:
            self._set_grad_norm(total, grad_scale)
        if monitor is not None and monitored is None:
            monitored = norms_of(all_grads, monitor.norm_type)  # the monitor's own order
        skipped_before = skipped_steps.clone() if monitor is not None else None

        scale_by_dev: Dict = {}
        inf_by_dev: Dict = {}
        total_by_dev: Dict = {}
        thresholds: Dict = {}  # id(max_grad_norm) -> (tensor, {device: tensor})
        monitor_max_norm = None
        counter_used = False
        for item in work:
            group = item.group
            max_norm = group["max_grad_norm"]
            clip = max_norm is not None
            skip_nonfinite = bool(group["skip_nonfinite"])
            thr = None
            if clip and (isinstance(max_norm, Tensor) or is_threshold_object(max_norm)):
                # A device threshold: a Tensor, or an object such as gradfast.AutoClip whose
                # threshold(global_norm) returns one (called once per step).
                thr = thresholds.get(id(max_norm))
                if thr is None:
                    t = max_norm if isinstance(max_norm, Tensor) else \
                        max_norm.threshold(self._gf_results["grad_norm"])
                    thr = thresholds[id(max_norm)] = (t, {})
            if clip and monitor_max_norm is None:
                monitor_max_norm = thr[0] if thr is not None else float(max_norm)
            lr = group["lr"]
            lr_by_dev: Dict = {}
            for device, idx in item.split:
                skipped = None
                if not counter_used and device == skipped_steps.device:
                    skipped, counter_used = skipped_steps, True
                lr_t = on_device(lr_by_dev, lr, device, (torch.float32, torch.float64)) \
                    if isinstance(lr, Tensor) else None
                step = StepArgs(
                    lr=0.0 if lr_t is not None else float(lr), lr_t=lr_t,
                    grad_scale=on_device(scale_by_dev, grad_scale, device),
                    found_inf=on_device(inf_by_dev, found_inf, device),
                    total=on_device(total_by_dev, total, device, _NATIVE_DTYPES)
                    if (clip or skip_nonfinite) else None,
                    clip=clip, max_norm=float(max_norm) if clip and thr is None else 0.0,
                    max_norm_t=on_device(thr[1], thr[0], device, _NATIVE_DTYPES)
                    if thr is not None else None,
                    skip_nonfinite=skip_nonfinite)
                fused_total = self._update(item, device, idx, step, skipped,
                                           *((fused_kind, next(iter(norm_types)))
                                             if fused_kind is not None else ()))
                if fused_total is not None:
                    self._set_grad_norm(fused_total, grad_scale)
            if grad_scale is not None:
                for orig, copy in item.copies:
                    orig.copy_(copy)
        if monitor is not None:
            self._feed_monitor(monitor, monitored, work, grad_scale,
                               torch.gt(skipped_steps, skipped_before), monitor_max_norm)

    @staticmethod
    def _feed_monitor(monitor, monitored, work, grad_scale, skipped, max_norm) -> None:
        """Record this step's (pre-clip, unscaled) norms in an attached GradMonitor."""
        total, groups = monitored
        params = [p for item in work for p in item.lists.params]
        per_tensor = aligned_per_tensor(len(params), groups, total.device, torch.float32)
        total = total.to(torch.float32)
        if grad_scale is not None:
            scale = grad_scale.to(total.device, non_blocking=True)
            total, per_tensor = total / scale, per_tensor / scale
        monitor.record(total, per_tensor, params=params, max_norm=max_norm, skipped=skipped)

