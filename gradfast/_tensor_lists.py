"""Turning lists of torch tensors into what the native core takes.

The core sees raw pointers and element counts of dense tensors of one dtype on one device.
This module decides which tensors qualify, groups them by (device, dtype), and on CUDA
keeps the device-side pointer table and the scratch workspace cached, so a steady-state
training step builds nothing and copies nothing to the device.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import torch

from ._native import _C, CHUNK_ELEMS, DTYPE_CODES


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


def host_args(tensors: Sequence[torch.Tensor]):
    """(pointers, element counts) of CPU tensors, for the cpu_* entry points."""
    return [t.data_ptr() for t in tensors], [t.numel() for t in tensors]


def has_duplicates(ptrs: List[int], numels: List[int]) -> bool:
    """Whether a non-empty tensor appears more than once (e.g. a parameter listed twice).

    torch scales such a gradient once per occurrence, one tensor after the other; the
    parallel kernels would race on it, so callers scale those lists with torch's ops.
    """
    if len(set(ptrs)) == len(ptrs):
        return False
    live = [p for p, n in zip(ptrs, numels) if n > 0]
    return len(set(live)) != len(live)


def chunk_count(numel: int) -> int:
    return -(-numel // CHUNK_ELEMS)


def _upload_table(values: List[int], device: torch.device) -> torch.Tensor:
    """An int64 table copied to the device without blocking the host (pinned staging)."""
    host = torch.tensor(values, dtype=torch.int64)
    if torch.cuda.is_available():
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


def _cached(cache: "OrderedDict", key: tuple, build):
    """cache[key], built on a miss; the least recently used entry goes past _LIST_CACHE_SIZE."""
    hit = cache.get(key)
    if hit is not None:
        cache.move_to_end(key)
        return hit
    built = cache[key] = build()
    if len(cache) > _LIST_CACHE_SIZE:
        cache.popitem(last=False)
    return built


def _workspace(registry: Dict[tuple, torch.Tensor], device: torch.device, stream: int,
               need: int, minimum: int) -> torch.Tensor:
    """Zeroed scratch of at least `need` bytes, one per (device, stream), grown on demand.

    The kernels leave their scratch zeroed after every launch, so it is never cleared again.
    """
    key = (device.index, stream)
    ws = registry.get(key)
    if ws is None or ws.numel() < need:
        ws = registry[key] = torch.zeros(max(need, minimum), dtype=torch.uint8, device=device)
    return ws


class DeviceList:
    """The device-side table [ptrs, numels, first_chunk] of one CUDA tensor list."""

    __slots__ = ("meta", "n", "n_chunks", "duplicates")

    def __init__(self, ptrs: List[int], numels: List[int], device: torch.device) -> None:
        first = [0]
        for n in numels:
            first.append(first[-1] + chunk_count(n))
        self.meta = _upload_table(ptrs + numels + first, device)
        self.n = len(ptrs)
        self.n_chunks = first[-1]
        self.duplicates = has_duplicates(ptrs, numels)

    def args(self):
        return self.meta.data_ptr(), self.n, self.n_chunks


_LIST_CACHE: "OrderedDict[tuple, DeviceList]" = OrderedDict()
_LIST_CACHE_SIZE = 64


def device_list(tensors: Sequence[torch.Tensor]) -> DeviceList:
    """The cached DeviceList for these tensors (rebuilt only when pointers or sizes change).

    Under CUDA graph capture the list must already be cached (warm-up steps do that), as
    for any other allocation torch makes before capture.
    """
    ptrs = [t.data_ptr() for t in tensors]
    numels = [t.numel() for t in tensors]
    device = tensors[0].device
    key = (device.index, tuple(ptrs), tuple(numels))
    return _cached(_LIST_CACHE, key, lambda: DeviceList(ptrs, numels, device))


_WORKSPACES: Dict[tuple, torch.Tensor] = {}


def norm_workspace(device: torch.device, stream: int, n: int, n_chunks: int,
                   dtype: torch.dtype) -> torch.Tensor:
    """Zeroed scratch for the CUDA norm kernel, one per (device, stream), grown on demand.

    The kernel leaves it zeroed after every launch, so it is never cleared again.
    """
    need = _C.cuda_norm_workspace_bytes(n, n_chunks, DTYPE_CODES[dtype])
    return _workspace(_WORKSPACES, device, stream, need, 1 << 16)


# torch's CUDA builds expose the current stream's raw handle directly (what torch.compile's
# generated code uses); torch.cuda.current_stream builds a Stream object on every call.
_RAW_STREAM = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def current_stream(device: torch.device) -> int:
    """The raw cudaStream_t of the current stream on device (the capture stream under CUDA
    graph capture), as an int."""
    if _RAW_STREAM is not None and device.index is not None:
        return _RAW_STREAM(device.index)
    return torch.cuda.current_stream(device).cuda_stream


class AdamDeviceList:
    """The device-side table of one CUDA Adam group (layout in csrc/cuda/adam_cuda.h).

    Rows of n int64: param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq (0 when unused) and
    step pointers, element counts, then n+1 first-tile offsets; every tensor owns at least
    one tile (an empty tensor's tile only increments its step).
    """

    __slots__ = ("meta", "n", "n_tiles")

    def __init__(self, rows: List[List[int]], numels: List[int], device: torch.device,
                 tile: int) -> None:
        first = [0]
        for n in numels:
            first.append(first[-1] + max(1, -(-n // tile)))
        flat: List[int] = []
        for row in rows:
            flat += row
        self.meta = _upload_table(flat + numels + first, device)
        self.n = len(numels)
        self.n_tiles = first[-1]

    def args(self):
        return self.meta.data_ptr(), self.n, self.n_tiles


_ADAM_CACHE: "OrderedDict[tuple, AdamDeviceList]" = OrderedDict()


def adam_device_list(lists: Sequence[Sequence[torch.Tensor]], amsgrad: bool) -> AdamDeviceList:
    """The cached AdamDeviceList of (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
    steps); rebuilt only when a pointer or a size changes (as device_list)."""
    params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps = lists
    n = len(params)
    rows = [
        [t.data_ptr() for t in params],
        [t.data_ptr() for t in grads],
        [t.data_ptr() for t in exp_avgs],
        [t.data_ptr() for t in exp_avg_sqs],
        [t.data_ptr() for t in max_sqs] if amsgrad else [0] * n,
        [t.data_ptr() for t in steps],
    ]
    numels = [t.numel() for t in params]
    device = params[0].device
    key = (device.index, tuple(tuple(r) for r in rows), tuple(numels))
    return _cached(_ADAM_CACHE, key, lambda: AdamDeviceList(
        rows, numels, device, _C.cuda_adam_meta_layout()[0]))


_ADAM_WORKSPACES: Dict[tuple, torch.Tensor] = {}


def adam_workspace(device: torch.device, stream: int, n: int) -> torch.Tensor:
    """Zeroed completion counters for the CUDA Adam kernel, one buffer per (device, stream),
    grown on demand; every launch leaves them zeroed."""
    return _workspace(_ADAM_WORKSPACES, device, stream, _C.cuda_adam_workspace_bytes(n), 1 << 12)


class AgcDeviceList:
    """The device-side table of one CUDA AGC group (layout in csrc/cuda/agc_table.h), built
    by the native core on the host so that its item split is the kernels' own."""

    __slots__ = ("meta", "n", "n_items", "n_big_units", "n_big_items", "duplicates")

    def __init__(self, wptrs: List[int], gptrs: List[int], numels: List[int],
                 units: List[int], device: torch.device) -> None:
        table, self.n_items, self.n_big_units, self.n_big_items = _C.agc_cuda_table(
            wptrs, gptrs, numels, units)
        self.meta = _upload_table(table, device)
        self.n = len(numels)
        self.duplicates = has_duplicates(gptrs, numels)

    def args(self):
        return self.meta.data_ptr(), self.n, self.n_items, self.n_big_units, self.n_big_items


_AGC_CACHE: "OrderedDict[tuple, AgcDeviceList]" = OrderedDict()


def agc_device_list(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                    units: Sequence[int]) -> AgcDeviceList:
    """The cached AgcDeviceList of (params, grads, unit sizes); rebuilt only when a pointer or
    a size changes (as device_list)."""
    wptrs = [t.data_ptr() for t in params]
    gptrs = [t.data_ptr() for t in grads]
    numels = [t.numel() for t in grads]
    units = list(units)
    device = grads[0].device
    key = (device.index, tuple(wptrs), tuple(gptrs), tuple(numels), tuple(units))
    return _cached(_AGC_CACHE, key, lambda: AgcDeviceList(wptrs, gptrs, numels, units, device))


_AGC_WORKSPACES: Dict[tuple, torch.Tensor] = {}


def agc_workspace(device: torch.device, stream: int, dl: AgcDeviceList,
                  dtype: torch.dtype) -> torch.Tensor:
    """Zeroed scratch for the CUDA AGC kernels, one per (device, stream), grown on demand;
    every launch leaves its counters zeroed. (Its own registry: the norm kernel needs all of
    its scratch zeroed, the AGC kernels only their counters.)"""
    need = _C.cuda_agc_workspace_bytes(dl.n_big_units, dl.n_big_items, DTYPE_CODES[dtype])
    return _workspace(_AGC_WORKSPACES, device, stream, need, 1 << 12)
