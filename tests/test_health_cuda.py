"""The gradient-health tools never synchronise with a CUDA device.

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
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grad_norms_no_sync(dtype):
    model = cuda_model(dtype)
    params = list(model.parameters())
    with no_sync():
        total, per = gradfast.grad_norms(params)
    ref = torch.stack([p.grad.norm() for p in params])
    torch.testing.assert_close(per, ref, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=0)
    assert torch.equal(total, gradfast.get_total_norm([p.grad for p in params]))


@pytest.mark.cuda
def test_monitor_step_no_sync_between_readbacks():
    model = cuda_model()
    mon = gradfast.GradMonitor(model, every=5)
    with no_sync():
        for _ in range(5):
            mon.step(max_norm=1.0)
    mon.flush()  # the read-back: the one synchronisation, every 5 steps
    assert len(mon.data()["step"]) == 5


@pytest.mark.cuda
def test_autoclip_call_no_sync():
    model = cuda_model()
    clipper = gradfast.AutoClip(percentile=10.0, history=16)
    with no_sync():
        for _ in range(20):
            total = clipper(model.parameters())
    assert total.device.type == "cuda"


@needs_torch_cuda
def test_autoclip_threshold_no_sync_matches_numpy():
    clipper = gradfast.AutoClip(percentile=37.5, history=10)
    norms = torch.rand(25, device="cuda", dtype=torch.float64) * 10
    norms[7] = float("inf")
    thresholds = []
    with no_sync():
        for i in range(25):
            thresholds.append(clipper.threshold(norms[i]))
    host = norms.cpu().numpy()
    finite = []
    for i, thr in enumerate(thresholds):
        if np.isfinite(host[i]):
            finite.append(host[i])
        assert thr.item() == np.percentile(finite[-10:], 37.5)


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


@needs_torch_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_agc_no_sync_matches_reference(dtype):
    from test_health_agc import clone_params, layer_params, reference_agc_
    cpu = layer_params(dtype)
    ref = clone_params(cpu)
    n_ref = reference_agc_(ref)
    gpu = []
    for p in cpu:
        q = torch.nn.Parameter(p.detach().to("cuda"))
        q.grad = p.grad.to("cuda")
        gpu.append(q)
    with no_sync():
        n = gradfast.adaptive_clip_grad_(gpu)
    assert n.item() == n_ref
    for p, q in zip(gpu, ref):
        torch.testing.assert_close(p.grad.cpu(), q.grad, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)
