"""Where a group's kernels run: the back end is a parameter of the native layer.

The real back end is gradfast._C: CPU tensors go to its CPU kernels, CUDA tensors to its
CUDA kernels on torch's current stream. The simulator (tools/cudasim) is a second copy of
the module whose CUDA kernels run on the CPU: with it active, CPU tensors go to the CUDA
kernels, through exactly the Python code a GPU would run (device tables, workspaces,
structs), so the tests of that code need no GPU.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional

import torch

from .library import _C

# torch's CUDA builds expose the current stream's raw handle directly (what torch.compile's
# generated code uses); torch.cuda.current_stream builds a Stream object on every call.
_RAW_STREAM = getattr(torch._C, "_cuda_getCurrentRawStream", None)


class Backend:
    """A native library and the devices it runs on.

    lib: gradfast._C or the simulator's module. simulated: the simulated device index whose
    CUDA kernels take CPU tensors, or None for the real back end.
    """

    __slots__ = ("lib", "simulated", "workspaces")

    def __init__(self, lib, simulated: Optional[int] = None) -> None:
        self.lib = lib
        self.simulated = simulated
        # (kind, device index, stream) -> zeroed scratch: the kernels leave it zeroed.
        self.workspaces: Dict[tuple, torch.Tensor] = {}

    def cuda_kernels(self, t: torch.Tensor) -> bool:
        """Whether t's group runs the CUDA kernels (else the CPU kernels)."""
        return t.is_cuda or self.simulated is not None

    def host_kernels(self, device: torch.device) -> bool:
        """Whether groups on device run the CPU kernels (the simulator's CPU tensors run
        the CUDA ones)."""
        return device.type == "cpu" and self.simulated is None

    def device_index(self, device: torch.device) -> int:
        return self.simulated if self.simulated is not None else device.index

    def stream(self, device: torch.device) -> int:
        """The raw cudaStream_t of the current stream on device (the capture stream under
        CUDA graph capture), as an int; 0 for the simulator."""
        if self.simulated is not None:
            return 0
        if _RAW_STREAM is not None and device.index is not None:
            return _RAW_STREAM(device.index)
        return torch.cuda.current_stream(device).cuda_stream

    def upload(self, values: List[int], device: torch.device) -> torch.Tensor:
        """An int64 table in the kernels' memory, copied without blocking the host."""
        host = torch.tensor(values, dtype=torch.int64)
        if device.type != "cuda":
            return host
        return host.pin_memory().to(device, non_blocking=True)

    def workspace(self, kind: str, device: torch.device, stream: int, need: int,
                  minimum: int) -> torch.Tensor:
        """Zeroed scratch of at least `need` bytes per (kind, device, stream), grown on
        demand. Every launch leaves it zeroed, so it is never cleared again."""
        key = (kind, self.device_index(device), stream)
        ws = self.workspaces.get(key)
        if ws is None or ws.numel() < need:
            ws = self.workspaces[key] = torch.zeros(max(need, minimum), dtype=torch.uint8,
                                                    device=device)
        return ws


REAL = Backend(_C)
_current = REAL


def current() -> Backend:
    return _current


@contextlib.contextmanager
def use(backend: Backend):
    """Run the native layer on `backend` inside the block (tests: the simulator)."""
    global _current
    before, _current = _current, backend
    try:
        yield backend
    finally:
        _current = before
