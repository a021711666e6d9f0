"""torch's own algorithms, for the inputs the native kernels do not take.

Sparse gradients, tensor subclasses (DTensor, ...), tensors with gaps or overlaps in
memory, devices other than CPU and CUDA, and negative norm orders go through here. It is
torch 2.13's algorithm written with ops that exist since torch 2.4, so results are
identical to torch's whatever torch version is installed.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype, _has_foreach_support


def norms(grads: List[torch.Tensor], norm_type: float) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """(total norm, [each tensor's norm, 0-d, in input order, on its device, in its dtype]).

    torch's _get_total_norm (foreach=None), except for norm_type=0. The per-tensor norms
    are stacked in torch's order (its (device, dtype) grouping, not the input order): the
    final reduction rounds differently otherwise. For norm_type=0 the per-tensor counts of
    nonzero elements are summed, gradfast's documented L0, so the result does not depend
    on whether a grad took this path.
    """
    first_device = grads[0].device
    per_tensor: List[torch.Tensor] = [None] * len(grads)  # type: ignore[list-item]
    ordered: List[torch.Tensor] = []
    grouped = _group_tensors_by_device_and_dtype([grads], with_indices=True)
    for (device, _), ([device_grads], indices) in grouped.items():
        if _has_foreach_support(device_grads, device):
            group_norms = list(torch._foreach_norm(device_grads, norm_type))
        else:
            group_norms = [torch.linalg.vector_norm(g, norm_type) for g in device_grads]
        ordered.extend(group_norms)
        for i, n in zip(indices, group_norms):
            per_tensor[i] = n
    stacked = torch.stack([n.to(first_device) for n in ordered])
    if norm_type == 0:
        return stacked.sum(), per_tensor
    return torch.linalg.vector_norm(stacked, norm_type), per_tensor


def total_norm(grads: List[torch.Tensor], norm_type: float) -> torch.Tensor:
    return norms(grads, norm_type)[0]


def scale_(grads: List[torch.Tensor], coef: torch.Tensor) -> None:
    for g in grads:
        g.mul_(coef.to(g.device))


def clamp_(grads: List[torch.Tensor], clip_value: float) -> None:
    # clamp_min_ then clamp_max_, as torch's (foreach) path: same values and same errors.
    for g in grads:
        g.clamp_min_(-clip_value)
        g.clamp_max_(clip_value)
