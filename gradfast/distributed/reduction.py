"""The one collective of a distributed norm: an all-reduce of a two-number buffer.

buffer = [partial, non-finite flag] in fp64 on the gradients' device, reduced over the
root mesh's process group on the current stream (c10d's default), with no host sync:
- SUM for power sums (L1, L2, Lp, L0 counts); NaN survives a sum by itself, the flag is
  carried anyway so every order reads it the same way;
- MAX for the inf norm and MIN for -inf, which may drop a NaN (gloo's and NCCL's max/min
  are not NaN-propagating), hence the flag: 1 where a rank saw a NaN; for MIN it is sent
  negated, so that one MIN reduces both numbers.
Then the root (x ** (1/p)) and the NaN are applied on the device. Every rank receives the
same reduced bytes and runs the same ops, so the norm is bitwise identical on every rank.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from .._native.norm_kind import INF, L0, L1, L2, NEG_INF

_GROUPS: Dict[int, Tuple[DeviceMesh, object]] = {}


def group_of(root: DeviceMesh):
    """One process group spanning every rank of root (created once, then cached)."""
    hit = _GROUPS.get(id(root))
    if hit is not None and hit[0] is root:
        return hit[1]
    if root.size() == dist.get_world_size():
        group = dist.group.WORLD
    elif root.ndim == 1:
        group = root.get_group()
    else:
        group = root._flatten("_gradfast_norm").get_group()
    _GROUPS[id(root)] = (root, group)
    return group


def reduce_op(kind: int):
    if kind == INF:
        return dist.ReduceOp.MAX
    if kind == NEG_INF:
        return dist.ReduceOp.MIN
    return dist.ReduceOp.SUM


def pack(partial: torch.Tensor, kind: int) -> torch.Tensor:
    """[partial, flag] (fp64, 2 elements) for reduce_op(kind)."""
    flag = partial.isnan().to(torch.float64)
    if kind == NEG_INF:
        flag = -flag
    return torch.stack([torch.where(partial.isnan(), 0.0, partial), flag])


def all_reduce_(buf: torch.Tensor, kind: int, group) -> None:
    dist.all_reduce(buf, op=reduce_op(kind), group=group)


def finish(buf: torch.Tensor, kind: int, p: float) -> torch.Tensor:
    """The global norm (0-d fp64) from a reduced buffer: root, then NaN where flagged."""
    total = buf[0]
    if kind == L2:
        total = total.sqrt()
    elif kind not in (L1, L0, INF, NEG_INF):
        total = total.pow(1.0 / p)
    return torch.where(buf[1] != 0, torch.full_like(total, math.nan), total)


def global_norm(partial: torch.Tensor, kind: int, p: float, group) -> torch.Tensor:
    """The one all-reduce and the root: partial (0-d fp64) -> global norm (0-d fp64)."""
    buf = pack(partial, kind)
    all_reduce_(buf, kind, group)
    return finish(buf, kind, p)
