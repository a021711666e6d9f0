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


def code(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else DTYPE_CODES[t.dtype]


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


def control(lib, s: StepArgs, total_code: int = 0):
    """lib.StepControl for s. total_code: the norm's dtype code when s.total is None because
    the kernel computes the norm itself (the one-launch clip + step)."""
    t = s.total
    return lib.StepControl(
        lr=s.lr, lr_ptr=ptr(s.lr_t), lr_dtype=code(s.lr_t), grad_scale=ptr(s.grad_scale),
        found_inf=ptr(s.found_inf), total_norm=ptr(t), total_dtype=code(t) or total_code,
        clip=s.clip, max_norm=s.max_norm, max_norm_ptr=ptr(s.max_norm_t),
        max_norm_dtype=code(s.max_norm_t), skip_nonfinite=s.skip_nonfinite)
