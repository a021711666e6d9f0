"""gradfast.optim.SGD: drop-in torch.optim.SGD (torch 2.13) whose step is one fused pass per
(device, dtype) group, with gradient clipping, L1 regularisation and skipping of non-finite
steps fused in.

The update is torch's for-loop SGD (``foreach=False``, torch's default on the CPU),
operation for operation in the math type (fp32 for fp32/fp16/bf16 parameters, fp64 for
fp64; csrc/gradfast/sgd_math.h), with the FMAs torch's vectorised CPU add computes: on CPUs
where torch's kernels use AVX2 or AVX-512, fp32 and fp64 results are bitwise torch's
for-loop SGD. They are not bitwise torch's ``fused=True`` CPU kernel, which multiplies and
adds separately (an ulp apart). fp16/bf16 keep the intermediates in fp32 where the for-loop
rounds each to the parameter dtype, so they are at least as accurate.

``state[p]["momentum_buffer"]`` is kept in the parameter's dtype and layout, created at a
parameter's first step and absent without momentum, as in torch. The first step of a
momentum buffer (``buf = d``, no dampening) is decided on the device: each parameter has a
hidden int32 flag that its first step that is not skipped clears, so a first step skipped
by GradScaler's found_inf (or ``skip_nonfinite``) leaves the next one first, with no host
sync. ``state_dict()`` leaves out a buffer whose every step so far was skipped (as torch,
whose GradScaler never called step()), reading those flags only when a skip was possible.

gradfast's keyword-only extras, per parameter group, exactly as in gradfast.optim.Adam:
``max_grad_norm`` (a number, a 1-element Tensor, or an object with ``threshold(norm)``
such as gradfast.AutoClip: clip to this global grad norm inside the step), ``grad_norm_type``
(2.0), ``l1_weight_decay`` (0.0: adds ``l1_weight_decay * sign(p)`` to the gradient before
the momentum), ``skip_nonfinite`` (False: a step whose global grad norm is inf or NaN leaves
parameters and buffers bitwise unchanged). Attributes ``grad_norm`` and ``skipped_steps``
as in Adam.

Per element, in this order (the order of gradfast.optim.Adam): g = grad (/ grad_scale
under GradScaler); g = g * clip coefficient, rounded to the grad's dtype (torch's
clip_grad_norm_ writes it so); d = -g with maximize; d += weight_decay * p; d +=
l1_weight_decay * sign(p); then torch's momentum (buf = momentum * buf + (1 - dampening) *
d, or buf = d at the first step), nesterov (d += momentum * buf) or d = buf, and p -= lr * d.

On CUDA the step is one launch per (device, dtype) group, two with clipping or skipping
(the norm first), never synchronising with the host: it works in CUDA graphs after a
warm-up step, with torch.compile (through a torch.library custom op), with lr schedulers
and Tensor lr (read from device memory), and with torch.amp.GradScaler like torch's fused
optimizers (``_step_supports_amp_scaling``: grads are unscaled in the kernel and written
back unscaled; a step with found_inf is skipped on the device).

Not supported: ``differentiable=True``, complex parameters and sparse gradients (errors),
parameters that are not dense in memory. ``foreach`` and ``fused`` are accepted (and stored
in ``param_groups`` as torch does) but ignored.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .._native import sgd as _sgd
from .._native.op import compiling
from .._native.step import StepArgs
from .._native.support import native_supported, split
from ._fused import FusedOptimizer, WorkItem, kernel_grad
from ._plan import GroupPlan
from ._validation import check_extras, check_fused_flags, check_sgd_args, check_sgd_nesterov

__all__ = ["SGD"]

# The state entry an SGD step reads, in SgdLists' order after params and grads (the first
# flags are the optimizer's own, not state).
_STATE_KEYS = ("momentum_buffer",)


class SGD(FusedOptimizer):
    """Drop-in ``torch.optim.SGD`` with a fused step (see the module docstring)."""

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        differentiable: bool = False,
        fused: Optional[bool] = None,
        max_grad_norm: Optional[float] = None,
        grad_norm_type: float = 2.0,
        l1_weight_decay: float = 0.0,
        skip_nonfinite: bool = False,
    ) -> None:
        check_sgd_args(lr, momentum, weight_decay)
        extras = check_extras(max_grad_norm, grad_norm_type, l1_weight_decay, skip_nonfinite)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
            **extras,
        }
        check_sgd_nesterov(nesterov, momentum, dampening)
        super().__init__(params, defaults)
        check_fused_flags(type(self).__name__, fused, foreach, differentiable)

    def _gf_reset(self) -> None:
        super()._gf_reset()
        # param -> int32 0-d device tensor, nonzero while the param has no momentum history
        # (the kernels clear it); params whose flag may still be nonzero.
        self._gf_first: Dict[Tensor, Tensor] = {}
        self._gf_pending: set = set()

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", False)

    def state_dict(self) -> Dict[str, Any]:
        """torch's state_dict; a momentum buffer whose steps were all skipped on the device
        is left out (torch would not have created it)."""
        sd = super().state_dict()
        pending = [p for p in self._gf_pending if p in self._gf_first]
        if not pending:
            return sd
        never = {id(p) for p in pending if int(self._gf_first[p]) != 0}  # syncs, rarely
        self._gf_pending = {p for p in pending if id(p) in never}
        if not never:
            return sd
        index = {id(p): i for group, packed in zip(self.param_groups, sd["param_groups"])
                 for p, i in zip(group["params"], packed["params"])}
        state = dict(sd["state"])
        for pid in never:
            i = index.get(pid)
            entry = state.get(i)
            if entry is not None and "momentum_buffer" in entry:
                rest = {k: v for k, v in entry.items() if k != "momentum_buffer"}
                if rest:
                    state[i] = rest
                else:
                    del state[i]
        sd["state"] = state
        return sd

    # ---- state -------------------------------------------------------------------------

    def _init_group(self, group, params: List[Tensor], grads: List[Tensor], bufs: List[Tensor],
                    flags: List[Tensor], grad_copies) -> None:
        """Appends the group's params with a grad, their grads, buffers and first-step flags to
        the lists given, state created and checked.

        Separate list arguments, as in Adam: torch.compile runs an optimizer's _init_group
        eagerly, outside the graph, and carries over only what it appended to list arguments
        (dynamo's OptimizerVariable). Traced instead, the grad-layout checks met a dynamo bug
        on symbolic strides once a recompile made the shapes dynamic."""
        momentum = group["momentum"] != 0
        checked = self._checked_state
        new_flags: List[Tuple[Tensor, int]] = []
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError(
                    "gradfast.optim.SGD does not support sparse gradients; use torch.optim.SGD")
            if momentum:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    if not native_supported(p):
                        raise RuntimeError(self._unsupported_message(p, group))
                    buf = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["momentum_buffer"] = buf
                    new_flags.append((p, 1))
                elif p not in self._gf_first:
                    new_flags.append((p, 0))  # history from a checkpoint or a past step
            else:
                buf = None
            # The layout checks run once per (param, buffer): a steady-state step only
            # compares identities.
            seen = checked.get(p)
            if seen is None or seen[0] is not buf or seen[1] != p.data_ptr():
                if not native_supported(p):
                    raise RuntimeError(self._unsupported_message(p, group))
                if buf is not None:
                    buf = self._normalise_buffer(p, buf)
                    self.state[p]["momentum_buffer"] = buf
                checked[p] = (buf, p.data_ptr())
            g = kernel_grad(f"gradfast.optim.{type(self).__name__}", p, g, grad_copies)
            params.append(p)
            grads.append(g)
            if momentum:
                bufs.append(buf)
        if momentum:
            self._make_flags(new_flags)
            flags.extend(self._gf_first[p] for p in params)

    def _make_flags(self, new_flags: List[Tuple[Tensor, int]]) -> None:
        """First-step flags for params that have none: one small copy per device."""
        by_device: Dict[torch.device, List[Tuple[Tensor, int]]] = {}
        for p, value in new_flags:
            by_device.setdefault(p.device, []).append((p, value))
        for device, items in by_device.items():
            values = torch.tensor([v for _, v in items], dtype=torch.int32).to(device)
            for k, (p, v) in enumerate(items):
                self._gf_first[p] = values[k]
                if v:
                    self._gf_pending.add(p)

    @staticmethod
    def _normalise_buffer(p: Tensor, buf: Tensor) -> Tensor:
        """A buffer loaded from torch (another layout, dtype or device) in p's layout."""
        if (buf.dtype != p.dtype or buf.device != p.device or buf.stride() != p.stride()
                or buf.shape != p.shape):
            fixed = torch.empty_like(p)
            fixed.copy_(buf.reshape(p.shape))
            return fixed
        return buf

    # ---- step --------------------------------------------------------------------------

    def _group_work(self, group, use_plans: bool) -> Optional[WorkItem]:
        params_list = group["params"]
        grads_all = [p.grad for p in params_list]
        planned = self._planned_work(group, params_list, grads_all, use_plans)
        if planned is not None:
            return planned
        copies: List[Tuple[Tensor, Tensor]] = []
        lists = [], [], [], []
        self._init_group(group, *lists, copies)
        lists = _sgd.SgdLists(*lists)
        if not lists.params:
            return None
        parts = split(lists.params)
        host = None
        if not copies and use_plans:
            plan = GroupPlan(group, grads_all, lists,
                             [self.state.get(p) for p in lists.params], _STATE_KEYS,
                             {"momentum": group["momentum"]}, parts)
            self._plans[id(group)] = plan
            host = plan.host
        return WorkItem(group, lists, copies, parts, host)

    @staticmethod
    def _hyper(group) -> _sgd.SgdHyper:
        return _sgd.SgdHyper(float(group["momentum"]), float(group["dampening"]),
                             float(group["weight_decay"]), float(group["l1_weight_decay"]),
                             bool(group["nesterov"]), bool(group["maximize"]))

    def _update(self, item: WorkItem, device, idx, step: StepArgs, skipped,
                fused_kind: Optional[int] = None, norm_type: float = 2.0) -> Optional[Tensor]:
        lists = item.lists
        host = item.host
        total = None
        if fused_kind is not None:
            # The only work item, every grad of the step, on the CPU (one_call_kind): the
            # norm and the update in one native call.
            total = _sgd.sgd_step(lists, self._hyper(item.group), step, skipped, host,
                                  (fused_kind, norm_type))
        else:
            if idx is not None:
                lists = _sgd.SgdLists(*([lst[i] for i in idx] if lst else []
                                        for lst in lists))
                host = None
            _sgd.sgd_step_op(lists, self._hyper(item.group), step, skipped, host)
        if self._gf_pending and step.found_inf is None and not step.skip_nonfinite \
                and not compiling():
            # This step cannot have been skipped: its first-step flags are now clear.
            self._gf_pending.difference_update(lists.params)
        return total
