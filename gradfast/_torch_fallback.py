"""torch's own algorithms, for the inputs the native kernels do not take.

Sparse gradients, tensor subclasses (DTensor, ...), tensors with gaps or overlaps in
memory, devices other than CPU and CUDA, and negative norm orders go through here. It is
torch 2.13's algorithm written with ops that exist since torch 2.4, so results are
identical to torch's whatever torch version is installed.
"""
from __future__ import annotations

from typing import List

import torch


def total_norm(grads: List[torch.Tensor], norm_type: float) -> torch.Tensor:
    first_device = grads[0].device
    norms = [torch.linalg.vector_norm(g, norm_type) for g in grads]
    return torch.linalg.vector_norm(
        torch.stack([n.to(first_device) for n in norms]), norm_type
    )


def scale_(grads: List[torch.Tensor], coef: torch.Tensor) -> None:
    for g in grads:
        g.mul_(coef.to(g.device))


def clamp_(grads: List[torch.Tensor], clip_value: float) -> None:
    # clamp_min_ then clamp_max_, as torch's (foreach) path: same values and same errors.
    for g in grads:
        g.clamp_min_(-clip_value)
        g.clamp_max_(clip_value)
