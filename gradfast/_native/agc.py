"""Unit-wise adaptive gradient clipping of one (device, dtype) group (csrc/cpu/agc.cpp,
csrc/cuda/agc.cu): on the CPU one fused multi-threaded call, on CUDA at most two launches.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from .group import DeviceTable, TensorGroup, bump_versions, cached_table, has_duplicates


def group_agc(params: List[torch.Tensor], grads: List[torch.Tensor], units: List[int],
              kind: int, p: float, clip_factor: float, eps: float) -> Optional[torch.Tensor]:
    """Clip grads[i] unit-wise against params[i] (dense, non-empty, of the group's dtype on its
    device, in units of units[i] consecutive elements). Returns the number of clipped units
    (0-d int64 on the device), or None when a gradient is listed twice (the caller then uses
    torch's ops, which scale it once per occurrence)."""
    g = TensorGroup(grads)
    lib = g.lib
    wptrs = [t.data_ptr() for t in params]
    if g.cuda:
        table = _agc_table(g, wptrs, units)
        if table.duplicates:
            return None
        stream = g.stream()
        ws = g.workspace("agc", stream, lib.cuda_agc_workspace_bytes(*table.counts[2:], g.code),
                         1 << 12)
        clipped = g.new((), torch.int64)  # the kernel always writes it
        lib.cuda_agc(*table.args(), g.code, kind, p, clip_factor, eps, ws.data_ptr(),
                     clipped.data_ptr(), g.index, stream)
    else:
        if g.duplicates():  # the threads would race on it
            return None
        clipped = torch.zeros((), dtype=torch.int64)
        lib.cpu_agc(wptrs, g.ptrs, g.numels, units, g.code, kind, p, clip_factor, eps,
                    clipped.data_ptr(), torch.get_num_threads())
    bump_versions(grads)
    return clipped


def _agc_table(g: TensorGroup, wptrs: List[int], units: List[int]) -> DeviceTable:
    """The device table of csrc/cuda/agc_table.h, built by the core on the host so that its
    item split is the kernels' own; counts are (n, n_items, n_big_units, n_big_items)."""
    gptrs, numels = g.ptrs, g.numels
    key = ("agc", id(g.backend), g.index, tuple(wptrs), tuple(gptrs), tuple(numels), tuple(units))

    def build() -> DeviceTable:
        table, n_items, n_big_units, n_big_items = g.lib.agc_cuda_table(wptrs, gptrs, numels,
                                                                        list(units))
        return DeviceTable(g.backend.upload(table, g.device),
                           (len(numels), n_items, n_big_units, n_big_items),
                           has_duplicates(gptrs, numels))

    return cached_table(key, build)
