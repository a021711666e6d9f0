"""The hooks gradfast.optim's Adam step calls for DTensor parameters and pipeline stages.

- local_lists: a DTensor parameter's local shards (param, grad, moments) for the kernels,
  its state created or normalised as DTensors with the parameter's spec (optim_state.py);
- global_norm: the pre-clip global norm of every grad of the optimizer, over all ranks and
  pipeline stages, from the clip family's single all-reduce (clip.total_norm), so a
  clipped step is: norm kernels, one all-reduce, update kernels.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from .._native.support import native_supported
from .clip import total_norm
from .optim_state import init_state, local_grad, normalise_state


def any_dtensor(param_groups) -> bool:
    return any(isinstance(p, DTensor) for g in param_groups for p in g["params"])


def local_lists(name: str, p: DTensor, g: Tensor, state: Dict[str, Any], amsgrad: bool,
                checked: Dict, grad_copies: List[Tuple[Tensor, Tensor]]):
    """(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq or None, step) local tensors."""
    pl = p._local_tensor
    if len(state) == 0:
        if not native_supported(pl):
            raise RuntimeError(f"{name}: the local shard of a DTensor parameter is not dense "
                               f"or of a supported dtype/device ({pl.dtype}, {pl.device})")
        init_state(p, state, amsgrad)
    seen = checked.get(p)
    if (seen is None or seen[0] is not state["step"] or seen[1] is not state.get("exp_avg")
            or seen[2] is not state.get("exp_avg_sq")
            or (amsgrad and seen[3] is not state.get("max_exp_avg_sq"))
            or seen[4] != pl.data_ptr()):
        if not native_supported(pl):
            raise RuntimeError(f"{name}: the local shard of a DTensor parameter is not dense")
        normalise_state(p, state, amsgrad)
        checked[p] = (state["step"], state["exp_avg"], state["exp_avg_sq"],
                      state["max_exp_avg_sq"] if amsgrad else None, pl.data_ptr())
    gl = local_grad(p, g, name)
    if gl.dtype != pl.dtype or gl.device != pl.device:
        raise RuntimeError(f"{name}: a gradient of dtype {gl.dtype} on {gl.device} for a "
                           f"parameter of dtype {pl.dtype} on {pl.device}")
    if gl.stride() != pl.stride() or not native_supported(gl):
        copy = torch.empty_like(pl)
        copy.copy_(gl)
        grad_copies.append((gl, copy))
        gl = copy
    return (pl, gl, state["exp_avg"]._local_tensor, state["exp_avg_sq"]._local_tensor,
            state["max_exp_avg_sq"]._local_tensor if amsgrad else None, state["step"])


def global_norm(param_groups, norm_type: float, pp_mesh) -> Tensor:
    """The global norm (plain 0-d) of every gradient of these groups, on all ranks."""
    grads = [p.grad for g in param_groups for p in g["params"] if p.grad is not None]
    return total_norm(grads, norm_type, pp_mesh)[0]
