"""What every gradfast optimizer shares: its extras (max_grad_norm, grad_norm_type,
l1_weight_decay, skip_nonfinite), the global norm, clip thresholds, GradScaler's hand-over,
the per-step inputs of the kernels, the skipped-step counter, the step-norms hooks
(GradMonitor.attach), checkpoints of threshold objects, the GradScaler hand-over answer
frameworks read, and parameters only torch can step (the subclass's fallback).

A subclass says how a parameter group becomes a work item (its tensor lists, checked and
normalised: _group_work) and how one (device, dtype) part of it is updated (_update). The
step is then: every group's work item; one global norm over every gradient when any group
clips or skips (gradfast's norm kernel); one update call per (group, device, dtype).
"""
from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from .. import _torch_fallback
from .._native import norm as native_norm
from .._native.norm import total_norm
from .._native.norm_kind import check_empty, norm_kind, parse_norm_type
from .._native.library import DTYPE_CODES
from .._native.backend import current as current_backend
from .._native.op import compiling
from .._native.step import StepArgs
from .._native.support import is_dense, native_supported
from ..health.checkpoint import pack_thresholds, unpack_thresholds
from ..health.norms import aligned_per_tensor, norms_of
from ._validation import EXTRA_DEFAULTS

_NATIVE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def dist_step():
    # Imported on first use: single-process training never loads torch.distributed.tensor.
    from ..distributed import optim_step
    return optim_step


def dist_plan():
    from ..distributed.optim_plan import LocalPlan
    return LocalPlan


class WorkItem(NamedTuple):
    """One parameter group's part of a step."""
    group: Dict[str, Any]
    lists: Any                      # the subclass's lists; .params and .grads first
    copies: List[Tuple[Tensor, Tensor]]  # (user grad, dense copy the kernel reads)
    split: List[Tuple[torch.device, Optional[List[int]]]]  # (device, indices or None=all)
    host: Optional[tuple]           # CPU pointers a step plan keeps, or None
    fallback: Tuple[Tensor, ...] = ()  # params (with grads) the subclass's torch path steps


class StepNorms(NamedTuple):
    """What a step-norms hook receives after each step (see
    FusedOptimizer.register_step_norms_hook)."""
    total: Tensor         # 0-d fp32: global norm of the grads stepped, pre-clip, unscaled
    per_tensor: Tensor    # fp32 [len(params)]: each of those grads' norm, same order
    params: List[Tensor]  # the parameters that had a gradient, in param_groups order
    max_norm: Any         # the clip threshold used (float, or 0-d device tensor), or None
    skipped: Tensor       # 0-d bool device tensor: the step was skipped on the device


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


def kernel_grad(optimizer_name: str, p: Tensor, g: Tensor, grad_copies: List) -> Tensor:
    """g as the kernels read it: of p's dtype and device (else torch-style RuntimeError) and
    in p's memory order, since the kernels walk p, its grad and its state in one order; a
    grad of other strides (or a subclass) is copied densely, and the (grad, copy) pair
    remembered in grad_copies (GradScaler's unscaled values are written back to it)."""
    if g.dtype != p.dtype or g.device != p.device:
        raise RuntimeError(
            f"{optimizer_name}: a gradient of dtype {g.dtype} on {g.device} for a parameter "
            f"of dtype {p.dtype} on {p.device}")
    if g.stride() != p.stride() or (type(g) is not torch.Tensor and not native_supported(g)):
        copy = torch.empty_like(p)
        copy.copy_(g)
        grad_copies.append((g, copy))
        return copy
    return g


