"""torch.library custom ops over the native kernels, so torch.compile can trace gradfast.

In eager mode gradfast calls the kernels directly: the dispatcher round trip of a custom
op costs tens of microseconds per call, which is most of a small model's step. Under
torch.compile the registered ops (with fake implementations for shape propagation) are
used instead, and compiled graphs call the same kernels.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from . import _kernels
from ._native import MATH_DTYPE


@torch.library.custom_op("gradfast::group_norm", mutates_args=())
def _group_norm_op(
    tensors: List[torch.Tensor], p: float, kind: int, max_norm: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _kernels.group_norm(tensors, p, kind, max_norm)


@_group_norm_op.register_fake
def _(tensors, p, kind, max_norm):
    first = tensors[0]
    math_dtype = MATH_DTYPE[first.dtype]
    return (
        first.new_empty((), dtype=first.dtype),
        first.new_empty((len(tensors),), dtype=math_dtype),
        first.new_empty((), dtype=math_dtype),
    )


@torch.library.custom_op("gradfast::group_scale_", mutates_args=("tensors",))
def _group_scale_op(tensors: List[torch.Tensor], coef: torch.Tensor) -> None:
    _kernels.group_scale_(tensors, coef)


@_group_scale_op.register_fake
def _(tensors, coef):
    return None


@torch.library.custom_op("gradfast::group_clamp_", mutates_args=("tensors",))
def _group_clamp_op(tensors: List[torch.Tensor], lo: float, hi: float) -> None:
    _kernels.group_clamp_(tensors, lo, hi)


@_group_clamp_op.register_fake
def _(tensors, lo, hi):
    return None


def compiling() -> bool:
    return torch.compiler.is_compiling()


def group_norm(tensors, p, kind, max_norm):
    if compiling():
        return _group_norm_op(tensors, p, kind, max_norm)
    return _kernels.group_norm(tensors, p, kind, max_norm)


def group_scale_(tensors, coef):
    if compiling():
        return _group_scale_op(tensors, coef)
    return _kernels.group_scale_(tensors, coef)


def group_clamp_(tensors, lo, hi):
    if compiling():
        return _group_clamp_op(tensors, lo, hi)
    return _kernels.group_clamp_(tensors, lo, hi)


@torch.library.custom_op(
    "gradfast::adam_step_",
    mutates_args=("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "steps",
                  "skipped"),
)
def _adam_step_op(
    params: List[torch.Tensor],
    grads: List[torch.Tensor],
    exp_avgs: List[torch.Tensor],
    exp_avg_sqs: List[torch.Tensor],
    max_exp_avg_sqs: List[torch.Tensor],
    steps: List[torch.Tensor],
    lr: float,
    lr_t: Optional[torch.Tensor],
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    wd_mode: int,
    l1: float,
    maximize: bool,
    amsgrad: bool,
    grad_scale: Optional[torch.Tensor],
    found_inf: Optional[torch.Tensor],
    total: Optional[torch.Tensor],
    clip: bool,
    max_norm: float,
    skip_nonfinite: bool,
    skipped: List[torch.Tensor],
    max_norm_t: Optional[torch.Tensor],
) -> None:
    _kernels.group_adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, lr_t,
                        beta1, beta2, eps, weight_decay, wd_mode, l1, maximize, amsgrad,
                        grad_scale, found_inf, total, clip, max_norm, skip_nonfinite,
                        skipped[0] if skipped else None, max_norm_t)


@_adam_step_op.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, lr_t, beta1, beta2,
      eps, weight_decay, wd_mode, l1, maximize, amsgrad, grad_scale, found_inf, total, clip,
      max_norm, skip_nonfinite, skipped, max_norm_t):
    return None


def group_adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, lr_t, beta1,
               beta2, eps, weight_decay, wd_mode, l1, maximize, amsgrad, grad_scale, found_inf,
               total, clip, max_norm, skip_nonfinite, skipped, max_norm_t=None, host=None):
    """The fused Adam step of one (device, dtype) group (see _kernels.group_adam)."""
    if compiling():
        return _adam_step_op(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr,
                             lr_t, beta1, beta2, eps, weight_decay, wd_mode, l1, maximize,
                             amsgrad, grad_scale, found_inf, total, clip, max_norm,
                             skip_nonfinite, [skipped] if skipped is not None else [],
                             max_norm_t)
    return _kernels.group_adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                               lr, lr_t, beta1, beta2, eps, weight_decay, wd_mode, l1, maximize,
                               amsgrad, grad_scale, found_inf, total, clip, max_norm,
                               skip_nonfinite, skipped, max_norm_t, host)
