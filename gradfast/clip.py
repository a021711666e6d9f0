"""Drop-in replacements for torch.nn.utils' gradient clipping functions (torch 2.13).

Same signatures, defaults, return values and errors; the work is done by gradfast's
multi-tensor kernels: on CUDA one launch computes every norm of a (device, dtype) group
and the clip coefficient, and one more scales the gradients, with no host synchronisation.

One deliberate difference: for norm_type=0, torch 2.13 returns the number of tensors that
hold any nonzero; gradfast returns the number of nonzero elements (the true L0 "norm").
"""
from __future__ import annotations

import math
import types
import warnings
from typing import Iterable, List, Optional, Union

import torch

from . import _torch_fallback
from ._native import norm as _norm
from ._native.group import TensorGroup
from ._native.library import MATH_DTYPE
from ._native.norm_kind import check_empty, norm_kind, parse_norm_type
from ._native.op import compiling
from ._native.support import (_PLAIN_TYPES, all_native_supported, group_by_device_dtype,
                              single_group)

_tensor_or_tensors = Union[torch.Tensor, Iterable[torch.Tensor]]

__all__ = ["clip_grad_norm_", "clip_grad_norm", "get_total_norm", "clip_grads_with_norm_",
           "clip_grad_value_"]

_NONFINITE_MSG = (
    "The total norm of order {} for gradients from `parameters` is non-finite, so it cannot "
    "be clipped. To disable this error and scale the gradients by the non-finite norm anyway, "
    "set `error_if_nonfinite=False`"
)


_native_ok = all_native_supported


def _has_dtensor(tensors) -> bool:
    # Checked only where a tensor is not a plain one, so the single-process path pays nothing.
    return not all([type(t) in _PLAIN_TYPES for t in tensors]) and _dtensor_in(tensors)


def _dtensor_in(tensors) -> bool:
    import torch.distributed as dist
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor
    return any([isinstance(t, DTensor) for t in tensors])


def _coef_from_total(max_norm: float, total: torch.Tensor) -> torch.Tensor:
    return torch.clamp(max_norm / (total + 1e-6), max=1.0)


def _raise_if_nonfinite(total: torch.Tensor, p: float) -> None:
    # The one place gradfast may synchronise, exactly where torch does.
    if torch.logical_or(total.isnan(), total.isinf()):
        raise RuntimeError(_NONFINITE_MSG.format(p))


@torch.no_grad()
def get_total_norm(
    tensors: _tensor_or_tensors,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: Optional[bool] = None,
    *,
    pp_mesh=None,
) -> torch.Tensor:
    """Norm of an iterable of tensors, as if they were concatenated into one vector.

    Drop-in for torch.nn.utils.get_total_norm. ``foreach`` is accepted for compatibility.
    DTensors and ``pp_mesh`` (a DeviceMesh over pipeline stages): see gradfast.distributed.
    """
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    else:
        tensors = list(tensors)
    p = parse_norm_type(norm_type)
    native = norm_kind(p) is not None and _native_ok(tensors)
    if pp_mesh is not None or (not native and _has_dtensor(tensors)):
        from .distributed import clip as _dist
        return _dist.get_total_norm(tensors, p, error_if_nonfinite, pp_mesh)
    if len(tensors) == 0:
        return torch.tensor(0.0)
    if native:
        check_empty(tensors, p)
        total = _norm.total_norm(tensors, p, norm_kind(p), 1.0)[0]
    else:
        total = _torch_fallback.total_norm(tensors, p)
    if error_if_nonfinite:
        _raise_if_nonfinite(total, p)
    return total


def _scale_groups(grads: List[torch.Tensor], coef: torch.Tensor) -> None:
    for (device, dtype), idx in group_by_device_dtype(grads).items():
        group = [grads[i] for i in idx]
        if coef.dtype != dtype:
            # torch's grad.mul_(coef) with a 0-d grad and a 0-d coef of another dtype
            # computes in their promoted dtype (fp64 for an fp64 coef), not in the grad's
            # math dtype: leave those to torch so the rounding is the same.
            scalars = [g for g in group if g.dim() == 0]
            if scalars:
                _torch_fallback.scale_(scalars, coef)
                group = [g for g in group if g.dim() != 0]
                if not group:
                    continue
        _norm.scale_(group, coef.to(device=device, dtype=MATH_DTYPE[dtype]))


def _scale_by_coef(grads: List[torch.Tensor], coef: torch.Tensor) -> None:
    """grads *= coef (a 0-d tensor on any device), natively when every grad allows it."""
    if _native_ok(grads):
        _scale_groups(grads, coef)
    else:
        _torch_fallback.scale_(grads, coef)