def one_call_kind(work: List[WorkItem], norm_types: set) -> Optional[int]:
    """The NormKind code of the step's norm when the norm and the update can be one native
    call on the CPU (the entry points' norm_kind=, csrc/bindings/norm_first.h), else None.

    They can when one work item (parameter group) with one (device, dtype) split, on the
    CPU kernels, holds every grad of the step, the norm order has a native kernel, the
    threshold is a number or a Tensor (an AutoClip-like object computes its threshold from
    the norm, between the two calls) and the step runs eagerly (the custom ops take a
    computed norm). The results are bitwise those of the two calls; one call spares a
    Python to C++ crossing, an allocation and a GIL release per step."""
    if len(work) != 1 or len(norm_types) != 1:
        return None
    item = work[0]
    if len(item.split) != 1 or not current_backend().host_kernels(item.split[0][0]):
        return None
    if is_threshold_object(item.group["max_grad_norm"]) or compiling():
        return None
    return norm_kind(next(iter(norm_types)))


def is_threshold_object(max_norm) -> bool:
    return not isinstance(max_norm, Tensor) and callable(getattr(max_norm, "threshold", None))


class FusedOptimizer(torch.optim.Optimizer):
    """Base of gradfast's fused optimizers (see the module docstring).

    ``register_step_norms_hook(hook, norm_type=2.0)`` (gradfast's addition) registers
    ``hook(optimizer, record)``, called at the end of every ``step()`` that updated
    something, with a :class:`StepNorms` record: the pre-clip (unscaled under GradScaler)
    global and per-tensor gradient norms of order ``norm_type`` of the parameters it
    stepped, the clip threshold it used and whether it skipped the step on the device.
    The norms come from the step's own norm pass when the optimizer clips or skips with
    the same norm order (otherwise one extra pass per norm order), inside a compiled step
    too; nothing synchronises with the device. Returns a
    ``torch.utils.hooks.RemovableHandle``. Hooks are not pickled or deep-copied with the
    optimizer. ``GradMonitor.attach`` uses it.
    """

    def __init__(self, params, defaults: Dict[str, Any], pp_mesh=None) -> None:
        # DTensor parameters (FSDP2, tensor parallel) and pipeline stages (pp_mesh, a
        # DeviceMesh over the stages): the kernels run on local shards and the global norm
        # comes from one all-reduce (gradfast.distributed). pp_mesh is no per-group
        # hyperparameter: it stays out of param_groups, hence out of state_dict().
        self._gf_pp_mesh = pp_mesh
        self._gf_dtensor = False  # any DTensor parameter (set by add_param_group)
        super().__init__(params, defaults)
        self._gf_reset()
        # Mutated (never reassigned) by step(), which torch.compile traces more easily.
        self._gf_results: Dict[str, Optional[Tensor]] = {"grad_norm": None,
                                                         "skipped_steps": None}
        # Created here rather than by the first step, so that a compiled step sees the
        # same attributes from its first call on (no recompile for it).
        first = next((p for g in self.param_groups for p in g["params"]), None)
        if first is not None:
            self._skipped_counter(first.device)
        # register_step_norms_hook: handle id -> (hook, norm order).
        self._gf_norm_hooks: "OrderedDict[int, Tuple[Any, float]]" = OrderedDict()

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """True when torch's GradScaler.step asks, False for anyone else.

        GradScaler.step then hands over grad_scale / found_inf, and the kernel unscales
        and skips on the device, as with torch's fused optimizers. Lightning's and
        accelerate's precision plugins read the same flag to decide whether they may
        unscale and clip gradients themselves, and refuse gradient clipping when it is
        True, even under bf16 where no GradScaler exists. Answering them False, they
        unscale through the scaler (fp16) before clipping, and GradScaler.step still hands
        over found_inf (with no grad_scale, the grads being unscaled), so an overflow is
        still skipped on the device, without a sync.
        """
        return sys._getframe(1).f_globals.get("__name__") == "torch.amp.grad_scaler"

    def register_step_norms_hook(self, hook, norm_type: float = 2.0) -> RemovableHandle:
        """Call ``hook(optimizer, StepNorms)`` after every step (see the class docstring)."""
        norm_type = parse_norm_type(norm_type)
        if norm_type != norm_type:
            raise ValueError(f"Invalid norm_type value: {norm_type}")
        handle = RemovableHandle(self._gf_norm_hooks)
        self._gf_norm_hooks[handle.id] = (hook, norm_type)
        return handle

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
        skip_nonfinite, or GradScaler's found_inf), on the first parameter's device."""
        return self._gf_results["skipped_steps"]

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        # Checked before torch adds the group, so a refused group leaves param_groups as
        # they were.
        params = param_group["params"]
        if not isinstance(params, (Tensor, set)):  # (a set: torch's TypeError follows)
            params = param_group["params"] = list(params)  # a generator is read once
        for p in [params] if isinstance(params, Tensor) else params:
            if isinstance(p, Tensor) and torch.is_complex(p):
                raise RuntimeError(
                    f"gradfast.optim.{type(self).__name__} does not support complex "
                    "parameters; optimise them with torch.optim (or as torch.view_as_real "
                    "views)")
        super().add_param_group(param_group)
        if any(type(p) not in _PLAIN for p in self.param_groups[-1]["params"]):
            self._gf_dtensor = self._gf_dtensor or dist_step().any_dtensor(
                self.param_groups[-1:])

    def state_dict(self) -> Dict[str, Any]:
        # A max_grad_norm object (AutoClip) is saved as its own state_dict, so the result
        # holds only tensors and primitives and loads with torch.load(weights_only=True).
        state = super().state_dict()
        pack_thresholds(state["param_groups"])
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        # The saved AutoClip history goes back into the objects this optimizer holds.
        before = [g.get("max_grad_norm") for g in self.param_groups]
        super().load_state_dict(state_dict)
        unpack_thresholds(self.param_groups, before)

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
        self.__dict__.setdefault("_gf_norm_hooks", OrderedDict())  # hooks are not pickled
        self.__dict__.setdefault("_gf_pp_mesh", None)
        self._gf_dtensor = any(type(p) not in _PLAIN for g in self.param_groups
                               for p in g["params"]) and dist_step().any_dtensor(
                                   self.param_groups)
        if "_gf_results" not in self.__dict__:
            self._gf_results = {"grad_norm": None, "skipped_steps": None}

    def _unsupported_message(self, p: Tensor, group) -> str:
        """Why the kernels cannot step parameter p, in torch's words where torch has some."""
        name = f"gradfast.optim.{type(self).__name__}"
        if group.get("fused") and not (p.is_floating_point()):
            return ("`fused=True` requires all the params to be floating point Tensors of "
                    f"supported devices: ['cpu', 'cuda'] but {p.dtype} and {p.device.type}")
        if p.dtype not in DTYPE_CODES:
            return f"{name} supports float32, float64, float16 and bfloat16 parameters, not {p.dtype}"
        if p.device.type not in ("cpu", "cuda"):
            return f"{name} supports CPU and CUDA parameters, not {p.device.type}"
        if not is_dense(p):
            return (f"{name} needs parameters that are dense in memory (no gaps or overlaps); "
                    f"got one of shape {tuple(p.shape)} and strides {p.stride()}")
        return f"{name} does not support parameters of type {type(p).__name__}"

    # ---- what a subclass provides ---------------------------------------------------------

    def _group_work(self, group: Dict[str, Any], use_plans: bool) -> Optional[WorkItem]:
        """The group's work item for this step (None when no parameter has a grad)."""
        raise NotImplementedError

    def _update(self, item: WorkItem, device: torch.device, idx: Optional[List[int]],
                step: StepArgs, skipped: Optional[Tensor]) -> None:
        """Update the (device, dtype) part idx of item (None: all of it)."""
        raise NotImplementedError

    def _fallback_update(self, group: Dict[str, Any], params: List[Tensor], *,
                         grad_scale: Optional[Tensor], found_inf: Optional[Tensor],
                         grad_norm: Optional[Tensor], threshold,
                         skipped: Optional[Tensor]) -> None:
        """Step params (WorkItem.fallback) with torch's algorithm; grad_norm: the step's
        unscaled global norm (when it clips or skips), threshold: the clip threshold or
        None, skipped: the skipped-step counter to increment on a skip (None: counted)."""
        raise NotImplementedError

    def _planned_work(self, group, params_list, grads_all, use_plans: bool) -> Optional[WorkItem]:
        """The group's work item from its step plan (_plan.py) when the plan still describes
        the group; otherwise the plan is dropped and None returned (the caller rebuilds)."""
        plan = self._plans.get(id(group)) if use_plans else None
        if plan is not None:
            grads = plan.grads_if_valid(group, params_list, grads_all, self.state)
            if grads is not None:
                return WorkItem(group, plan.lists_for(grads), [], plan.split, plan.host)
        self._plans.pop(id(group), None)
        return None

    def _fused_norm_kind(self, work: List[WorkItem], norm_types: set) -> Optional[int]:
        """A NormKind when the update computes the global norm in its own native call
        (one_call_kind: on the CPU; Adam adds its opt-in one-launch CUDA step); None: the
        norm kernel runs first. The caller has excluded hooks, torch-stepped parameters
        and distributed steps."""
        return one_call_kind(work, norm_types)

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

    def _distributed(self) -> bool:
        return self._gf_dtensor or self._gf_pp_mesh is not None

    def _global_norm(self, grads: List[Tensor], norm_type: float,
                     one_group: bool = False) -> Tensor:
        """one_group: the grads are known to be one (device, dtype) group (the work items'
        splits say so), which spares the grouping scan over every grad."""
        if self._distributed():
            # Over every rank (and pipeline stage): one all-reduce of the local partials,
            # which the clip family computes from the parameters' own (DTensor) grads.
            return dist_step().global_norm(self.param_groups, norm_type, self._gf_pp_mesh)
        # The grads passed _group_work's checks: dense, of native dtypes and devices.
        kind = norm_kind(norm_type)
        if kind is None:
            return _torch_fallback.total_norm(grads, norm_type)
        check_empty(grads, norm_type)
        if one_group:
            return native_norm.group_total(grads, kind, norm_type)
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
        is_compiling = compiling()
        use_plans = not is_compiling  # plans hold raw pointers: eager mode only
        work: List[WorkItem] = []
        all_grads: List[Tensor] = []
        fallback_params: List[Tensor] = []
        norm_types = set()
        for group in self.param_groups:
            item = self._group_work(group, use_plans)
            if item is None:
                continue
            work.append(item)
            all_grads.extend(item.lists.grads)
            fallback_params.extend(item.fallback)
            if group["max_grad_norm"] is not None or group["skip_nonfinite"]:
                norm_types.add(parse_norm_type(group["grad_norm_type"]))
        if not work:
            return
        if fallback_params:
            all_grads = all_grads + [p.grad for p in fallback_params]
        skipped_steps = self._skipped_counter(all_grads[0].device)
        if len(norm_types) > 1:
            raise ValueError(
                "parameter groups that clip or skip non-finite steps must use the same "
                f"grad_norm_type, got {sorted(norm_types)}")

        hooks = self._gf_norm_hooks
        hook_types = {nt for _, nt in hooks.values()} if hooks else set()
        total = None
        monitored: Dict[float, Any] = {}  # norm order -> (total, per-tensor groups)
        fused_kind = None
        # Distributed (DTensor parameters, pipeline stages): the global norm is the one
        # all-reduce of _global_norm; the hooks then see the local shards' norms.
        distributed = self._distributed()
        if norm_types and not distributed and next(iter(norm_types)) in hook_types:
            # One pass gives the hooks their per-tensor norms and the step its total.
            nt = next(iter(norm_types))
            monitored[nt] = norms_of(all_grads, nt)
            total = monitored[nt][0]
        elif norm_types:
            if not hooks and not fallback_params and not distributed:
                fused_kind = self._fused_norm_kind(work, norm_types)
            if fallback_params and not distributed:  # torch's norm takes what the kernels cannot
                total = norms_of(all_grads, next(iter(norm_types)))[0]
            elif fused_kind is None:
                total = self._global_norm(all_grads, next(iter(norm_types)),
                                          len(work) == 1 and len(work[0].split) == 1)
            else:
                check_empty(all_grads, next(iter(norm_types)))
        if total is not None:
            self._set_grad_norm(total, grad_scale)
        skipped_before = None
        if hooks:
            for nt in hook_types - set(monitored):
                monitored[nt] = norms_of(all_grads, nt)  # a hook's own norm order
            skipped_before = skipped_steps.clone()

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
                if isinstance(lr, Tensor):
                    lr_t = on_device(lr_by_dev, lr, device, (torch.float32, torch.float64))
                elif is_compiling:
                    # A float lr enters the graph as a tensor the kernel reads (dynamo turns
                    # a changing float into a SymFloat): a scheduler's new lr reuses the
                    # compiled step instead of recompiling for every value. (A multiply,
                    # which dynamo's float tensorification handles; torch.full would
                    # specialise the value.)
                    lr_t = lr_by_dev.get(device)
                    if lr_t is None:
                        lr_t = lr_by_dev[device] = torch.ones(
                            (), dtype=torch.float64, device=device) * lr
                else:
                    lr_t = None
                # Positional, in StepArgs' field order (keywords cost more, every step);
                # the None checks before on_device spare a call per absent input.
                step = StepArgs(
                    0.0 if lr_t is not None else float(lr),                     # lr
                    lr_t,                                                       # lr_t
                    None if grad_scale is None else
                    on_device(scale_by_dev, grad_scale, device),                # grad_scale
                    None if found_inf is None else
                    on_device(inf_by_dev, found_inf, device),                   # found_inf
                    on_device(total_by_dev, total, device, _NATIVE_DTYPES)
                    if (clip or skip_nonfinite) and total is not None else None,  # total
                    clip,                                                       # clip
                    float(max_norm) if clip and thr is None else 0.0,           # max_norm
                    on_device(thr[1], thr[0], device, _NATIVE_DTYPES)
                    if thr is not None else None,                               # max_norm_t
                    skip_nonfinite)                                             # skip_nonfinite
                fused_total = self._update(item, device, idx, step, skipped,
                                           *((fused_kind, next(iter(norm_types)))
                                             if fused_kind is not None else ()))
                if fused_total is not None:
                    self._set_grad_norm(fused_total, grad_scale)
            if grad_scale is not None:
                for orig, copy in item.copies:
                    orig.copy_(copy)
            if item.fallback:
                threshold = None
                if clip:
                    threshold = thr[0] if thr is not None else float(max_norm)
                self._fallback_update(
                    group, list(item.fallback), grad_scale=grad_scale, found_inf=found_inf,
                    grad_norm=self._gf_results["grad_norm"] if norm_types else None,
                    threshold=threshold, skipped=None if counter_used else skipped_steps)
                counter_used = True
        if hooks:
            if distributed:
                # The parameters themselves (DTensors), whose local shards the lists hold, in
                # the lists' order; the norms are the local shards' (GradMonitor reduces them
                # across ranks on its read-back steps).
                params = [p for item in work for p in item.group["params"]
                          if p.grad is not None]
            else:
                params = [p for item in work for p in item.lists.params] + fallback_params
            self._call_norm_hooks(monitored, params, grad_scale,
                                  torch.gt(skipped_steps, skipped_before), monitor_max_norm)

    def _call_norm_hooks(self, monitored, params, grad_scale, skipped, max_norm) -> None:
        """Hand this step's (pre-clip, unscaled) norms to the step-norms hooks."""
        records: Dict[float, StepNorms] = {}
        for nt, (total, groups) in monitored.items():
            per_tensor = aligned_per_tensor(len(params), groups, total.device, torch.float32)
            total = total.to(torch.float32)
            if grad_scale is not None:
                scale = grad_scale.to(total.device, non_blocking=True)
                total, per_tensor = total / scale, per_tensor / scale
            records[nt] = StepNorms(total, per_tensor, params, max_norm, skipped)
        for hook, nt in list(self._gf_norm_hooks.values()):
            hook(self, records[nt])
