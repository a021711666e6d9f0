"""One (device, dtype) group of tensors as the kernels see it.

A TensorGroup owns what a call on its tensors needs: the back end, the dtype code, the
raw pointers and element counts (CPU) or the device-side pointer table (CUDA, cached
across calls, so a steady-state step builds and copies nothing), the stream and the
workspaces. Callers guarantee a non-empty list of tensors that support.all_native_supported
accepts, all of one dtype on one device.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, List, Optional, Sequence

import torch
from torch.autograd.graph import increment_version

from . import backend as _backend
from .library import CHUNK_ELEMS, DTYPE_CODES, MATH_DTYPE


def has_duplicates(ptrs: Sequence[int], numels: Sequence[int]) -> bool:
    """Whether a non-empty tensor appears more than once (e.g. a parameter listed twice).

    torch updates such a tensor once per occurrence, one after the other; the parallel
    kernels would race on it, so callers leave those lists to torch's ops.
    """
    if len(set(ptrs)) == len(ptrs):
        return False
    live = [p for p, n in zip(ptrs, numels) if n > 0]
    return len(set(live)) != len(live)


def bump_versions(tensors: List[torch.Tensor]) -> None:
    """The kernels write through raw pointers: tell autograd, as torch's in-place ops do."""
    try:
        increment_version(tensors)
    except (TypeError, RuntimeError):  # older torch takes one tensor at a time
        for t in tensors:
            increment_version(t)


class DeviceTable:
    """An int64 table in the kernels' memory, and the counts the launch needs with it."""

    __slots__ = ("meta", "counts", "duplicates")

    def __init__(self, meta: torch.Tensor, counts: tuple, duplicates: bool = False) -> None:
        self.meta, self.counts, self.duplicates = meta, counts, duplicates

    def args(self) -> tuple:
        return (self.meta.data_ptr(),) + self.counts


_TABLES: "OrderedDict[tuple, DeviceTable]" = OrderedDict()
_TABLES_SIZE = 64


def cached_table(key: tuple, build: Callable[[], DeviceTable]) -> DeviceTable:
    """The table for key (pointers and sizes), built on a miss; least recently used out.

    Under CUDA graph capture the table must already be cached (warm-up steps do that), as
    for any other allocation torch makes before capture.
    """
    hit = _TABLES.get(key)
    if hit is not None:
        _TABLES.move_to_end(key)
        return hit
    built = _TABLES[key] = build()
    if len(_TABLES) > _TABLES_SIZE:
        _TABLES.popitem(last=False)
    return built


def chunk_count(numel: int) -> int:
    return -(-numel // CHUNK_ELEMS)


class TensorGroup:
    """Dense tensors of one dtype on one device, ready for a kernel call."""

    __slots__ = ("tensors", "first", "device", "dtype", "code", "math_dtype", "backend",
                 "lib", "cuda", "_ptrs", "_numels")

    def __init__(self, tensors: Sequence[torch.Tensor],
                 backend: Optional[_backend.Backend] = None) -> None:
        # Built once or twice per optimizer step: plain attribute reads only.
        self.tensors = tensors
        first = self.first = tensors[0]
        self.device = first.device
        dtype = self.dtype = first.dtype
        self.code = DTYPE_CODES[dtype]
        self.math_dtype = MATH_DTYPE[dtype]
        backend = self.backend = backend or _backend.current()
        self.lib = backend.lib
        self.cuda = backend.cuda_kernels(first)
        self._ptrs: Optional[List[int]] = None
        self._numels: Optional[List[int]] = None

    @property
    def ptrs(self) -> List[int]:
        if self._ptrs is None:
            self._ptrs = [t.data_ptr() for t in self.tensors]
        return self._ptrs

    @property
    def numels(self) -> List[int]:
        if self._numels is None:
            self._numels = [t.numel() for t in self.tensors]
        return self._numels

    def duplicates(self) -> bool:
        return has_duplicates(self.ptrs, self.numels)

    @property
    def index(self) -> int:
        return self.backend.device_index(self.device)

    def stream(self) -> int:
        return self.backend.stream(self.device)

    def workspace(self, kind: str, stream: int, need: int, minimum: int) -> torch.Tensor:
        return self.backend.workspace(kind, self.device, stream, need, minimum)

    def chunk_table(self) -> DeviceTable:
        """[ptrs, numels, first chunk] of the tensors (csrc/cuda/cuda_ops.h), cached."""
        ptrs, numels = self.ptrs, self.numels
        key = ("chunks", id(self.backend), self.index, tuple(ptrs), tuple(numels))

        def build() -> DeviceTable:
            first = [0]
            for n in numels:
                first.append(first[-1] + chunk_count(n))
            meta = self.backend.upload(ptrs + numels + first, self.device)
            return DeviceTable(meta, (len(ptrs), first[-1]), has_duplicates(ptrs, numels))

        return cached_table(key, build)

    def tile_table(self, kind: str, rows: List[List[int]], tile: int) -> DeviceTable:
        """The table of the fused optimizer kernels (csrc/cuda/adam_cuda.h, sgd_cuda.h):
        the pointer rows (n entries each), the element counts, then n+1 first-tile offsets
        (every tensor owns at least one tile of `tile` elements), cached; counts are
        (n, tiles)."""
        numels = self.numels
        key = (kind, id(self.backend), self.index, tuple(map(tuple, rows)), tuple(numels))

        def build() -> DeviceTable:
            first = [0]
            for k in numels:
                first.append(first[-1] + max(1, -(-k // tile)))
            flat = [x for row in rows for x in row]
            meta = self.backend.upload(flat + numels + first, self.device)
            return DeviceTable(meta, (len(numels), first[-1]))

        return cached_table(key, build)

    def new(self, shape, dtype=None) -> torch.Tensor:
        """An uninitialised output on the group's device (the kernels write every element)."""
        return torch.empty(shape, dtype=dtype or self.dtype, device=self.device)
