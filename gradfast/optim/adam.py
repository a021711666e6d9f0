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

import math
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .. import _kernels, _ops, _torch_fallback
from .._native import DTYPE_CODES
from .._norm_kind import norm_kind, parse_norm_type
from .._tensor_lists import group_by_device_dtype, is_dense, native_supported
from ..clip import _check_empty, _norms
from ..health.norms import aligned_per_tensor, norms_of
from ._plan import GroupPlan

__all__ = ["Adam", "AdamW"]

_WD_NONE, _WD_L2, _WD_DECOUPLED = 0, 1, 2

_NATIVE_DTYPES = tuple(DTYPE_CODES)

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _dist_step():
    # Imported on first use: single-process training never loads torch.distributed.tensor.
    from ..distributed import optim_step
    return optim_step


def _dist_plan():
    from ..distributed.optim_plan import LocalPlan
    return LocalPlan

# GRADFAST_ADAM_LAUNCHES=1 asks for the one-launch clip + Adam step where it applies
# (_one_launch_kind); unset, 2 or anything else: the default two launches.
LAUNCHES_ENV = "GRADFAST_ADAM_LAUNCHES"


def _one_launch_kind(work, norm_types, monitor) -> Optional[int]:
    """The NormKind code of the norm when this step can run as one clip + Adam launch
    (_kernels.group_clip_adam), else None.

    It can when the norm is the only one the step needs and covers exactly the grads of
    one native update: one work item (parameter group) with one (device, dtype) split on a
    CUDA device, a norm order with a native kernel, a threshold that is a number or a
    Tensor (AutoClip-like objects compute theirs from the norm between the launches), no
    attached monitor (it takes its own norm pass), and eager mode (no custom op for it).
    """
    if monitor is not None or len(work) != 1 or len(norm_types) != 1:
        return None
    group, _, _, split, _ = work[0]
    if len(split) != 1 or split[0][0].type != "cuda":
        return None
    max_norm = group["max_grad_norm"]
    if max_norm is not None and not isinstance(max_norm, Tensor) and \
            callable(getattr(max_norm, "threshold", None)):
        return None
    if _ops.compiling():
        return None
    return norm_kind(next(iter(norm_types)))


def _split(tensors: List[Tensor]):
    """[(device, indices or None)] per (device, dtype) of tensors, in order of appearance;
    None stands for "all of them", the common case, found without building index lists."""
    first = tensors[0]
    dev0, dt0 = first.get_device(), first.dtype
    for t in tensors:
        if t.dtype is not dt0 or t.get_device() != dev0:
            return [(device, idx) for (device, _), idx in group_by_device_dtype(tensors).items()]
    return [(first.device, None)]


_EXTRA_DEFAULTS = {
    "max_grad_norm": None,
    "grad_norm_type": 2.0,
    "l1_weight_decay": 0.0,
    "skip_nonfinite": False,
}


def _to_scalar(x):
    # torch.optim.optimizer._to_scalar: a 1-element tensor becomes 0-d, numbers stay.
    if isinstance(x, Tensor) and x.dim() != 0:
        return x.squeeze()
    return x


def _value(x) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


