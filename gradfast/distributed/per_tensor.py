"""Per-parameter gradient norms across ranks, for GradMonitor's read-back steps.

Each rank has the norms of its local shards (local_norms); reduce_per_tensor_norms turns
them into every parameter's true norm with one more all-reduce of one fp64 number per
parameter, over the mesh dims the gradients are sharded or replicated on (never the
pipeline dims: stages hold different parameters). Each logical element is counted once
(placements.py). Non-finite values survive the reduction:
- SUM (finite p): a NaN or inf survives a sum;
- MAX (inf): NaN is sent as +inf and inf as the largest fp64 (no fp32/bf16/fp16 norm
  reaches it), then decoded;
- MIN (-inf): NaN is sent as -1 (below every norm), uncounted shards as +inf.
"""
from __future__ import annotations

import math
import sys
from typing import List

import torch
from torch.distributed.tensor import DTensor

from .._native.norm_kind import INF, L0, L1, L2, NEG_INF, parse_norm_type
from .partial_norms import indexed_norms, partial_kind
from .placements import Accounting, common_root, meshes_of, spanned_root_dims
from .identity_cache import IdentityCache
from .reduction import all_reduce_, group_of, reduce_op

__all__ = ["local_norms", "reduce_per_tensor_norms"]

_BIG = sys.float_info.max


def local_norms(grads: List[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """1-D fp64 norms of each gradient's local shard (an empty shard: 0, or inf for -inf),
    from the native norm kernel, aligned with grads; no communication, no host sync."""
    p = parse_norm_type(norm_type)
    local = [g._local_tensor if isinstance(g, DTensor) else g for g in grads]
    device = local[0].device
    out = torch.full((len(local),), math.inf if p == -math.inf else 0.0,
                     dtype=torch.float64, device=device)
    live = [i for i, t in enumerate(local) if t.numel()]
    for idx, norms in indexed_norms([local[i] for i in live], p):
        where = torch.tensor([live[j] for j in idx], device=device)
        out[where] = norms.to(device=device, dtype=torch.float64)
    return out


_REDUCTION = IdentityCache()  # (root, *grad meshes) -> (Accounting, process group or None)


def _reduction(grads: List[torch.Tensor]):
    """(Accounting, process group) of the mesh dims the grads span, or None when no grad
    is a DTensor (plain grads are replicas: already the same on every rank)."""
    meshes = meshes_of(grads)
    if not meshes:
        return None
    root = common_root(meshes, None)
    key = (root, *meshes)
    hit = _REDUCTION.get(key)
    if hit is not None:
        return hit
    dims = frozenset().union(*[spanned_root_dims(m, root) for m in meshes])
    free = frozenset(range(root.ndim)) - dims
    if not dims:
        group = None
    elif not free:
        group = group_of(root)
    else:
        names = root.mesh_dim_names
        if names is None:
            raise ValueError("gradfast: per-tensor norms over part of an unnamed root mesh")
        sub = root[tuple(names[d] for d in sorted(dims))]
        group = sub.get_group() if sub.ndim == 1 else sub._flatten(
            "_gradfast_" + "_".join(names[d] for d in sorted(dims))).get_group()
    return _REDUCTION.put(key, (Accounting(root, None, free_dims=free), group))


def _encode(x: torch.Tensor, kind: int) -> torch.Tensor:
    if kind == INF:
        return torch.where(x.isnan(), math.inf, torch.where(x.isinf(), _BIG, x))
    if kind == NEG_INF:
        return torch.where(x.isnan(), -1.0, x)
    return x


def _decode(x: torch.Tensor, kind: int) -> torch.Tensor:
    if kind == INF:
        return torch.where(x.isinf(), math.nan, torch.where(x == _BIG, math.inf, x))
    if kind == NEG_INF:
        return torch.where(x < 0, math.nan, x)
    return x


def reduce_per_tensor_norms(per_tensor: torch.Tensor, grads: List[torch.Tensor],
                            norm_type: float = 2.0) -> torch.Tensor:
    """Every parameter's global gradient norm from the norms of the local shards.

    per_tensor: 1-D norms of the local shards, aligned with grads (local_norms(grads), or
    GradMonitor's own norm pass on the local shards); grads: the gradients (DTensors and/or
    plain tensors, no None). Returns a 1-D tensor of per_tensor's dtype and device, the
    same on every rank of the reduction, after one all-reduce of len(grads) fp64 numbers
    (none when no grad is a DTensor). Every rank of the grads' meshes must call it.
    """
    p = parse_norm_type(norm_type)
    kind = partial_kind(p)
    red = _reduction(grads)
    if red is None or red[1] is None:
        return per_tensor
    acc, group = red
    plain = acc.plain_counted()
    mask = [acc.spec_counted(g._spec) if isinstance(g, DTensor) else plain for g in grads]
    x = per_tensor.to(torch.float64)
    keep = torch.tensor(mask, device=x.device)
    if kind == INF:
        contrib = torch.where(keep, x, 0.0)
    elif kind == NEG_INF:
        contrib = torch.where(keep, x, math.inf)
    elif kind in (L1, L0):
        contrib = torch.where(keep, x, 0.0)
    elif kind == L2:
        contrib = torch.where(keep, x * x, 0.0)
    else:
        contrib = torch.where(keep, x.pow(p), 0.0)
    buf = _encode(contrib, kind).contiguous()
    all_reduce_(buf, reduce_op(kind), group)
    total = _decode(buf, kind)
    if kind == L2:
        total = total.sqrt()
    elif kind not in (L1, L0, INF, NEG_INF):
        total = total.pow(1.0 / p)
    return total.to(per_tensor.dtype)
