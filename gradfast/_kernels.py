"""Thin device dispatch onto the native entry points, for one (device, dtype) group.

Callers guarantee: a non-empty list of dense tensors, all of one dtype on one CPU or CUDA
device (see _tensor_lists.native_supported). Nothing here synchronises with a device.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch.autograd.graph import increment_version

from ._native import _C, DTYPE_CODES, MATH_DTYPE
from ._tensor_lists import (
    adam_device_list,
    agc_device_list,
    agc_workspace,
    adam_workspace,
    current_stream,
    device_list,
    has_duplicates,
    host_args,
    norm_workspace,
)


def _bump_versions(tensors: List[torch.Tensor]) -> None:
    """The kernels write through raw pointers: tell autograd, as torch's in-place ops do."""
    try:
        increment_version(tensors)
    except (TypeError, RuntimeError):  # older torch takes one tensor at a time
        for t in tensors:
            increment_version(t)


def group_norm(
    tensors: List[torch.Tensor], p: float, kind: int, max_norm: float,
    host: Optional[Tuple[List[int], List[int]]] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total norm in the group dtype, per-tensor norms in the math dtype, clip coefficient).

    The clip coefficient is torch's min(max_norm / (total + 1e-6), 1), in the math dtype.
    host: host_args(tensors) when the caller already has them (CPU only).
    """
    first = tensors[0]
    dtype, device = first.dtype, first.device
    math_dtype = MATH_DTYPE[dtype]
    per_tensor = torch.empty(len(tensors), dtype=math_dtype, device=device)
    total = torch.empty((), dtype=dtype, device=device)
    coef = torch.empty((), dtype=math_dtype, device=device)
    code = DTYPE_CODES[dtype]
    if first.is_cpu:
        ptrs, numels = host or host_args(tensors)
        _C.cpu_multi_norm(ptrs, numels, code, kind, p, per_tensor.data_ptr(), total.data_ptr(),
                          coef.data_ptr(), max_norm, torch.get_num_threads())
    else:
        dl = device_list(tensors)
        stream = current_stream(device)
        ws = norm_workspace(device, stream, dl.n, dl.n_chunks, dtype)
        _C.cuda_multi_norm(*dl.args(), code, kind, p, ws.data_ptr(), per_tensor.data_ptr(),
                           total.data_ptr(), coef.data_ptr(), max_norm, device.index, stream)
    return total, per_tensor, coef


def group_scale_(tensors: List[torch.Tensor], coef: torch.Tensor,
                 host: Optional[Tuple[List[int], List[int]]] = None) -> None:
    """tensors *= coef (a 0-d tensor of the group's math dtype on the group's device)."""
    first = tensors[0]
    code = DTYPE_CODES[first.dtype]
    if first.is_cpu:
        ptrs, numels = host or host_args(tensors)
        if has_duplicates(ptrs, numels):
            _scale_one_by_one(tensors, coef)
            return
        _C.cpu_multi_scale(ptrs, numels, code, coef.data_ptr(), torch.get_num_threads())
    else:
        dl = device_list(tensors)
        if dl.duplicates:
            _scale_one_by_one(tensors, coef)
            return
        _C.cuda_multi_scale(*dl.args(), code, coef.data_ptr(), first.device.index,
                            current_stream(first.device))
    _bump_versions(tensors)


def _scale_one_by_one(tensors: List[torch.Tensor], coef: torch.Tensor) -> None:
    # A tensor listed twice is scaled twice, in order, as torch's per-tensor mul_ does.
    for t in tensors:
        t.mul_(coef)


def group_clamp_(tensors: List[torch.Tensor], lo: float, hi: float) -> None:
    """tensors = clamp(tensors, lo, hi), NaN kept, in one pass."""
    first = tensors[0]
    code = DTYPE_CODES[first.dtype]
    if first.device.type == "cpu":
        ptrs, numels = host_args(tensors)
        _C.cpu_multi_clamp(ptrs, numels, code, lo, hi, torch.get_num_threads())
    else:
        _C.cuda_multi_clamp(*device_list(tensors).args(), code, lo, hi, first.device.index,
                            current_stream(first.device))
    _bump_versions(tensors)


def group_agc_cuda(params: List[torch.Tensor], grads: List[torch.Tensor], units: List[int],
                   kind: int, p: float, clip_factor: float, eps: float) -> Optional[torch.Tensor]:
    """Adaptive gradient clipping of one CUDA (device, dtype) group in at most two launches.

    params[i] and grads[i]: dense, non-empty, of the group's dtype on its device, in units of
    units[i] consecutive elements. Returns the number of clipped units (0-d int64 on the
    device), or None when a gradient is listed twice (the caller then uses torch's ops,
    which scale it once per occurrence).
    """
    first = grads[0]
    device, dtype = first.device, first.dtype
    dl = agc_device_list(params, grads, units)
    if dl.duplicates:
        return None
    stream = current_stream(device)
    ws = agc_workspace(device, stream, dl, dtype)
    clipped = torch.empty((), dtype=torch.int64, device=device)  # the kernel always writes it
    _C.cuda_agc(*dl.args(), DTYPE_CODES[dtype], kind, p, clip_factor, eps, ws.data_ptr(),
                clipped.data_ptr(), device.index, stream)
    _bump_versions(grads)
    return clipped


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _adam_scalars(lr, lr_t, beta1, beta2, eps, weight_decay, wd_mode, l1, maximize, amsgrad,
                  grad_scale, found_inf, total_ptr, total_code, clip, max_norm,
                  skip_nonfinite, max_norm_t, lib=_C):
    """(hyper, flags, control) structs of the native Adam entry points (csrc/bindings), as
    classes of `lib` (gradfast._C, or the simulator's copy of it)."""
    hyper = lib.AdamHyper(beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, l1=l1,
                         maximize=maximize)
    flags = lib.AdamFlags(amsgrad=amsgrad, wd=lib.WeightDecayMode(wd_mode), l1=l1 != 0.0,
                         unscale=grad_scale is not None)
    control = lib.StepControl(
        lr=lr, lr_ptr=_ptr(lr_t), lr_dtype=DTYPE_CODES[lr_t.dtype] if lr_t is not None else 0,
        grad_scale=_ptr(grad_scale), found_inf=_ptr(found_inf), total_norm=total_ptr,
        total_dtype=total_code, clip=clip, max_norm=max_norm, skip_nonfinite=skip_nonfinite,
        max_norm_ptr=_ptr(max_norm_t),
        max_norm_dtype=DTYPE_CODES[max_norm_t.dtype] if max_norm_t is not None else 0)
    return hyper, flags, control


def _bump_adam_versions(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                        amsgrad, unscaled) -> None:
    written = params + exp_avgs + exp_avg_sqs + (max_exp_avg_sqs if amsgrad else []) + steps
    if unscaled:  # GradScaler: the unscaled grads are written back
        written += grads
    _bump_versions(written)


def group_adam(
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
    skipped: Optional[torch.Tensor],
    max_norm_t: Optional[torch.Tensor] = None,
    host: Optional[Tuple[List[int], ...]] = None,
) -> None:
    """One fused Adam step over one (device, dtype) group, in one pass (one launch on CUDA).

    Every tensor argument is on the group's device: lr_t (fp32/fp64), grad_scale and
    found_inf (fp32), total (the global grad norm, any float dtype), skipped (int64). Steps
    are fp32 0-d tensors. max_norm_t, when given, is a device threshold (any float dtype)
    used instead of max_norm. Nothing here synchronises with the device.
    host: (param, exp_avg, exp_avg_sq, max_exp_avg_sq, step pointers, element counts) of
    CPU lists when the caller keeps them (gradfast.optim's step plans, which check the
    parameters' pointers every step); the grads' are always read.
    """
    first = params[0]
    code = DTYPE_CODES[first.dtype]
    hyper, flags, control = _adam_scalars(
        lr, lr_t, beta1, beta2, eps, weight_decay, wd_mode, l1, maximize, amsgrad, grad_scale,
        found_inf, _ptr(total), DTYPE_CODES[total.dtype] if total is not None else 0, clip,
        max_norm, skip_nonfinite, max_norm_t)
    if first.device.type == "cpu":
        if host is None:
            host = ([t.data_ptr() for t in params], [t.data_ptr() for t in exp_avgs],
                    [t.data_ptr() for t in exp_avg_sqs],
                    [t.data_ptr() for t in max_exp_avg_sqs] if amsgrad else [],
                    [t.data_ptr() for t in steps], [t.numel() for t in params])
        p_ptrs, m_ptrs, v_ptrs, vmax_ptrs, step_ptrs, numels = host
        _C.cpu_adam_step(
            p_ptrs, [t.data_ptr() for t in grads], m_ptrs, v_ptrs, vmax_ptrs, step_ptrs, numels,
            code, hyper, flags, control, _ptr(skipped), torch.get_num_threads())
    else:
        device = first.device
        dl = adam_device_list(
            (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps), amsgrad)
        stream = current_stream(device)
        ws = adam_workspace(device, stream, dl.n)
        _C.cuda_adam_step(*dl.args(), code, hyper, flags, control, _ptr(skipped),
                          ws.data_ptr(), device.index, stream)
    _bump_adam_versions(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, amsgrad,
                        grad_scale is not None)


def group_clip_adam(
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
    p: float,
    kind: int,
    clip: bool,
    max_norm: float,
    skip_nonfinite: bool,
    skipped: Optional[torch.Tensor],
    max_norm_t: Optional[torch.Tensor] = None,
    cooperative: bool = True,
) -> Tuple[torch.Tensor, int]:
    """The global norm of `grads` and the fused Adam step of one CUDA (device, dtype) group
    that holds every grad of the step, in one cooperative launch (opt-in, see
    gradfast.optim.adam): the norm is bitwise group_norm's, the update bitwise group_adam's
    with that norm as `total`.

    Returns (total, launches): the total norm (0-d, the grads' dtype, on the device) and
    the number of launches that ran, 1, or 2 when the device cannot launch cooperative
    kernels, the launch failed, or cooperative=False (the two-launch path then ran on the
    same outputs and workspaces). Nothing here synchronises with the device.
    """
    first = params[0]
    device, dtype = first.device, first.dtype
    code = DTYPE_CODES[dtype]
    total = torch.empty((), dtype=dtype, device=device)
    # The total's pointer is the kernel's own output (total): 0 here.
    hyper, flags, control = _adam_scalars(
        lr, lr_t, beta1, beta2, eps, weight_decay, wd_mode, l1, maximize, amsgrad, grad_scale,
        found_inf, 0, code, clip, max_norm, skip_nonfinite, max_norm_t)
    gl = device_list(grads)
    dl = adam_device_list(
        (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps), amsgrad)
    stream = current_stream(device)
    norm_ws = norm_workspace(device, stream, gl.n, gl.n_chunks, dtype)
    adam_ws = adam_workspace(device, stream, dl.n)
    launches = _C.cuda_clip_adam_step(
        *gl.args(), *dl.args(), code, kind, p, norm_ws.data_ptr(), total.data_ptr(), 0,
        hyper, flags, control, _ptr(skipped), adam_ws.data_ptr(), cooperative, device.index,
        stream)
    _bump_adam_versions(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, amsgrad,
                        grad_scale is not None)
    return total, launches
