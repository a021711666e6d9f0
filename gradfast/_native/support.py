"""Which tensors the kernels take, and how a list of them splits into (device, dtype) groups.

The core sees raw pointers and element counts of dense tensors of one dtype on one device;
everything else goes to torch's own algorithms (gradfast._torch_fallback).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

import torch

from .library import DTYPE_CODES


def is_dense(t: torch.Tensor) -> bool:
    """True when t's elements fill one gap-free, non-overlapping block of memory.

    Element order inside the block does not matter to element-wise ops and norms, so
    channels-last and transposed tensors qualify, not only contiguous ones.
    """
    if t.is_contiguous():
        return True
    dims = sorted((st, sz) for st, sz in zip(t.stride(), t.size()) if sz != 1)
    expected = 1
    for st, sz in dims:
        if st != expected:
            return False
        expected *= sz
    return True


_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)
_STRIDED = torch.strided


def all_native_supported(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether the native kernels can take every tensor (otherwise torch's own path is used).

    Inference tensors go to torch, which refuses to update them in place outside
    inference mode (the kernels' raw writes would bypass that check). Written as one
    comprehension over the cheapest tensor attributes: clipping runs it for every grad of
    every step.
    """
    return all([type(t) in _PLAIN_TYPES and t.layout is _STRIDED and t.dtype in DTYPE_CODES
                and (t.is_cpu or t.is_cuda) and (t.is_contiguous() or is_dense(t))
                and not t.is_inference() for t in tensors])


def native_supported(t: torch.Tensor) -> bool:
    """all_native_supported for one tensor."""
    return all_native_supported((t,))


def single_group(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether all tensors (a non-empty list) share one dtype and one CPU or CUDA device;
    the common case, decided without building device objects."""
    first = tensors[0]
    dt, cuda = first.dtype, first.is_cuda
    index = first.get_device()
    if not (cuda or first.is_cpu):
        return False
    if cuda:
        return all([t.dtype is dt and t.is_cuda and t.get_device() == index for t in tensors])
    return all([t.dtype is dt and t.is_cpu for t in tensors])


def group_by_device_dtype(
    tensors: Sequence[torch.Tensor],
) -> "OrderedDict[Tuple[torch.device, torch.dtype], List[int]]":
    """Indices of tensors per (device, dtype), in order of first appearance."""
    groups: "OrderedDict[Tuple[torch.device, torch.dtype], List[int]]" = OrderedDict()
    if not tensors:
        return groups
    first = tensors[0]
    if single_group(tensors):
        groups[(first.device, first.dtype)] = list(range(len(tensors)))
        return groups
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return groups


def split(tensors: Sequence[torch.Tensor]) -> List[Tuple[torch.device, Optional[List[int]]]]:
    """[(device, indices or None)] per (device, dtype) of tensors, in order of appearance;
    None stands for "all of them", the common case, found without building index lists."""
    if single_group(tensors):
        return [(tensors[0].device, None)]
    return [(device, idx) for (device, _), idx in group_by_device_dtype(tensors).items()]
