"""Argument checks of gradfast's optimizers: torch 2.13's, in torch's order and with torch's
messages, and those of gradfast's extras (shared by every fused optimizer)."""
from __future__ import annotations

import math
from typing import Any, Dict

from torch import Tensor

from .._native.norm_kind import parse_norm_type

# gradfast's extra keywords and their defaults (per parameter group, like every
# hyperparameter); a checkpoint of a torch optimizer has none of them.
EXTRA_DEFAULTS: Dict[str, Any] = {
    "max_grad_norm": None,
    "grad_norm_type": 2.0,
    "l1_weight_decay": 0.0,
    "skip_nonfinite": False,
}


def to_scalar(x):
    # torch.optim.optimizer._to_scalar: a 1-element tensor becomes 0-d, numbers stay.
    if isinstance(x, Tensor) and x.dim() != 0:
        return x.squeeze()
    return x


def check_lr(lr, foreach, capturable) -> None:
    if isinstance(lr, Tensor):
        if foreach and not capturable:
            raise ValueError(
                "lr as a Tensor is not supported for capturable=False and foreach=True")
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")


def check_adam_args(lr, betas, eps, weight_decay, foreach, capturable) -> tuple:
    """torch.optim.Adam's checks; returns betas as torch stores them."""
    check_lr(lr, foreach, capturable)
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
    for i in (0, 1):
        if isinstance(betas[i], Tensor):
            if not capturable and foreach:
                raise ValueError(
                    f"betas[{i}] as a Tensor is not supported for capturable=False and "
                    "foreach=True")
            if betas[i].numel() != 1:
                raise ValueError(f"Tensor betas[{i}] must be 1-element")
    return tuple(map(to_scalar, betas))


def check_extras(max_grad_norm, grad_norm_type, l1_weight_decay, skip_nonfinite) -> Dict[str, Any]:
    """gradfast's extras, normalised: max_grad_norm a float, a 1-element Tensor, or an object
    with a threshold(global_norm) method (gradfast.AutoClip)."""
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
    return {"max_grad_norm": max_grad_norm, "grad_norm_type": grad_norm_type,
            "l1_weight_decay": l1_weight_decay, "skip_nonfinite": bool(skip_nonfinite)}


def check_fused_flags(name: str, fused, foreach, differentiable) -> None:
    """torch's checks of fused/foreach/differentiable, then gradfast's refusal of
    differentiable=True (its step is a kernel autograd cannot differentiate through)."""
    if fused:
        if differentiable:
            raise RuntimeError("`fused` does not support `differentiable`")
        if foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
    if differentiable:
        raise RuntimeError(
            f"gradfast.optim.{name} does not support differentiable=True (its step is a "
            f"fused kernel that autograd cannot differentiate through); use "
            f"torch.optim.{name} for a differentiable optimizer")
