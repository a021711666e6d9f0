"""The devices of the device-generic tests: cpu, cuda and cudasim.

As in torch's own device-generic tests (instantiate_device_type_tests), one test function
runs on every device through the `device` fixture (tests/conftest.py) instead of one copy
per device file. Each test builds its sample inputs on `device.torch`, runs gradfast and the
reference (stock torch on the same inputs), and compares.

- cpu: CPU tensors, gradfast's CPU kernels.
- cuda: CUDA tensors, gradfast's CUDA kernels (the `cuda` marker: skipped without a GPU).
- cudasim: CPU tensors with the native layer switched to a simulated GPU (tools/cudasim):
  the public API runs the CUDA kernels through gradfast's real Python path (device tables,
  workspaces, structs). The simulator is slow (a fiber per CUDA thread), so sample-input
  generators ask `device.small` for smaller sizes there. Stock torch needs no switching;
  where gradfast itself is the reference, `device.reference()` runs it on the real back end.
"""
from __future__ import annotations

import contextlib
import zlib

import pytest
import torch

from gradfast._native.backend import REAL, use

# Parametrizations for `@pytest.mark.parametrize("device", ..., indirect=True)`.
ALL = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda), "cudasim"]
# Tests of CUDA behaviour (workspaces, launch counts, no host sync...): the GPU and its
# simulation. Purely GPU-side ones (graphs, streams, the profiler) use CUDA_ONLY.
GPU = [pytest.param("cuda", marks=pytest.mark.cuda), "cudasim"]
CUDA_ONLY = [pytest.param("cuda", marks=pytest.mark.cuda)]
# Tests of host-side behaviour that does not depend on the kernels (argument checks,
# warnings, error messages raised before any kernel runs): cpu only, stated per test.


class Device:
    """One device of a test: where its tensors live and which kernels gradfast runs."""

    def __init__(self, name: str, sim=None) -> None:
        self.name = name
        self.sim = sim  # the SimDevice for cudasim, else None
        self.torch = "cuda" if name == "cuda" else "cpu"  # where the tensors are made
        self.backend = sim.backend if sim is not None else REAL

    @property
    def simulated(self) -> bool:
        return self.sim is not None

    @property
    def cuda_kernels(self) -> bool:
        """Whether gradfast runs its CUDA kernels on this device's tensors."""
        return self.name != "cpu"

    def small(self, full, small):
        """full, or the smaller `small` on the simulator (sample-input sizes)."""
        return small if self.simulated else full

    def reference(self):
        """gradfast on the real back end inside the block (gradfast as its own reference;
        on cpu and cuda that is already the case)."""
        return use(REAL) if self.simulated else contextlib.nullcontext()

    def synchronize(self) -> None:
        if self.name == "cuda":
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def no_sync(self):
        """On a GPU, any synchronising CUDA call inside raises (torch's sync debug mode);
        elsewhere there is no host-device synchronisation to watch."""
        if self.name != "cuda":
            yield
            return
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(0)

    def __repr__(self) -> str:
        return self.name


def make_device(request):
    """The Device of a `device` fixture request; cudasim's is active for the test."""
    name = request.param
    if name != "cudasim":
        yield Device(name)
        return
    sims = request.getfixturevalue("sim_devices")
    # Spread the tests over the simulated devices (different grid sizes), the same
    # device for a test on every run.
    sim = sims[zlib.crc32(request.node.nodeid.encode()) % len(sims)]
    with use(sim.backend):
        yield Device(name, sim)


def allocator_aligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t starting on a 512-byte boundary, as the CUDA caching allocator
    places every allocation. The CUDA kernels peel a scalar head up to an aligned address,
    so their summation order (and a norm's last bit) depends on the address modulo 128
    bytes; CPU allocations (cudasim's tensors) are only 64-byte aligned. Tests that compare
    separately allocated copies bitwise place them with this on cudasim."""
    elem = t.element_size()
    storage = torch.empty(t.numel() + 512 // elem, dtype=t.dtype, device=t.device)
    skip = (-storage.data_ptr() % 512) // elem
    out = storage[skip:skip + t.numel()].view(t.shape)
    out.copy_(t)
    assert out.data_ptr() % 512 == 0
    return out
