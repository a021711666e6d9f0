"""gradfast.optim.Adam and AdamW: drop-in torch.optim.Adam/AdamW (torch 2.13) whose step
is one fused pass per (device, dtype) group, with gradient clipping, L1 regularisation and
skipping of non-finite steps fused in.

The update matches torch's fused Adam kernel (``fused=True``) to rounding: the math type
is fp32 for fp32/fp16/bf16 parameters and fp64 for fp64, state is kept in the parameter's
dtype, and ``state["step"]`` is an fp32 0-d tensor on the parameter's device, as in torch's
fused optimizer, so no step ever synchronises with the device.

gradfast's keyword-only extras (per parameter group, like every hyperparameter):

``max_grad_norm`` (None)
    Clip to this global gradient norm: a number, a 1-element Tensor (read from device
    memory each step), or an object with a ``threshold(global_norm) -> Tensor`` method
    such as ``gradfast.AutoClip``, called once per step with the pre-clip global norm;
    a tensor threshold is applied as ``clamp(threshold / (norm + 1e-6), max=1)``. The norm is taken over the gradients of *all*
    parameters of the optimizer (every group, every device), exactly as
    ``torch.nn.utils.clip_grad_norm_(all_params, max_grad_norm, grad_norm_type)`` would,
    and the update uses ``grad * min(max_grad_norm / (norm + 1e-6), 1)`` rounded to the
    gradient's dtype, without writing clipped gradients back. On CUDA the norm is one
    launch (gradfast's multi-tensor norm kernel) and the update reads the norm from device
    memory: clip + Adam is two launches per (device, dtype) group, with no host sync.
    Opt-in, with the environment variable ``GRADFAST_ADAM_LAUNCHES=1`` (read each step): a
    step whose every gradient is in one CUDA (device, dtype) group of one parameter group,
    with a norm order the native kernels compute and a number or Tensor threshold (not
    AutoClip, whose threshold is computed from the norm between the two launches), and no
    step-norms hook (an attached GradMonitor), runs the norm and the update in one cooperative launch instead,
    with bitwise the same results (falling back to the two launches where the device
    cannot launch it). Unset or ``2``: always the two launches.
``grad_norm_type`` (2.0)
    The order of that norm (as clip_grad_norm_'s ``norm_type``). Groups that clip or skip
    must agree on it.
``l1_weight_decay`` (0.0)
    Adds ``l1_weight_decay * sign(p)`` to the gradient before the moments (coupled L1
    regularisation, also in AdamW).
``skip_nonfinite`` (False)
    A step whose global gradient norm is inf or NaN leaves parameters, moments and step
    counts bitwise unchanged (decided on the device). ``optimizer.skipped_steps`` counts
    skipped steps.

Per element, in this order: g = grad (/ grad_scale under GradScaler); g = g * clip
coefficient; g = -g with maximize; g += weight_decay * p (Adam's L2 mode); g +=
l1_weight_decay * sign(p); p -= lr * weight_decay * p (decoupled mode: AdamW, or
decoupled_weight_decay=True); then torch's moments, bias correction and update.

Attributes set by ``step()``:
``grad_norm``: the global gradient norm before clipping (a 0-d tensor on the first
parameter's device; of the unscaled gradients under GradScaler), when any group clips or
skips; ``skipped_steps``: an int64 0-d tensor counting the steps skipped on the device
(non-finite norm with skip_nonfinite, or GradScaler's found_inf).

Works with torch.amp.GradScaler like torch's fused optimizers (``_step_supports_amp_scaling``,
True when GradScaler.step asks, see FusedOptimizer:
the gradients are unscaled in the kernel, and written back unscaled; a step with found_inf
is skipped on the device; any nonzero found_inf skips, where torch's kernel tests for exactly
1), with lr schedulers (the lr is read from ``param_groups`` each
step; a Tensor lr is read from device memory by the kernel), with CUDA graph capture when
``capturable=True`` and with torch.compile (through torch.library custom ops).

Not supported: ``differentiable=True``, complex parameters and sparse gradients (errors).
Parameters that are not dense in memory (views with gaps such as ``x[..., 0]``) are
stepped by torch's for-loop Adam instead (optim/_fallback.py: torch's numbers, with a host
sync for skip decisions). ``foreach`` and ``fused`` are accepted (and stored in
``param_groups`` as torch does) but ignored, except that ``fused=True`` gets torch's
device/dtype check and error.

``register_step_norms_hook(hook, norm_type=2.0)``: ``hook(optimizer, StepNorms)`` after
each step with the step's pre-clip global and per-tensor norms, threshold and skip flag
(see gradfast.optim._fused.FusedOptimizer; GradMonitor.attach uses it).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.optim.optimizer import _device_dtype_check_for_fused

from .._native import adam as _adam
from .._native.library import _C, DTYPE_CODES
from .._native.norm_kind import norm_kind
from .._native.op import compiling
from .._native.step import StepArgs
from .._native.support import is_dense, native_supported, split
from ._fallback import fallback_adam
from ._fused import (_PLAIN, FusedOptimizer, WorkItem, dist_plan, dist_step, is_threshold_object,
                     kernel_grad)
from ._plan import GroupPlan
from ._validation import check_adam_args, check_extras, check_fused_flags

__all__ = ["Adam", "AdamW"]

# The core's WeightDecayMode codes.
_WD_NONE, _WD_L2, _WD_DECOUPLED = (int(_C.WeightDecayMode.__members__[n])
                                   for n in ("None_", "L2", "Decoupled"))

# GRADFAST_ADAM_LAUNCHES=1 asks for the one-launch clip + Adam step where it applies
# (Adam._fused_norm_kind); unset, 2 or anything else: the default two launches.
LAUNCHES_ENV = "GRADFAST_ADAM_LAUNCHES"

# The state entries an Adam step reads, in AdamLists' order after params and grads.
_STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step")


def _torch_steps(p: Tensor) -> bool:
    """Whether torch's for-loop Adam steps p (_fallback.py): a plain CPU/CUDA tensor of a
    native dtype that is not dense in memory (e.g. the view x[..., 0])."""
    return (type(p) in (Tensor, torch.nn.Parameter) and p.dtype in DTYPE_CODES
            and (p.is_cpu or p.is_cuda) and not is_dense(p))


def _value(x) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


class Adam(FusedOptimizer):
    """Drop-in ``torch.optim.Adam`` with a fused step (see the module docstring)."""

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: Tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: Optional[bool] = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: Optional[bool] = None,
        decoupled_weight_decay: bool = False,
        max_grad_norm: Optional[float] = None,
        grad_norm_type: float = 2.0,
        l1_weight_decay: float = 0.0,
        skip_nonfinite: bool = False,
        pp_mesh=None,
    ) -> None:
        betas = check_adam_args(lr, betas, eps, weight_decay, foreach, capturable)
        extras = check_extras(max_grad_norm, grad_norm_type, l1_weight_decay, skip_nonfinite)
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
            **extras,
        }
        super().__init__(params, defaults, pp_mesh=pp_mesh)
        check_fused_flags(type(self).__name__, fused, foreach, differentiable)
        # With GRADFAST_ADAM_LAUNCHES=1: the launches the last step's clip + Adam took (1,
        # or 2 when the one-launch kernel fell back), None when it was not eligible.
        self._gf_launches: Optional[int] = None
        # Whether this step's fused norm kind came from the one-launch CUDA selection (else
        # from the CPU's one call); set by every _fused_norm_kind.
        self._gf_one_launch = False

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        defaults = self.defaults
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("decoupled_weight_decay",
                             defaults.get("decoupled_weight_decay", False))
            group.setdefault("fused", None)
        # torch's state may hold CPU (or Python number) steps: converted lazily by step().
        self.__dict__.setdefault("_gf_launches", None)
        self.__dict__.setdefault("_gf_one_launch", False)

    # ---- state -------------------------------------------------------------------------

    def _init_group(self, group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                    grad_copies, fallback: Optional[List[Tensor]] = None, owners=None) -> None:
        """fallback, when given, gets the parameters torch's for-loop Adam steps (not dense
        in memory); owners, when given, gets the parameters themselves (DTensors), whose
        local shards the other lists hold."""
        amsgrad = group["amsgrad"]
        checked = self._checked_state
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError(
                    "Adam does not support sparse gradients, please consider SparseAdam instead"
                )
            state = self.state[p]
            if len(state) == 0 and group["fused"]:
                _device_dtype_check_for_fused(p)  # torch's check and message
            if fallback is not None and _torch_steps(p):
                fallback.append(p)
                continue
            if owners is not None:
                owners.append(p)
            if self._gf_dtensor and type(p) not in _PLAIN:
                # A DTensor parameter: its local shards go to the kernels.
                local = dist_step().local_lists(f"gradfast.optim.{type(self).__name__}", p,
                                                g, state, amsgrad, checked, grad_copies)
                for lst, t in zip((params, grads, exp_avgs, exp_avg_sqs), local[:4]):
                    lst.append(t)
                if amsgrad:
                    max_exp_avg_sqs.append(local[4])
                steps.append(local[5])
                continue
            if len(state) == 0:
                if not native_supported(p):
                    raise RuntimeError(self._unsupported_message(p, group))
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if amsgrad:
                    state["max_exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format)
            # The layout checks run once per (param, state tensors): a steady-state step
            # only compares object identities.
            seen = checked.get(p)
            if (seen is None or seen[0] is not state["step"]
                    or seen[1] is not state.get("exp_avg")
                    or seen[2] is not state.get("exp_avg_sq")
                    or (amsgrad and seen[3] is not state.get("max_exp_avg_sq"))
                    or seen[4] != p.data_ptr()):
                if not native_supported(p):
                    raise RuntimeError(self._unsupported_message(p, group))
                self._normalise_state(p, state, amsgrad)
                checked[p] = (state["step"], state["exp_avg"], state["exp_avg_sq"],
                              state["max_exp_avg_sq"] if amsgrad else None, p.data_ptr())
            g = kernel_grad(f"gradfast.optim.{type(self).__name__}", p, g, grad_copies)
            params.append(p)
            grads.append(g)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if amsgrad:
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            steps.append(state["step"])

    @staticmethod
    def _normalise_state(p: Tensor, state: Dict[str, Any], amsgrad: bool) -> None:
        """Bring state loaded from torch (CPU or float64 steps, other layouts) into the
        fused layout: an fp32 step on p's device, moments like p. No host sync."""
        step = state.get("step")
        if not isinstance(step, Tensor):
            state["step"] = torch.tensor(float(step if step is not None else 0.0),
                                         dtype=torch.float32, device=p.device)
        elif step.dtype != torch.float32 or step.device != p.device or step.dim() != 0:
            state["step"] = step.detach().reshape(()).to(device=p.device, dtype=torch.float32)
        keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if amsgrad else ("exp_avg", "exp_avg_sq")
        for key in keys:
            t = state.get(key)
            if t is None:
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif (t.dtype != p.dtype or t.device != p.device or t.stride() != p.stride()
                  or t.shape != p.shape):
                fixed = torch.empty_like(p)
                fixed.copy_(t.reshape(p.shape))
                state[key] = fixed

    # ---- step --------------------------------------------------------------------------

    def _group_work(self, group, use_plans: bool) -> Optional[WorkItem]:
        params_list = group["params"]
        grads_all = [p.grad for p in params_list]
        planned = self._planned_work(group, params_list, grads_all, use_plans)
        if planned is not None:
            return planned
        # Six separate list arguments: torch.compile runs an optimizer's _init_group eagerly
        # and carries over what it appended only to list arguments (dynamo's OptimizerVariable).
        lists = [], [], [], [], [], []
        copies: List[Tuple[Tensor, Tensor]] = []
        fallback: List[Tensor] = []
        owners: Optional[List[Tensor]] = [] if self._gf_dtensor else None
        self._init_group(group, *lists, copies, fallback, owners)
        lists = _adam.AdamLists(*lists)
        if not lists.params:
            if fallback:
                return WorkItem(group, lists, [], [], None, tuple(fallback))
            return None
        parts = split(lists.params)
        host = None
        if not copies and not fallback and use_plans and owners is not None:
            # DTensor parameters: a plan keyed on the local shards (the wrappers of a
            # step's grads are new objects; their local tensors and pointers are what count).
            plan = dist_plan()(group, grads_all, owners, lists,
                               [self.state[p] for p in owners], parts, None)
            self._plans[id(group)] = plan
            host = plan.host
        elif not copies and not fallback and use_plans:
            plan = GroupPlan(group, grads_all, lists, [self.state[p] for p in lists.params],
                             _STATE_KEYS, {"amsgrad": bool(group["amsgrad"])}, parts)
            self._plans[id(group)] = plan
            host = plan.host
        return WorkItem(group, lists, copies, parts, host, tuple(fallback))

    def _fallback_update(self, group, params, *, grad_scale, found_inf, grad_norm, threshold,
                         skipped) -> None:
        fallback_adam(group, params, self.state, grad_scale=grad_scale, found_inf=found_inf,
                      grad_norm=grad_norm, threshold=threshold, skipped=skipped)

    @staticmethod
    def _hyper(group) -> _adam.AdamHyper:
        wd = float(group["weight_decay"])
        if wd == 0.0:
            mode = _WD_NONE
        else:
            mode = _WD_DECOUPLED if group["decoupled_weight_decay"] else _WD_L2
        beta1, beta2 = (_value(b) for b in group["betas"])
        return _adam.AdamHyper(beta1, beta2, float(group["eps"]), wd,
                               float(group["l1_weight_decay"]), bool(group["maximize"]),
                               bool(group["amsgrad"]), mode)

    def _update(self, item: WorkItem, device, idx, step: StepArgs, skipped,
                fused_kind: Optional[int] = None, norm_type: float = 2.0) -> Optional[Tensor]:
        hyper = self._hyper(item.group)
        lists = item.lists
        if fused_kind is not None:
            # The only work item, every grad of the step: norm + update in one native call
            # on the CPU, in one launch on CUDA (opt-in).
            if not self._gf_one_launch:
                return _adam.adam_step(lists, hyper, step, skipped, item.host,
                                       (fused_kind, norm_type))
            total, self._gf_launches = _adam.clip_adam_step(lists, hyper, step, skipped,
                                                            norm_type, fused_kind)
            return total
        host = item.host
        if idx is not None:
            lists = _adam.AdamLists(*([lst[i] for i in idx] if lst else [] for lst in lists))
            host = None
        _adam.adam_step_op(lists, hyper, step, skipped, host)
        return None

    def _fused_norm_kind(self, work, norm_types) -> Optional[int]:
        """With GRADFAST_ADAM_LAUNCHES=1 (read each step), _one_launch_kind's answer for a
        CUDA step; otherwise the CPU's one call (FusedOptimizer's)."""
        self._gf_one_launch = False
        if os.environ.get(LAUNCHES_ENV) == "1":
            self._gf_launches = None
            kind = _one_launch_kind(work, norm_types, self._gf_norm_hooks or None)
            if kind is not None:
                self._gf_one_launch = True
                return kind
        return super()._fused_norm_kind(work, norm_types)


