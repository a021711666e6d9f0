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
    attached GradMonitor, runs the norm and the update in one cooperative launch instead,
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

Works with torch.amp.GradScaler like torch's fused optimizers (``_step_supports_amp_scaling``:
the gradients are unscaled in the kernel, and written back unscaled; a step with found_inf
is skipped on the device; any nonzero found_inf skips, where torch's kernel tests for exactly
1), with lr schedulers (the lr is read from ``param_groups`` each
step; a Tensor lr is read from device memory by the kernel), with CUDA graph capture when
``capturable=True`` and with torch.compile (through torch.library custom ops).

Not supported: ``differentiable=True``, complex parameters and sparse gradients (errors),
parameters that are not dense in memory. ``foreach`` and ``fused`` are accepted (and
stored in ``param_groups`` as torch does) but ignored.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .._native import adam as _adam
from .._native.library import _C, DTYPE_CODES
from .._native.norm_kind import norm_kind
from .._native.op import compiling
from .._native.step import StepArgs
from .._native.support import is_dense, native_supported, split
from ._fused import FusedOptimizer, WorkItem, is_threshold_object
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
        super().__init__(params, defaults)
        check_fused_flags(type(self).__name__, fused, foreach, differentiable)
        # With GRADFAST_ADAM_LAUNCHES=1: the launches the last step's clip + Adam took (1,
        # or 2 when the one-launch kernel fell back), None when it was not eligible.
        self._gf_launches: Optional[int] = None

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

    # ---- state -------------------------------------------------------------------------

    def _init_group(self, group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                    grad_copies) -> None:
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
            if g.dtype != p.dtype or g.device != p.device:
                raise RuntimeError(
                    f"gradfast.optim.{type(self).__name__}: a gradient of dtype {g.dtype} on "
                    f"{g.device} for a parameter of dtype {p.dtype} on {p.device}")
            if g.stride() != p.stride() or (type(g) is not torch.Tensor
                                            and not native_supported(g)):
                # The kernels walk p, grad and the moments in one memory order.
                copy = torch.empty_like(p)
                copy.copy_(g)
                grad_copies.append((g, copy))
                g = copy
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

    def _unsupported_message(self, p: Tensor, group) -> str:
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

    # ---- step --------------------------------------------------------------------------

    def _group_work(self, group, use_plans: bool) -> Optional[WorkItem]:
        params_list = group["params"]
        grads_all = [p.grad for p in params_list]
        plan = self._plans.get(id(group)) if use_plans else None
        if plan is not None:
            grads = plan.grads_if_valid(group, params_list, grads_all, self.state)
            if grads is not None:
                return WorkItem(group, plan.lists_for(grads), [], plan.split, plan.host)
        self._plans.pop(id(group), None)
        # Six separate list arguments: torch.compile runs an optimizer's _init_group eagerly
        # and carries over what it appended only to list arguments (dynamo's OptimizerVariable).
        lists = [], [], [], [], [], []
        copies: List[Tuple[Tensor, Tensor]] = []
        self._init_group(group, *lists, copies)
        lists = _adam.AdamLists(*lists)
        if not lists.params:
            return None
        parts = split(lists.params)
        host = None
        if not copies and use_plans:
            plan = GroupPlan(group, grads_all, lists, [self.state[p] for p in lists.params],
                             _STATE_KEYS, {"amsgrad": bool(group["amsgrad"])}, parts)
            self._plans[id(group)] = plan
            host = plan.host
        return WorkItem(group, lists, copies, parts, host)

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
            # The only work item, every grad of the step: norm + update in one launch.
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
        """With GRADFAST_ADAM_LAUNCHES=1 (read each step), _one_launch_kind's answer."""
        if os.environ.get(LAUNCHES_ENV) != "1":
            return None
        self._gf_launches = None
        return _one_launch_kind(work, norm_types, self._gf_monitor)


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
    group, _, _, parts, _ = work[0]
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
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=True, max_grad_norm=max_grad_norm,
            grad_norm_type=grad_norm_type, l1_weight_decay=l1_weight_decay,
            skip_nonfinite=skip_nonfinite)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