class Adam(torch.optim.Optimizer):
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
        # torch 2.13's argument checks, in torch's order and with torch's messages.
        if isinstance(lr, Tensor):
            if foreach and not capturable:
                raise ValueError(
                    "lr as a Tensor is not supported for capturable=False and foreach=True"
                )
            if lr.numel() != 1:
                raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not (
            (isinstance(betas[0], float) and isinstance(betas[1], float))
            or (isinstance(betas[0], Tensor) and isinstance(betas[1], Tensor))
        ):
            raise ValueError("betas must be either both floats or both Tensors")
        if isinstance(betas[0], Tensor):
            if not capturable and foreach:
                raise ValueError(
                    "betas[0] as a Tensor is not supported for capturable=False and foreach=True"
                )
            if betas[0].numel() != 1:
                raise ValueError("Tensor betas[0] must be 1-element")
        if isinstance(betas[1], Tensor):
            if not capturable and foreach:
                raise ValueError(
                    "betas[1] as a Tensor is not supported for capturable=False and foreach=True"
                )
            if betas[1].numel() != 1:
                raise ValueError("Tensor betas[1] must be 1-element")
        betas = tuple(map(_to_scalar, betas))
        # gradfast's extras.
        if max_grad_norm is not None:
            if isinstance(max_grad_norm, Tensor):
                if max_grad_norm.numel() != 1:
                    raise ValueError("Tensor max_grad_norm must be 1-element")
            elif not callable(getattr(max_grad_norm, "threshold", None)):
                max_grad_norm = float(max_grad_norm)
                if not max_grad_norm > 0.0:
                    raise ValueError(f"Invalid max_grad_norm value: {max_grad_norm}")
        grad_norm_type = parse_norm_type(grad_norm_type)
        if math.isnan(grad_norm_type):
            raise ValueError(f"Invalid grad_norm_type value: {grad_norm_type}")
        l1_weight_decay = float(l1_weight_decay)
        if not 0.0 <= l1_weight_decay:
            raise ValueError(f"Invalid l1_weight_decay value: {l1_weight_decay}")

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
            "max_grad_norm": max_grad_norm,
            "grad_norm_type": grad_norm_type,
            "l1_weight_decay": l1_weight_decay,
            "skip_nonfinite": bool(skip_nonfinite),
        }
        # pp_mesh (a DeviceMesh over pipeline stages) is no per-group hyperparameter: it stays
        # out of param_groups, hence out of state_dict().
        self._gf_pp_mesh = pp_mesh
        self._gf_dtensor = False  # any DTensor parameter (set by add_param_group)
        super().__init__(params, defaults)

        if fused:
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        if differentiable:
            raise RuntimeError(
                f"gradfast.optim.{type(self).__name__} does not support differentiable=True "
                f"(its step is a fused kernel that autograd cannot differentiate through); "
                f"use torch.optim.{type(self).__name__} for a differentiable optimizer"
            )
        # Like torch's fused optimizers: GradScaler hands over grad_scale / found_inf and the
        # kernel unscales and skips on the device.
        self._step_supports_amp_scaling = True
        # Mutated (never reassigned) by step(), which torch.compile traces more easily.
        self._gf_results: Dict[str, Optional[Tensor]] = {"grad_norm": None,
                                                         "skipped_steps": None}
        self._checked_state: Dict = {}
        self._plans: Dict[int, GroupPlan] = {}
        self._gf_monitor = None  # a GradMonitor fed by step() (GradMonitor.attach)
        # With GRADFAST_ADAM_LAUNCHES=1: the launches the last step's clip + Adam took (1,
        # or 2 when the one-launch kernel fell back), None when it was not eligible.
        self._gf_launches: Optional[int] = None

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
        if any(type(p) not in _PLAIN for p in self.param_groups[-1]["params"]):
            self._gf_dtensor = self._gf_dtensor or _dist_step().any_dtensor(
                self.param_groups[-1:])
        for p in self.param_groups[-1]["params"]:
            if torch.is_complex(p):
                raise RuntimeError(
                    f"gradfast.optim.{type(self).__name__} does not support complex "
                    "parameters; optimise them with torch.optim (or as torch.view_as_real "
                    "views)"
                )

    def __getstate__(self) -> Dict[str, Any]:
        state = super().__getstate__()
        state["_gf_results"] = self._gf_results  # pickling keeps grad_norm / skipped_steps
        return state

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
            # A checkpoint of torch.optim.Adam has no gradfast keys: the values this
            # optimizer was built with apply.
            for key, default in _EXTRA_DEFAULTS.items():
                group.setdefault(key, defaults.get(key, default))
        # torch's state may hold CPU (or Python number) steps: converted lazily by step().
        self._checked_state = {}
        self._plans = {}
        self.__dict__.setdefault("_gf_monitor", None)
        self.__dict__.setdefault("_gf_launches", None)
        self.__dict__.setdefault("_gf_pp_mesh", None)
        self._gf_dtensor = any(type(p) not in _PLAIN for g in self.param_groups
                               for p in g["params"]) and _dist_step().any_dtensor(
                                   self.param_groups)
        if "_gf_results" not in self.__dict__:
            self._gf_results = {"grad_norm": None, "skipped_steps": None}
        self._step_supports_amp_scaling = True

    # ---- state -------------------------------------------------------------------------

    def _init_group(self, group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                    steps, grad_copies, owners=None) -> None:
        """owners, when given, gets the parameters themselves (DTensors), whose local
        shards the other lists hold."""
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
            if owners is not None:
                owners.append(p)
            if self._gf_dtensor and type(p) not in _PLAIN:
                # A DTensor parameter: its local shards go to the kernels.
                local = _dist_step().local_lists(f"gradfast.optim.{type(self).__name__}", p,
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

    def _global_norm(self, grads: List[Tensor], norm_type: float, one_group: bool) -> Tensor:
        # The grads passed _init_group's checks: dense, of native dtypes and devices.
        kind = norm_kind(norm_type)
        if kind is None:
            return _torch_fallback.total_norm(grads, norm_type)
        _check_empty(grads, norm_type)
        if one_group:
            return _ops.group_norm(grads, norm_type, kind, 1.0)[0]
        return _norms(grads, norm_type, 1.0)[0]

    @staticmethod
    def _on(cache: Dict, t: Optional[Tensor], device: torch.device,
            dtypes=(torch.float32,)) -> Optional[Tensor]:
        """t on device (and in one of dtypes), converted at most once per step."""
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

    def _fused_step(self) -> None:
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        work = []  # (group, lists, grad copies)
        all_grads: List[Tensor] = []
        norm_types = set()
        plans = self._plans
        use_plans = not _ops.compiling()  # plans hold raw pointers: eager mode only
        for group in self.param_groups:
            params_list = group["params"]
            grads_all = [p.grad for p in params_list]
            plan = plans.get(id(group)) if use_plans else None
            grads = None
            if plan is not None:
                grads = plan.grads_if_valid(group, params_list, grads_all, self.state)
            if grads is not None:
                lists = plan.lists(grads)
                work.append((group, lists, [], plan.split, plan.host))
            else:
                plans.pop(id(group), None)
                lists = ([], [], [], [], [], [])
                copies: List[Tuple[Tensor, Tensor]] = []
                owners: List[Tensor] = []
                self._init_group(group, *lists, copies, owners)
                if not lists[0]:
                    continue
                split = _split(lists[0])
                host = None
                if not copies and use_plans and self._gf_dtensor:
                    # Keyed on the local shards (DTensor wrappers are rebuilt every step).
                    plan = _dist_plan()(group, grads_all, owners, lists,
                                        [self.state[p] for p in owners], split, None)
                    plans[id(group)] = plan
                    host = plan.host
                elif not copies and use_plans:
                    plan = GroupPlan(group, grads_all, lists,
                                     [self.state[p] for p in lists[0]], split)
                    plans[id(group)] = plan
                    host = plan.host
                work.append((group, lists, copies, split, host))
            all_grads.extend(lists[1])
            if group["max_grad_norm"] is not None or group["skip_nonfinite"]:
                norm_types.add(parse_norm_type(group["grad_norm_type"]))
        if not work:
            return
        results = self._gf_results
        first_device = work[0][1][0][0].device
        skipped_steps = results["skipped_steps"]
        if skipped_steps is None or skipped_steps.device != first_device:
            skipped_steps = torch.zeros((), dtype=torch.int64, device=first_device)
            results["skipped_steps"] = skipped_steps

        if len(norm_types) > 1:
            raise ValueError(
                "parameter groups that clip or skip non-finite steps must use the same "
                f"grad_norm_type, got {sorted(norm_types)}")
        monitor = self._gf_monitor
        total = None
        monitored = None  # (total, per-tensor groups) of this step's one norm pass
        one_launch = None  # the norm kind when the norm runs in the update's launch
        if norm_types and (self._gf_dtensor or self._gf_pp_mesh is not None):
            # Sharded grads or pipeline stages: the global norm over every rank, from one
            # all-reduce (gradfast.distributed); an attached monitor sees local shards.
            total = _dist_step().global_norm(self.param_groups, next(iter(norm_types)),
                                             self._gf_pp_mesh)
        elif monitor is not None and (not norm_types or monitor.norm_type in norm_types):
            # One pass gives the monitor its per-tensor norms and the step its total.
            monitored = norms_of(all_grads, monitor.norm_type)
            if norm_types:
                total = monitored[0]
        elif norm_types:
            if os.environ.get(LAUNCHES_ENV) == "1":
                one_launch = _one_launch_kind(work, norm_types, monitor)
                self._gf_launches = None
            if one_launch is None:
                one_group = len(work) == 1 and len(work[0][3]) == 1 or (
                    len(_split(all_grads)) == 1)
                total = self._global_norm(all_grads, next(iter(norm_types)), one_group)
            else:
                _check_empty(all_grads, next(iter(norm_types)))
        if total is not None:
            if grad_scale is not None:
                results["grad_norm"] = total / grad_scale.to(total.device, non_blocking=True)
            else:
                results["grad_norm"] = total
        if monitor is not None and monitored is None:
            monitored = norms_of(all_grads, monitor.norm_type)  # the monitor's own order
        skipped_before = skipped_steps.clone() if monitor is not None else None
        monitor_max_norm = None

        scale_by_dev: Dict = {}
        inf_by_dev: Dict = {}
        total_by_dev: Dict = {}
        thresholds: Dict = {}  # id(max_grad_norm) -> (tensor, {device: tensor})
        counter_used = False
        for group, lists, copies, split, host in work:
            params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps = lists
            lr = group["lr"]
            beta1, beta2 = (_value(b) for b in group["betas"])
            wd = float(group["weight_decay"])
            if wd != 0.0:
                wd_mode = _WD_DECOUPLED if group["decoupled_weight_decay"] else _WD_L2
            else:
                wd_mode = _WD_NONE
            max_norm = group["max_grad_norm"]
            clip = max_norm is not None
            thr = None
            if clip and (isinstance(max_norm, Tensor)
                         or callable(getattr(max_norm, "threshold", None))):
                # A device threshold: a Tensor, or an object such as gradfast.AutoClip whose
                # threshold(global_norm) returns one (called once per step).
                hit = thresholds.get(id(max_norm))
                if hit is None:
                    t = max_norm if isinstance(max_norm, Tensor) else \
                        max_norm.threshold(results["grad_norm"])
                    hit = thresholds[id(max_norm)] = (t, {})
                thr = hit
            skip_nonfinite = bool(group["skip_nonfinite"])
            if clip and monitor_max_norm is None:
                monitor_max_norm = thr[0] if thr is not None else float(max_norm)
            lr_by_dev: Dict = {}
            for device, idx in split:
                if idx is None:
                    sub = (params, grads, exp_avgs, exp_avg_sqs)
                    sub_max, sub_steps = max_sqs, steps
                else:
                    sub = [[lst[i] for i in idx] for lst in (params, grads, exp_avgs, exp_avg_sqs)]
                    sub_max = [max_sqs[i] for i in idx] if group["amsgrad"] else []
                    sub_steps = [steps[i] for i in idx]
                if isinstance(lr, Tensor):
                    lr_t = self._on(lr_by_dev, lr, device, (torch.float32, torch.float64))
                    lr_f = 0.0
                else:
                    lr_t, lr_f = None, float(lr)
                skipped = None
                if not counter_used and device == skipped_steps.device:
                    skipped, counter_used = skipped_steps, True
                if one_launch is not None:
                    # The only work item, every grad of the step: norm + update in one launch.
                    total, self._gf_launches = _kernels.group_clip_adam(
                        params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps, lr_f, lr_t,
                        beta1, beta2, float(group["eps"]), wd, wd_mode,
                        float(group["l1_weight_decay"]), bool(group["maximize"]),
                        bool(group["amsgrad"]), self._on(scale_by_dev, grad_scale, device),
                        self._on(inf_by_dev, found_inf, device),
                        next(iter(norm_types)), one_launch, clip,
                        float(max_norm) if clip and thr is None else 0.0, skip_nonfinite,
                        skipped,
                        self._on(thr[1], thr[0], device, _NATIVE_DTYPES)
                        if thr is not None else None)
                    if grad_scale is not None:
                        results["grad_norm"] = total / grad_scale.to(total.device,
                                                                      non_blocking=True)
                    else:
                        results["grad_norm"] = total
                    continue
                _ops.group_adam(
                    sub[0], sub[1], sub[2], sub[3], sub_max, sub_steps, lr_f, lr_t, beta1,
                    beta2, float(group["eps"]), wd, wd_mode, float(group["l1_weight_decay"]),
                    bool(group["maximize"]), bool(group["amsgrad"]),
                    self._on(scale_by_dev, grad_scale, device),
                    self._on(inf_by_dev, found_inf, device),
                    self._on(total_by_dev, total, device, _NATIVE_DTYPES)
                    if (clip or skip_nonfinite) else None,
                    clip, float(max_norm) if clip and thr is None else 0.0, skip_nonfinite,
                    skipped,
                    self._on(thr[1], thr[0], device, _NATIVE_DTYPES) if thr is not None else None,
                    host=host if idx is None else None)
            if grad_scale is not None:
                for orig, copy in copies:
                    orig.copy_(copy)
        if monitor is not None:
            self._feed_monitor(monitor, monitored, work, grad_scale,
                               torch.gt(skipped_steps, skipped_before), monitor_max_norm)

    @staticmethod
    def _feed_monitor(monitor, monitored, work, grad_scale, skipped, max_norm) -> None:
        """Record this step's (pre-clip, unscaled) norms in an attached GradMonitor."""
        total, groups = monitored
        params = [p for _, lists, _, _, _ in work for p in lists[0]]
        per_tensor = aligned_per_tensor(len(params), groups, total.device, torch.float32)
        total = total.to(torch.float32)
        if grad_scale is not None:
            scale = grad_scale.to(total.device, non_blocking=True)
            total, per_tensor = total / scale, per_tensor / scale
        monitor.record(total, per_tensor, params=params, max_norm=max_norm, skipped=skipped)


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