@torch.no_grad()
def clip_grads_with_norm_(
    parameters: _tensor_or_tensors,
    max_norm: float,
    total_norm: torch.Tensor,
    foreach: Optional[bool] = None,
) -> None:
    """Scale gradients by min(max_norm / (total_norm + 1e-6), 1), in place.

    Drop-in for torch.nn.utils.clip_grads_with_norm_.
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    max_norm = float(max_norm)
    if len(grads) == 0:
        return
    if _has_dtensor(grads) or _has_dtensor([total_norm]):
        from .distributed import clip as _dist
        return _dist.clip_grads_with_norm_(grads, max_norm, total_norm)
    _scale_by_coef(grads, _coef_from_total(max_norm, total_norm))


@torch.no_grad()
def clip_grad_norm_(
    parameters: _tensor_or_tensors,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: Optional[bool] = None,
    *,
    pp_mesh=None,
) -> torch.Tensor:
    """Clip the gradient norm of an iterable of parameters, in place; return the total norm.

    Drop-in for torch.nn.utils.clip_grad_norm_: the norm is that of all gradients as one
    vector; gradients are multiplied by min(max_norm / (total + 1e-6), 1) on the device,
    without a host synchronisation (unless error_if_nonfinite=True, as in torch).
    DTensor grads and ``pp_mesh`` (a DeviceMesh over pipeline stages): one all-reduce of
    16 bytes, see gradfast.distributed.
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    else:
        is_generator = isinstance(parameters, types.GeneratorType)
        parameters = list(parameters)
        if is_generator and len(parameters) == 0:
            warnings.warn(
                "`parameters` is an empty generator, no gradient clipping will occur.",
                stacklevel=3,
            )
    # One .grad read per parameter (a DTensor parameter's costs about a microsecond).
    grads = [g for g in [q.grad for q in parameters] if g is not None]
    p = parse_norm_type(norm_type)
    max_norm = float(max_norm)
    native = norm_kind(p) is not None and _native_ok(grads)
    if pp_mesh is not None or (not native and _has_dtensor(grads)):
        from .distributed import clip as _dist
        return _dist.clip_grad_norm_(grads, max_norm, p, error_if_nonfinite, pp_mesh)
    if len(grads) == 0:
        return torch.tensor(0.0)
    if not native:
        total = _torch_fallback.total_norm(grads, p)
        if error_if_nonfinite:
            _raise_if_nonfinite(total, p)
        _torch_fallback.scale_(grads, _coef_from_total(max_norm, total))
        return total
    check_empty(grads, p)
    kind = norm_kind(p)
    if not compiling() and single_group(grads):
        # The common case, eager: one group, the calls made directly on one TensorGroup,
        # whose pointers (CPU) or device table (CUDA) both passes share.
        group = TensorGroup(grads)
        total, _, coef = _norm.group_norm(group, kind, p, max_norm, per_tensor=False)
        if error_if_nonfinite:
            _raise_if_nonfinite(total, p)
        _norm.group_scale_(group, coef)
        return total
    total, coef, _ = _norm.total_norm(grads, p, kind, max_norm)
    if error_if_nonfinite:
        _raise_if_nonfinite(total, p)
    if coef is not None:
        _norm.scale_(grads, coef)
    else:
        _scale_groups(grads, _coef_from_total(max_norm, total))
    return total


def clip_grad_norm(parameters: _tensor_or_tensors, max_norm: float, norm_type: float = 2.0,
                   error_if_nonfinite: bool = False, foreach: Optional[bool] = None) -> torch.Tensor:
    """Deprecated alias of clip_grad_norm_, as in torch."""
    warnings.warn(
        "`torch.nn.utils.clip_grad_norm` is now deprecated in favor of "
        "`torch.nn.utils.clip_grad_norm_`.",
        FutureWarning,
        stacklevel=2,
    )
    return clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite, foreach)


@torch.no_grad()
def clip_grad_value_(
    parameters: _tensor_or_tensors,
    clip_value: float,
    foreach: Optional[bool] = None,
) -> None:
    """Clamp every gradient to [-clip_value, clip_value], in place, in one pass.

    Drop-in for torch.nn.utils.clip_grad_value_.
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    clip_value = float(clip_value)
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    if _has_dtensor(grads):
        from .distributed import clip as _dist
        return _dist.clip_grad_value_(grads, clip_value)
    groups = group_by_device_dtype(grads)
    if not _native_ok(grads) or not _clip_value_native_ok(clip_value, groups):
        _torch_fallback.clamp_(grads, clip_value)
        return
    for _, idx in groups.items():
        _norm.clamp_([grads[i] for i in idx], -clip_value, clip_value)


def _clip_value_native_ok(clip_value: float, groups) -> bool:
    # torch turns every gradient into NaN for a NaN clip value and refuses a finite one
    # that a grad dtype cannot hold ("value cannot be converted to type ... without
    # overflow"): both are left to torch.
    if math.isnan(clip_value):
        return False
    return math.isinf(clip_value) or all(
        abs(clip_value) <= torch.finfo(dtype).max for _, dtype in groups)
