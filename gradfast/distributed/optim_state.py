"""gradfast.optim on DTensor parameters (FSDP2, tensor parallel): state and local views.

The fused kernels run on local shards. State tensors stay DTensors with the parameter's
spec, as torch's own Adam keeps them, so torch.distributed.checkpoint (get/set
optimizer_state_dict, dcp.save/load, resharding) sees what it expects; the step count is a
plain fp32 0-d tensor, as in torch's fused Adam. Only the local tensors reach the kernels.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor, distribute_tensor

from .placements import check_not_partial

_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def is_dtensor(t: Optional[Tensor]) -> bool:
    return isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    return t._local_tensor if isinstance(t, DTensor) else t


def _same_spec(a: DTensor, b: DTensor) -> bool:
    return a._spec.mesh == b._spec.mesh and a._spec.placements == b._spec.placements


def local_grad(p: DTensor, g: Tensor, name: str) -> Tensor:
    """The local shard of p's gradient, which must be a DTensor laid out as p."""
    if not isinstance(g, DTensor):
        raise RuntimeError(f"{name}: a DTensor parameter has a plain {type(g).__name__} "
                           "gradient; expected a DTensor with the parameter's placements")
    check_not_partial(g._spec.placements)
    if not _same_spec(p, g):
        raise RuntimeError(
            f"{name}: a gradient with placements {g.placements} on {g.device_mesh} for a "
            f"parameter with placements {p.placements} on {p.device_mesh}; redistribute the "
            "gradient to the parameter's layout first")
    return g._local_tensor


def as_param_layout(p: DTensor, t: Tensor) -> DTensor:
    """A state tensor in p's layout: DTensors are redistributed (resharded checkpoints
    load through here), plain tensors of p's full shape are sliced locally (each rank
    keeps its own shard, no communication: src_data_rank=None)."""
    if isinstance(t, DTensor):
        if _same_spec(p, t):
            out = t
        else:
            out = t.redistribute(p.device_mesh, p.placements)
    else:
        out = distribute_tensor(t.reshape(p.shape).to(p._local_tensor.device), p.device_mesh,
                                p.placements, src_data_rank=None)
    loc = out._local_tensor
    pl = p._local_tensor
    if loc.dtype != pl.dtype or loc.stride() != pl.stride() or loc.device != pl.device:
        fixed = torch.empty_like(pl)
        fixed.copy_(loc)
        out = DTensor.from_local(fixed, p.device_mesh, p.placements, run_check=False,
                                 shape=p.shape, stride=p.stride())
    return out


def init_state(p: DTensor, state: Dict[str, Any], amsgrad: bool) -> None:
    """Fresh state for a DTensor parameter: DTensor moments with p's spec (zeros of its
    local shard's layout) and a plain fp32 step on its device."""
    state["step"] = torch.zeros((), dtype=torch.float32, device=p._local_tensor.device)
    for key in _MOMENTS if amsgrad else _MOMENTS[:2]:
        state[key] = DTensor.from_local(
            torch.zeros_like(p._local_tensor, memory_format=torch.preserve_format),
            p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride())


def normalise_state(p: DTensor, state: Dict[str, Any], amsgrad: bool) -> None:
    """State loaded from a checkpoint (or from torch's Adam) into the fused layout."""
    step = state.get("step")
    dev = p._local_tensor.device
    if isinstance(step, DTensor):
        step = step.full_tensor()
    if not isinstance(step, Tensor):
        state["step"] = torch.tensor(float(step if step is not None else 0.0),
                                     dtype=torch.float32, device=dev)
    elif step.dtype != torch.float32 or step.device != dev or step.dim() != 0:
        state["step"] = step.detach().reshape(()).to(device=dev, dtype=torch.float32)
    for key in _MOMENTS if amsgrad else _MOMENTS[:2]:
        t = state.get(key)
        if t is None:
            state[key] = DTensor.from_local(torch.zeros_like(p._local_tensor), p.device_mesh,
                                            p.placements, run_check=False, shape=p.shape,
                                            stride=p.stride())
        else:
            state[key] = as_param_layout(p, t)
