"""The step of parameters the fused kernels cannot take: CPU/CUDA parameters of a native
dtype that are not dense in memory (views with gaps, such as ``x[..., 0]``).

torch's own single-tensor (for-loop) Adam steps them, so their numbers are torch's. The
gradients it sees are prepared with gradfast's additions in gradfast's order: unscaled
under GradScaler (and written back unscaled, as the fused path does), scaled by the step's
clip coefficient, with the L1 term added (negated under ``maximize``, since torch negates
the whole gradient). A skipped step (GradScaler's found_inf, or a non-finite norm with
``skip_nonfinite``) is decided on the host: this path synchronises, the fused one does not.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor
from torch.optim.adam import _single_tensor_adam

__all__ = ["fallback_adam"]


def _state_of(p: Tensor, state: Dict, amsgrad: bool) -> None:
    if len(state) == 0:
        state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    elif not isinstance(state["step"], Tensor):
        state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32, device=p.device)
    if amsgrad and "max_exp_avg_sq" not in state:
        state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def fallback_adam(group: Dict, params: List[Tensor], states: Dict, *,
                  grad_scale: Optional[Tensor], found_inf: Optional[Tensor],
                  grad_norm: Optional[Tensor], threshold, skipped: Optional[Tensor]) -> None:
    """Step ``params`` (of ``group``, all with gradients) with torch's for-loop Adam.

    grad_norm: the step's unscaled global norm (when it clips or skips); threshold: the
    clip threshold (a float or a 0-d tensor) or None; skipped: the optimizer's skipped-step
    counter, incremented when this call skips (None when another call already counts it).
    """
    amsgrad = bool(group["amsgrad"])
    skip = found_inf is not None and bool(found_inf.ne(0).any())
    if group["skip_nonfinite"] and grad_norm is not None:
        skip = skip or not bool(torch.isfinite(grad_norm))
    if skip:
        if skipped is not None:
            skipped.add_(1)
        return
    coef = None
    if threshold is not None:
        coef = torch.clamp(threshold / (grad_norm + 1e-6), max=1.0)
    l1 = float(group["l1_weight_decay"])
    maximize = bool(group["maximize"])
    grads, exp_avgs, exp_avg_sqs, max_sqs, steps = [], [], [], [], []
    for p in params:
        g = p.grad
        if grad_scale is not None:
            g.div_(grad_scale.to(g.device))
        if coef is not None:
            g = g * coef.to(device=g.device, dtype=g.dtype)
        if l1 != 0.0:
            g = g + (-l1 if maximize else l1) * torch.sign(p)
        state = states[p]
        _state_of(p, state, amsgrad)
        grads.append(g)
        exp_avgs.append(state["exp_avg"])
        exp_avg_sqs.append(state["exp_avg_sq"])
        if amsgrad:
            max_sqs.append(state["max_exp_avg_sq"])
        steps.append(state["step"])
    beta1, beta2 = group["betas"]
    _single_tensor_adam(
        params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps, None, None, amsgrad=amsgrad,
        has_complex=False, beta1=beta1, beta2=beta2, lr=group["lr"],
        weight_decay=group["weight_decay"], eps=group["eps"], maximize=maximize,
        capturable=False, differentiable=False,
        decoupled_weight_decay=bool(group["decoupled_weight_decay"]))
