"""Multi-tensor norms, scaling and clamping of (device, dtype) groups, and the total norm of
a list of tensors across groups, with torch's semantics.

Per group, on CUDA: one launch for every norm and the clip coefficient, one for the scale,
one for the clamp; on the CPU one multi-threaded pass each. Nothing here synchronises.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .group import TensorGroup, bump_versions
from .library import MATH_DTYPE
from .norm_kind import L0
from .op import NativeOp
from .support import group_by_device_dtype


def group_norm(g: TensorGroup, kind: int, p: float, max_norm: float, per_tensor: bool = True
               ) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """(total norm in the group dtype, per-tensor norms in the math dtype, clip coefficient
    torch's min(max_norm / (total + 1e-6), 1) in the math dtype). per_tensor=False: None in
    place of the per-tensor norms, which are then not written (clip_grad_norm_ needs only
    the total and the coefficient)."""
    norms = g.new((len(g.tensors),), g.math_dtype) if per_tensor else None
    total = g.new(())
    coef = g.new((), g.math_dtype)
    _launch_norm(g, kind, p, 0 if norms is None else norms.data_ptr(), total.data_ptr(),
                 coef.data_ptr(), max_norm)
    return total, norms, coef


def group_total(tensors: List[torch.Tensor], kind: int, p: float) -> torch.Tensor:
    """The total norm alone of one (device, dtype) group, in its dtype: bitwise norm()'s
    first output. The optimizers' global norm needs nothing else, and two outputs fewer
    spare two allocations a step (the kernels skip the outputs they are not given).
    Under torch.compile it is the norm op's first output."""
    if torch.compiler.is_compiling():
        return norm(tensors, p, kind, 1.0)[0]
    g = TensorGroup(tensors)
    total = g.new(())
    _launch_norm(g, kind, p, 0, total.data_ptr(), 0, 1.0)
    return total


def _launch_norm(g: TensorGroup, kind: int, p: float, per_tensor: int, total: int, coef: int,
                 max_norm: float) -> None:
    """The norm kernel of g into the given outputs (raw pointers, 0 = not wanted)."""
    lib = g.lib
    if g.cuda:
        table = g.chunk_table()
        stream = g.stream()
        ws = g.workspace("norm", stream,
                         lib.cuda_norm_workspace_bytes(*table.counts, g.code), 1 << 16)
        lib.cuda_multi_norm(*table.args(), g.code, kind, p, ws.data_ptr(), per_tensor, total,
                            coef, max_norm, g.index, stream)
    else:
        lib.cpu_multi_norm(g.ptrs, g.numels, g.code, kind, p, per_tensor, total, coef,
                           max_norm, torch.get_num_threads())


def group_scale_(g: TensorGroup, coef: torch.Tensor) -> None:
    """tensors *= coef (0-d, the group's math dtype, on its device)."""
    if g.duplicates():
        # A tensor listed twice is scaled twice, in order, as torch's per-tensor mul_ does.
        for t in g.tensors:
            t.mul_(coef)
        return
    lib = g.lib
    if g.cuda:
        table = g.chunk_table()
        lib.cuda_multi_scale(*table.args(), g.code, coef.data_ptr(), g.index, g.stream())
    else:
        lib.cpu_multi_scale(g.ptrs, g.numels, g.code, coef.data_ptr(), torch.get_num_threads())
    bump_versions(list(g.tensors))


def group_clamp_(g: TensorGroup, lo: float, hi: float) -> None:
    """tensors = clamp(tensors, lo, hi), NaN kept, in one pass."""
    lib = g.lib
    if g.cuda:
        table = g.chunk_table()
        lib.cuda_multi_clamp(*table.args(), g.code, lo, hi, g.index, g.stream())
    else:
        lib.cpu_multi_clamp(g.ptrs, g.numels, g.code, lo, hi, torch.get_num_threads())
    bump_versions(list(g.tensors))


# ---- the ops (torch.compile sees these; eager calls run the implementations directly) ----

def _norm_impl(tensors: List[torch.Tensor], p: float, kind: int, max_norm: float):
    return group_norm(TensorGroup(tensors), kind, p, max_norm)


def _norm_fake(tensors, p, kind, max_norm):
    first = tensors[0]
    math_dtype = MATH_DTYPE[first.dtype]
    return (first.new_empty(()), first.new_empty((len(tensors),), dtype=math_dtype),
            first.new_empty((), dtype=math_dtype))


norm = NativeOp(
    "group_norm", "(Tensor[] tensors, float p, int kind, float max_norm) -> (Tensor, Tensor, Tensor)",
    _norm_impl, _norm_fake)

scale_ = NativeOp(
    "group_scale_", "(Tensor(a!)[] tensors, Tensor coef) -> ()",
    lambda tensors, coef: group_scale_(TensorGroup(tensors), coef), lambda tensors, coef: None)

clamp_ = NativeOp(
    "group_clamp_", "(Tensor(a!)[] tensors, float lo, float hi) -> ()",
    lambda tensors, lo, hi: group_clamp_(TensorGroup(tensors), lo, hi),
    lambda tensors, lo, hi: None)


def total_norm(
    tensors: List[torch.Tensor], p: float, kind: int, max_norm: float
) -> Tuple[torch.Tensor, Optional[torch.Tensor], List[Tuple[List[int], torch.Tensor]]]:
    """The total norm of non-empty, native-supported tensors, over every (device, dtype).

    Returns (total, coef or None, [(indices, per-tensor norms) per group]); coef is the
    kernel's clip coefficient, available when there is a single group.
    """
    groups = group_by_device_dtype(tensors)
    if len(groups) == 1:
        total, per_tensor, coef = norm(tensors, p, kind, max_norm)
        return total, coef, [(list(range(len(tensors))), per_tensor)]
    # Several groups: combine the per-tensor norms exactly as torch does, as the norm of
    # the stacked per-tensor norms (each in its tensor's dtype) on the first device.
    first_device = tensors[0].device
    parts, per_group = [], []
    for (device, dtype), idx in groups.items():
        _, per_tensor, _ = norm([tensors[i] for i in idx], p, kind, max_norm)
        per_group.append((idx, per_tensor))
        parts.append(per_tensor.to(dtype).to(first_device))
    promoted = parts[0].dtype
    for part in parts[1:]:
        promoted = torch.promote_types(promoted, part.dtype)
    stacked = torch.cat([part.to(promoted) for part in parts])
    if kind == L0:
        total = stacked.sum()
    else:
        total = torch.linalg.vector_norm(stacked, p)
    return total, None, per_group
