"""torch's own algorithms, for the inputs the native kernels do not take.

Sparse gradients, tensor subclasses (DTensor, ...), tensors with gaps or overlaps in
memory, devices other than CPU and CUDA, and negative norm orders go through here. It is
torch 2.13's algorithm written with ops that exist since torch 2.4, so results are
identical to torch's whatever torch version is installed.
"""
from __future__ import annotations

from typing import List

import torch
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype, _has_foreach_support


def total_norm(grads: List[torch.Tensor], norm_type: float) -> torch.Tensor:
    """torch's _get_total_norm (foreach=None), except for norm_type=0.

    The per-tensor norms are stacked in torch's order (its (device, dtype) grouping, not
    the input order): the final reduction rounds differently otherwise. For norm_type=0
    the per-tensor counts of nonzero elements are summed, gradfast's documented L0,
    so the result does not depend on whether a grad took this path.
    """
    first_device = grads[0].device
    norms: List[torch.Tensor] = []
    for (device, _), ([device_grads], _) in _group_tensors_by_device_and_dtype([grads]).items():
        if _has_foreach_support(device_grads, device):
            norms.extend(torch._foreach_norm(device_grads, norm_type))
        else:
            norms.extend(torch.linalg.vector_norm(g, norm_type) for g in device_grads)
    stacked = torch.stack([n.to(first_device) for n in norms])
    if norm_type == 0:
        return stacked.sum()
    return torch.linalg.vector_norm(stacked, norm_type)


def scale_(grads: List[torch.Tensor], coef: torch.Tensor) -> None:
    for g in grads:
        g.mul_(coef.to(g.device))


def clamp_(grads: List[torch.Tensor], clip_value: float) -> None:
    # clamp_min_ then clamp_max_, as torch's (foreach) path: same values and same errors.
    for g in grads:
        g.clamp_min_(-clip_value)
        g.clamp_max_(clip_value)
