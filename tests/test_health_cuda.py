"""GradMonitor never synchronises with a CUDA device between its read-backs (GPU only:
torch's sync debug mode). The device-generic health tests (norms, AGC, AutoClip on cpu,
cuda and cudasim) are in test_health_norms.py, test_health_agc.py, test_health_autoclip.py.

Tests marked `cuda` need gradfast's CUDA kernels; the others only need a CUDA build of
torch (the pieces they exercise are written with torch ops). All skip without a GPU.
"""
import contextlib

import numpy as np
import pytest
import torch

import gradfast

needs_torch_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                      reason="needs a CUDA device")


@contextlib.contextmanager
def no_sync():
    """Any synchronising CUDA call inside raises."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def cuda_model(dtype=torch.float32):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(),
                                torch.nn.Linear(64, 8)).to("cuda", dtype)
    model(torch.randn(16, 32, device="cuda", dtype=dtype)).pow(2).sum().backward()
    return model


@pytest.mark.cuda
def test_monitor_step_no_sync_between_readbacks():
    model = cuda_model()
    mon = gradfast.GradMonitor(model, every=5)
    with no_sync():
        for _ in range(5):
            mon.step(max_norm=1.0)
    mon.flush()  # the read-back: the one synchronisation, every 5 steps
    assert len(mon.data()["step"]) == 5


@needs_torch_cuda
def test_monitor_record_no_sync():
    model = cuda_model()
    params = list(model.parameters())
    mon = gradfast.GradMonitor(model, every=4)
    per = torch.stack([p.grad.norm() for p in params])
    total = per.norm()
    subset = params[::-1]
    with no_sync():
        for _ in range(3):
            mon.record(total, per.flip(0), params=subset, max_norm=total * 0.5, skipped=False)
        mon.annotate(skipped=torch.tensor(True, device="cuda"))
    d = mon.data()
    np.testing.assert_allclose(d["norms"][0], per.cpu().numpy(), rtol=1e-6)
    assert d["clipped"].all() and d["skipped"].tolist() == [False, False, True]
