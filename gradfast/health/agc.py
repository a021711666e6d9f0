"""Unit-wise adaptive gradient clipping (AGC, Brock et al. 2021).

For every unit of every parameter (a row along dim 0 of a weight with ndim > 1: an output
neuron of nn.Linear, an output filter of nn.ConvNd, one gate row of an LSTM weight; or the
whole tensor for biases, 0-d and 1-d parameters) the gradient is rescaled so that its norm
is at most ``clip_factor * max(||unit of the parameter||, eps)``:

    mn = max(||w||, eps) * clip_factor
    g  = g if ||g|| < mn else g * mn / max(||g||, 1e-6)

This is the formula of the usual PyTorch reference (timm.utils.adaptive_clip_grad), with
PyTorch's weight layout convention (output dimension first). ConvTranspose weights store
the input channels first; as in the reference, their units are then input channels.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Tuple, Union

import torch

from .._native.agc import group_agc
from .._native.library import CUDA_COMPILED
from .._native.norm_kind import norm_kind, parse_norm_type
from .._native.support import group_by_device_dtype, native_supported

__all__ = ["adaptive_clip_grad_"]


def _unit_size(t: torch.Tensor) -> Optional[int]:
    """Elements per unit when t's units are consecutive blocks of its memory, else None."""
    if not native_supported(t):
        return None
    if t.dim() <= 1:
        return t.numel()
    rows = t.shape[0]
    if rows == 0:
        return 0
    unit = t.numel() // rows
    if rows > 1 and t.stride(0) != unit:
        return None  # dim 0 is not the outermost dimension in memory
    return unit


def _unitwise_norm(x: torch.Tensor, p: float) -> torch.Tensor:
    if x.dim() <= 1:
        return torch.linalg.vector_norm(x, p)
    return torch.linalg.vector_norm(x, p, dim=tuple(range(1, x.dim())), keepdim=True)


def _agc_torch(params: List[torch.Tensor], grads: List[torch.Tensor], clip_factor: float,
               eps: float, p: float) -> torch.Tensor:
    """The same computation with torch ops (any device, layout or subclass); no host sync."""
    pn = [_unitwise_norm(x, p) for x in params]
    gn = [_unitwise_norm(g, p) for g in grads]
    max_norm = torch._foreach_clamp_min(pn, eps)
    torch._foreach_mul_(max_norm, clip_factor)
    ratio = torch._foreach_div(max_norm, torch._foreach_clamp_min(gn, 1e-6))
    device = grads[0].device
    counts = []
    for g, n, m, r in zip(grads, gn, max_norm, ratio):
        keep = n < m
        g.mul_(torch.where(keep, torch.ones_like(r), r))
        counts.append(torch.logical_not(keep).sum().to(device))
    return torch.stack(counts).sum()


@torch.no_grad()
def adaptive_clip_grad_(
    parameters: Union[torch.Tensor, Iterable[torch.Tensor]],
    clip_factor: float = 0.01,
    eps: float = 1e-3,
    norm_type: float = 2.0,
) -> torch.Tensor:
    """Unit-wise adaptive gradient clipping of ``parameters``' gradients, in place.

    Args:
        parameters: a tensor or an iterable of tensors with ``.grad`` (the parameters
            themselves are read: AGC compares each gradient unit with its weight unit).
        clip_factor: lambda in the paper; the largest allowed ratio ||grad|| / ||weight||
            per unit (0.01 is the NFNet default for large batches; try 0.01-0.16).
        eps: floor of the weight-unit norm, so units initialised at zero can still move.
        norm_type: order of the unit norms (2 in the paper).

    Returns:
        the number of units whose gradient was scaled down, a 0-d int64 tensor on the
        first gradient's device (tensor(0) on the CPU when there is no gradient).

    Each (device, dtype) group of dense gradients is clipped natively: on the CPU by one
    call (unit norms, factors and scaling fused, multi-threaded, vectorised), on a CUDA
    device by at most two kernel launches (unit norms, factors, the count and the scaling
    of units up to 8192 elements in the first; the scaling of longer units in the second),
    deterministic and CUDA-graph capturable. Other inputs (layouts whose dim 0 is not
    outermost in memory; tensor subclasses; a parameter and gradient of different dtypes;
    negative norm orders; a gradient listed twice; CUDA tensors in a build without
    gradfast's CUDA kernels) go through an equivalent sequence of torch ops. No path
    synchronises with the device.
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    pairs = [(q.detach(), q.grad.detach()) for q in parameters if q.grad is not None]
    if not pairs:
        return torch.tensor(0, dtype=torch.int64)
    p = parse_norm_type(norm_type)
    kind = norm_kind(p)
    clip_factor, eps = float(clip_factor), float(eps)
    first_device = pairs[0][1].device

    native: List[Tuple[torch.Tensor, torch.Tensor, int]] = []
    other: List[Tuple[torch.Tensor, torch.Tensor]] = []
    for w, g in pairs:
        unit = _unit_size(g)
        if (kind is not None and unit is not None and (g.is_cpu or (g.is_cuda and CUDA_COMPILED))
                and w.dtype == g.dtype and w.device == g.device and _unit_size(w) == unit):
            if g.numel() > 0:
                native.append((w, g, unit))
        else:
            other.append((w, g))

    counts = []
    if native:
        for (device, dtype), idx in group_by_device_dtype([g for _, g, _ in native]).items():
            group = [native[i] for i in idx]
            clipped = group_agc([w for w, _, _ in group], [g for _, g, _ in group],
                                [u for _, _, u in group], kind, p, clip_factor, eps)
            if clipped is None:  # a gradient listed twice: torch's ops, in order
                other += [(w, g) for w, g, _ in group]
            else:
                counts.append(clipped.to(first_device))
    if other:
        counts.append(_agc_torch([w for w, _ in other], [g for _, g in other], clip_factor,
                                 eps, p).to(first_device))
    return counts[0] if len(counts) == 1 else torch.stack(counts).sum()
