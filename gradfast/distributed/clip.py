"""The clip family on DTensor gradients (FSDP2, HSDP, tensor parallel) and across pipeline
stages: gradfast.clip's entry points branch here when a gradient is a DTensor or pp_mesh
is given.

One clipped step is: the native norm kernel on the local shards this rank counts
(placements.py, partial_norms.py), one all-reduce of 16 bytes over the root mesh
(reduction.py), the root and the clip coefficient on the device, and the native scale
kernel on every local shard. No per-tensor DTensor dispatch, no host sync (except
error_if_nonfinite=True, as torch).
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate

from .. import clip as _clip
from .._native import norm as _norm
from .._native.support import all_native_supported
from .._torch_fallback import clamp_, scale_
from .identity_cache import IdentityCache
from .partial_norms import local_partial, partial_kind
from .placements import Accounting, check_not_partial, common_root, meshes_of
from .reduction import global_norm, group_of

_ACCOUNTING = IdentityCache()  # (root, pp_mesh or None) -> Accounting


def _accounting(root: DeviceMesh, pp_mesh: Optional[DeviceMesh]) -> Accounting:
    hit = _ACCOUNTING.get((root, pp_mesh))
    return hit if hit is not None else _ACCOUNTING.put((root, pp_mesh), Accounting(root, pp_mesh))


def locals_of(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    """The local shards (plain tensors as they are); Partial gradients refused."""
    out = []
    for t in tensors:
        if isinstance(t, DTensor):
            check_not_partial(t._spec.placements)
            out.append(t._local_tensor)
        else:
            out.append(t)
    return out


def _default_device(root: DeviceMesh) -> torch.device:
    if root.device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(root.device_type)


def _result_dtype(local: List[torch.Tensor]) -> torch.dtype:
    dtype = local[0].dtype if local else torch.get_default_dtype()
    for t in local[1:]:
        if t.dtype is not dtype:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def total_norm(grads: List[torch.Tensor], p: float, pp_mesh: Optional[DeviceMesh]):
    """(global norm as a plain 0-d tensor, the one mesh of all grads or None, the non-empty
    local shards, whether the native kernels take them all).

    Every rank of the root mesh must call this (it runs one collective).
    """
    meshes = meshes_of(grads)
    if not meshes and pp_mesh is None:
        raise ValueError("gradfast.distributed: no DTensor gradient and no pp_mesh")
    root = common_root(meshes, pp_mesh)
    acc = _accounting(root, pp_mesh)
    plain_counted = acc.plain_counted()
    live, counted = [], []
    all_dtensor = True
    for g in grads:
        if type(g) is DTensor or isinstance(g, DTensor):
            t = g._local_tensor
            here = acc.spec_counted(g._spec)
        else:
            t, here, all_dtensor = g, plain_counted, False
        if t.numel():  # empty shards contribute nothing and are not scaled
            live.append(t)
            if here:
                counted.append(t)
    native = all_native_supported(live)
    device = live[0].device if live else (
        _local_device(grads[0]) if grads else _default_device(root))
    partial = local_partial(counted, p, device, native_ok=native)
    dtype = _result_dtype([_local(g) for g in grads]) if len(live) != len(grads) else (
        _result_dtype(live))
    total = global_norm(partial, partial_kind(p), p, group_of(root)).to(dtype)
    # Meshes built separately but equal (same ranks, layout and names) count as one.
    one_mesh = meshes[0] if meshes and all_dtensor and all(
        m is meshes[0] or m == meshes[0] for m in meshes[1:]) else None
    return total, one_mesh, live, native


def _local(t: torch.Tensor) -> torch.Tensor:
    return t._local_tensor if isinstance(t, DTensor) else t


def _local_device(t: torch.Tensor) -> torch.device:
    return _local(t).device


def _as_returned(total: torch.Tensor, mesh: Optional[DeviceMesh]) -> torch.Tensor:
    if mesh is None:
        return total
    return DTensor.from_local(total, mesh, [Replicate()] * mesh.ndim, run_check=False)


def get_total_norm(tensors: List[torch.Tensor], p: float, error_if_nonfinite: bool,
                   pp_mesh: Optional[DeviceMesh]) -> torch.Tensor:
    total, mesh, _, _ = total_norm(tensors, p, pp_mesh)
    if error_if_nonfinite:
        _clip._raise_if_nonfinite(total, p)
    return _as_returned(total, mesh)


def _scale_local(live: List[torch.Tensor], coef: torch.Tensor,
                 native: Optional[bool] = None) -> None:
    """live (non-empty local shards) *= coef, natively when the kernels take them all."""
    if not live:
        return
    if native is None:
        native = all_native_supported(live)
    if native:
        _clip._scale_groups(live, coef)
    else:
        scale_(live, coef)


def clip_grad_norm_(grads: List[torch.Tensor], max_norm: float, p: float,
                    error_if_nonfinite: bool, pp_mesh: Optional[DeviceMesh]) -> torch.Tensor:
    total, mesh, live, native = total_norm(grads, p, pp_mesh)
    if error_if_nonfinite:
        _clip._raise_if_nonfinite(total, p)
    _scale_local(live, _clip._coef_from_total(max_norm, total), native)
    return _as_returned(total, mesh)


def clip_grads_with_norm_(grads: List[torch.Tensor], max_norm: float,
                          total: torch.Tensor) -> None:
    """Scale local shards by min(max_norm / (total + 1e-6), 1). A DTensor total is read on
    this rank: a Replicate one as is, others (torch's Partial norms) reduced first."""
    if isinstance(total, DTensor):
        if all(pl.is_replicate() for pl in total._spec.placements):
            total = total._local_tensor
        else:
            total = total.full_tensor()
    live = [t for t in locals_of(grads) if t.numel()]
    _scale_local(live, _clip._coef_from_total(max_norm, total))


def clip_grad_value_(grads: List[torch.Tensor], clip_value: float) -> None:
    """Clamp every local shard in place: element-wise, so no communication."""
    local = [t for t in locals_of(grads) if t.numel() > 0]
    if not local:
        return
    groups = _clip.group_by_device_dtype(local)
    if not _clip._native_ok(local) or not _clip._clip_value_native_ok(clip_value, groups):
        clamp_(local, clip_value)
        return
    for _, idx in groups.items():
        _norm.clamp_([local[i] for i in idx], -clip_value, clip_value)
