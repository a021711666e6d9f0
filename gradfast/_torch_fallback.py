"""torch's own algorithms, for the inputs the native kernels do not take.

Sparse gradients, tensor subclasses (DTensor, ...), tensors with gaps or overlaps in
memory, devices other than CPU and CUDA, and negative norm orders go through here. It is
torch 2.13's algorithm written with ops that exist since torch 2.4, so results are
identical to torch's whatever torch version is installed.
"""
from __future__ import annotations

from typing import List, Tuple

import torch


def norms(grads: List[torch.Tensor], norm_type: float) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """(total norm, [each tensor's norm, 0-d, on its own device and in its own dtype])."""
    first_device = grads[0].device
    per_tensor = [torch.linalg.vector_norm(g, norm_type) for g in grads]
    total = torch.linalg.vector_norm(
        torch.stack([n.to(first_device) for n in per_tensor]), norm_type
    )
    return total, per_tensor


def total_norm(grads: List[torch.Tensor], norm_type: float) -> torch.Tensor:
    return norms(grads, norm_type)[0]


def scale_(grads: List[torch.Tensor], coef: torch.Tensor) -> None:
    for g in grads:
        g.mul_(coef.to(g.device))


def clamp_(grads: List[torch.Tensor], clip_value: float) -> None:
    for g in grads:
        g.clamp_(min=-clip_value, max=clip_value)
