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
from collections import deque

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from .._native.norm_kind import INF, L0, L1, L2, NEG_INF
from .identity_cache import IdentityCache

_GROUPS = IdentityCache()  # root mesh -> its process group


def group_of(root: DeviceMesh):
    """One process group spanning every rank of root (created once, then cached)."""
    hit = _GROUPS.get(root)
    if hit is not None:
        return hit
    if root.size() == dist.get_world_size():
        group = dist.group.WORLD
    elif root.ndim == 1:
        group = root.get_group()
    else:
        group = root._flatten("_gradfast_norm").get_group()
    return _GROUPS.put(root, group)


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


# The last few all-reduces' Works, each kept for KEPT_WORKS more. Why: gloo's worker thread
# drops its reference to a Work after wait() has returned here. Were that the last
# reference, the drop would free the Work's tensors (and its thread-local snapshot's Python
# state), which takes the GIL; at interpreter exit the worker cannot take it and the process
# aborts ("terminate called without an active exception" after a clean run, ~1 run in 20 of
# a 2-rank FSDP2 script on a loaded 2-core box). Kept here, the worker's drop is a plain
# refcount decrement and the Work is freed on the calling thread, unless the worker lags
# KEPT_WORKS collectives behind (one slot was not enough: a lag of one call was seen 2
# times in 15000 calls).
KEPT_WORKS = 4
_kept_works: deque = deque(maxlen=KEPT_WORKS)


def all_reduce_(buf: torch.Tensor, op, group) -> None:
    """dist.all_reduce(buf, op, group) in place, synchronous form (on NCCL: on the current
    stream, no host sync), keeping the Work. What dist.all_reduce(async_op=False) runs,
    minus its checks, which hold by construction here (a plain dense fp64 tensor, a group
    this rank is in); dist.all_reduce(async_op=True) plus wait() would cost a second GIL
    round trip, measured +35 us a call on gloo."""
    if torch.compiler.is_compiling():  # dynamo traces dist.all_reduce, not ProcessGroup's
        dist.all_reduce(buf, op=op, group=group)
        return
    opts = dist.AllreduceOptions()
    opts.reduceOp = op
    opts.asyncOp = False
    work = group.allreduce([buf], opts)
    work.wait()
    _kept_works.append(work)


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
    all_reduce_(buf, reduce_op(kind), group)
    return finish(buf, kind, p)