def _one_launch_kind(work, norm_types, monitor) -> Optional[int]:
    """The NormKind code of the norm when this step can run as one clip + Adam launch
    (_native.adam.clip_adam_step), else None.

    It can when the norm is the only one the step needs and covers exactly the grads of
    one native update: one work item (parameter group) with one (device, dtype) split on a
    CUDA device, a norm order with a native kernel, a threshold that is a number or a
    Tensor (AutoClip-like objects compute theirs from the norm between the launches), no
    attached monitor (it takes its own norm pass), and eager mode (no custom op for it).
    """
    if monitor is not None or len(work) != 1 or len(norm_types) != 1:
        return None
    group, parts = work[0][0], work[0][3]  # WorkItem's group and split
    if len(parts) != 1 or parts[0][0].type != "cuda":
        return None
    if is_threshold_object(group["max_grad_norm"]) or compiling():
        return None
    return norm_kind(next(iter(norm_types)))


class AdamW(Adam):
    """Drop-in ``torch.optim.AdamW`` with a fused step (see gradfast.optim.adam)."""

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: Tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: Optional[bool] = None,
        max_grad_norm: Optional[float] = None,
        grad_norm_type: float = 2.0,
        l1_weight_decay: float = 0.0,
        skip_nonfinite: bool = False,
        pp_mesh=None,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=True, max_grad_norm=max_grad_norm,
            grad_norm_type=grad_norm_type, l1_weight_decay=l1_weight_decay,
            skip_nonfinite=skip_nonfinite, pp_mesh=pp_mesh)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
