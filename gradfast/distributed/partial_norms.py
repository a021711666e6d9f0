"""This rank's share of a global norm: the partial power sum of the local shards it counts.

The native multi-tensor norm kernel gives the per-tensor norms of the local shards of each
(device, dtype) group in one call; they are folded in fp64 into the partial that the
all-reduce combines: sum of norm**p for finite p > 0 (sum of norm for L1, of counts for
L0), max for inf, min for -inf. Empty shards are left out (they contribute nothing, and
so never raise for the infinity norms). Shards the native kernels do not take (sparse,
non-dense) use torch's vector_norm, one tensor at a time.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch

from .. import _ops
from .._norm_kind import INF, L0, L1, L2, LP, NEG_INF, norm_kind
from .._tensor_lists import all_native_supported, group_by_device_dtype


def partial_kind(p: float) -> int:
    """The fold of order p: norm_kind, with torch-only orders (negative p) folded as Lp."""
    kind = norm_kind(p)
    return LP if kind is None else kind


def identity(kind: int) -> float:
    return math.inf if kind == NEG_INF else 0.0


def per_tensor_norms(tensors: List[torch.Tensor], p: float,
                     native_ok: Optional[bool] = None) -> List[torch.Tensor]:
    """1-D tensors of per-tensor norms of non-empty local shards, one per (device, dtype)
    group, each computed in one native call where the kernels take the tensors.
    native_ok: all_native_supported(tensors) when the caller knows it already."""
    kind = norm_kind(p)
    out: List[torch.Tensor] = []
    if kind is None:
        native, other = [], tensors
    elif native_ok or (native_ok is None and all_native_supported(tensors)):
        native, other = tensors, []
    else:
        native = [t for t in tensors if all_native_supported((t,))]
        other = [t for t in tensors if not all_native_supported((t,))]
    for _, idx in group_by_device_dtype(native).items():
        # gradfast's native norm kernel; max_norm is unused here (coef ignored).
        _, per_tensor, _ = _ops.group_norm([native[i] for i in idx], p, kind, 1.0)
        out.append(per_tensor)
    if other:
        out.append(torch.stack([torch.linalg.vector_norm(t, p) for t in other]))
    return out


def fold(norms: List[torch.Tensor], kind: int, p: float,
         device: torch.device) -> torch.Tensor:
    """The partial (0-d fp64 on device) of the per-tensor norms."""
    if not norms:
        return torch.full((), identity(kind), dtype=torch.float64, device=device)
    x = torch.cat([n.to(device=device, dtype=torch.float64) for n in norms])
    if kind == INF:
        return x.max()
    if kind == NEG_INF:
        return x.min()
    if kind in (L1, L0):
        return x.sum()
    if kind == L2:
        return (x * x).sum()
    return x.pow(p).sum()


def local_partial(counted: List[torch.Tensor], p: float, device: torch.device,
                  native_ok: Optional[bool] = None) -> torch.Tensor:
    """This rank's partial over the local shards it counts (empty ones dropped here)."""
    live = [t for t in counted if t.numel() > 0]
    return fold(per_tensor_norms(live, p, native_ok), partial_kind(p), p, device)
