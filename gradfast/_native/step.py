"""The per-step inputs every fused optimizer's kernels read (csrc/gradfast/step_control.h).

StepArgs holds them as torch sees them, numbers and tensors on the group's device; control()
turns them into the core's StepControl struct. Shared by every optimizer: a new optimizer
reuses both unchanged.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional

import torch

from .library import DTYPE_CODES


def ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


class StepArgs(NamedTuple):
    lr: float                             # the lr when lr_t is None
    lr_t: Optional[torch.Tensor]          # a Tensor lr (fp32/fp64, 0-d)
    grad_scale: Optional[torch.Tensor]    # GradScaler's scale (fp32): the kernel unscales
    found_inf: Optional[torch.Tensor]     # GradScaler's found_inf (fp32): nonzero skips
    total: Optional[torch.Tensor]         # the global grad norm (any float dtype)
    clip: bool                            # clip to the threshold (needs total)
    max_norm: float                       # the threshold when max_norm_t is None
    max_norm_t: Optional[torch.Tensor]    # a device threshold (any float dtype)
    skip_nonfinite: bool                  # skip the step when total is not finite

    # The op schemas carry a StepArgs as three lists, in this order.
    def tensors(self) -> List[Optional[torch.Tensor]]:
        return [self.lr_t, self.grad_scale, self.found_inf, self.total, self.max_norm_t]

    def scalars(self) -> List[float]:
        return [float(self.lr), float(self.max_norm)]

    def switches(self) -> List[bool]:
        return [bool(self.clip), bool(self.skip_nonfinite)]

    @classmethod
    def from_lists(cls, tensors, scalars, switches) -> "StepArgs":
        lr_t, grad_scale, found_inf, total, max_norm_t = tensors
        return cls(scalars[0], lr_t, grad_scale, found_inf, total, switches[0], scalars[1],
                   max_norm_t, switches[1])


STEP_SCHEMA = "Tensor?[] step_tensors, float[] step_scalars, bool[] step_switches"


_STRUCTS: dict = {}  # (lib, hyper type, hyper, unscale) -> the hyper's structs


def hyper_structs(lib, hyper, unscale: bool):
    """hyper.structs(lib, unscale) (an AdamHyper's or SgdHyper's core structs), built once
    per value: a group's hyperparameters rarely change between steps, and building two
    bound structs from keywords costs more than the lookup. The structs are never mutated
    (the kernels take them by value or const reference)."""
    key = (lib, type(hyper), hyper, unscale)
    got = _STRUCTS.get(key)
    if got is None:
        if len(_STRUCTS) >= 256:  # e.g. a scheduled beta: keep the cache bounded
            _STRUCTS.clear()
        got = _STRUCTS[key] = hyper.structs(lib, unscale)
    return got


def control(lib, s: StepArgs, total_code: int = 0, total: Optional[torch.Tensor] = None):
    """lib.StepControl for s. total_code: the norm's dtype code when s.total is None because
    the kernel computes the norm itself (the one-launch clip + step). total: the output the
    CPU entry points write the norm into first, in place of s.total (step_structs below)."""
    # Positional, in StepControl's field order (csrc/bindings/bind_step.cpp): lr, lr_ptr,
    # lr_dtype, grad_scale, found_inf, total_norm, total_dtype, clip, max_norm,
    # max_norm_ptr, max_norm_dtype, skip_nonfinite. One is built per (group, device) per
    # step, and keywords would cost more than the rest of the construction.
    lr_t, thr = s.lr_t, s.max_norm_t
    t = s.total if total is None else total
    return lib.StepControl(
        s.lr, ptr(lr_t), 0 if lr_t is None else DTYPE_CODES[lr_t.dtype],
        ptr(s.grad_scale), ptr(s.found_inf),
        ptr(t), total_code if t is None else DTYPE_CODES[t.dtype],
        s.clip, s.max_norm, ptr(thr), 0 if thr is None else DTYPE_CODES[thr.dtype],
        s.skip_nonfinite)


def step_structs(g, hyper, step: StepArgs, norm: Optional[tuple], name: str):
    """What an optimizer's step entry point passes the core, for group g (a TensorGroup):
    (hyper struct, flags struct, StepControl, total, norm kind, norm order, unscale).

    norm: (NormKind code, order) when the CPU entry point computes the global norm of the
    group's grads first (csrc/bindings/norm_first.h): total is then the new 0-d output it
    writes and the StepControl reads; None for a step whose total is given (total None,
    kind -1). A plain tuple: one step builds one per (group, device)."""
    if norm is not None and g.cuda:
        raise ValueError(f"{name}: norm= is for CPU groups")
    lib = g.lib
    unscale = step.grad_scale is not None
    h, f = hyper_structs(lib, hyper, unscale)
    if norm is None:
        total, kind, p = None, -1, 2.0
    else:
        total, (kind, p) = g.new(()), norm
    return h, f, control(lib, step, total=total), total, kind, p, unscale
