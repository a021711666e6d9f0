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
from typing import List, Optional, Tuple

import torch

from .._native import norm as _norm
from .._native.norm_kind import INF, L0, L1, L2, LP, NEG_INF, norm_kind
from .._native.support import all_native_supported, group_by_device_dtype


def partial_kind(p: float) -> int:
    """The fold of order p: norm_kind, with torch-only orders (negative p) folded as Lp."""
    kind = norm_kind(p)
    return LP if kind is None else kind


def identity(kind: int) -> float:
    return math.inf if kind == NEG_INF else 0.0


def indexed_norms(tensors: List[torch.Tensor], p: float,
                  native_ok: Optional[bool] = None) -> List[Tuple[List[int], torch.Tensor]]:
    """[(indices into tensors, their 1-D norms)] for non-empty local shards: one native
    call per (device, dtype) group where the kernels take the tensors, torch's
    vector_norm for the others. native_ok: all_native_supported(tensors) when known."""
    kind = norm_kind(p)
    if kind is None:
        native, other = [], list(range(len(tensors)))
    elif native_ok or (native_ok is None and all_native_supported(tensors)):
        native, other = list(range(len(tensors))), []
    else:
        ok = [all_native_supported((t,)) for t in tensors]
        native = [i for i, good in enumerate(ok) if good]
        other = [i for i, good in enumerate(ok) if not good]
    out: List[Tuple[List[int], torch.Tensor]] = []
    for _, idx in group_by_device_dtype([tensors[i] for i in native]).items():
        group = [native[j] for j in idx]
        # gradfast's native norm kernel; its clip coefficient (max_norm 1.0) is unused.
        _, per_tensor, _ = _norm.norm([tensors[i] for i in group], p, kind, 1.0)
        out.append((group, per_tensor))
    if other:
        out.append((other, torch.stack([torch.linalg.vector_norm(tensors[i], p)
                                        for i in other])))
    return out


def per_tensor_norms(tensors: List[torch.Tensor], p: float,
                     native_ok: Optional[bool] = None) -> List[torch.Tensor]:
    """The norm vectors of indexed_norms (in no particular order)."""
    return [norms for _, norms in indexed_norms(tensors, p, native_ok)]


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
