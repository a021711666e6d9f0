"""gradfast.AutoClip: the device-side percentile against numpy.percentile on the same
history, the record-then-clip order, non-finite norms, and standalone clipping."""
import math

import numpy as np
import pytest
import torch

import gradfast
from devices import GPU, Device

PERCENTILES = [0.0, 10.0, 25.0, 37.5, 50.0, 90.0, 99.9, 100.0]


@pytest.mark.parametrize("percentile", PERCENTILES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_threshold_matches_numpy_percentile(dtype, percentile):
    history = 7
    clipper = gradfast.AutoClip(percentile=percentile, history=history)
    rng = np.random.default_rng(int(percentile * 10))
    seen = []
    for step in range(20):  # wraps the ring buffer almost three times
        norm = torch.tensor(rng.lognormal(0.0, 2.0), dtype=dtype)
        seen.append(norm.item())
        thr = clipper.threshold(norm)
        window = np.array(seen[-history:], dtype=np.float64 if dtype == torch.float64 else np.float32)
        expected = np.percentile(window, percentile)
        assert thr.dtype == dtype and thr.dim() == 0
        # Same interpolation, same rounding: equal, not merely close.
        assert thr.item() == float(expected), (step, thr.item(), float(expected))


def test_history_smaller_than_window_and_single_value():
    clipper = gradfast.AutoClip(percentile=10.0, history=1000)
    thr = clipper.threshold(torch.tensor(3.0, dtype=torch.float64))
    assert thr.item() == 3.0  # the percentile of a history holding only the current norm
    thr = clipper.threshold(torch.tensor(5.0, dtype=torch.float64))
    assert thr.item() == np.percentile([3.0, 5.0], 10.0)
    assert clipper.history_values().tolist() == [3.0, 5.0]


def test_nonfinite_norms_are_not_recorded():
    clipper = gradfast.AutoClip(percentile=50.0, history=4)
    assert math.isinf(clipper.threshold(torch.tensor(float("nan"))).item())  # empty history
    values = [1.0, float("inf"), 4.0, float("nan"), 2.0, 8.0, 16.0]
    finite = []
    for v in values:
        thr = clipper.threshold(torch.tensor(v, dtype=torch.float64))
        if math.isfinite(v):
            finite.append(v)
        assert thr.item() == np.percentile(finite[-4:], 50.0)
    assert clipper.history_values().tolist() == [4.0, 2.0, 8.0, 16.0]


def test_standalone_call_clips_like_clip_grad_norm_at_the_percentile():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    ref_model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    ref_model.load_state_dict(model.state_dict())
    clipper = gradfast.AutoClip(percentile=25.0, history=5)
    history = []
    clipped_any = False
    for step in range(12):
        x = torch.randn(32, 8) * (1 + 10 * (step % 3 == 0))
        for m in (model, ref_model):
            m.zero_grad()
            m(x).pow(2).mean().backward()
        total = clipper(model.parameters())
        ref_total = torch.nn.utils.get_total_norm([p.grad for p in ref_model.parameters()])
        assert torch.equal(total, gradfast.get_total_norm(
            [p.grad for p in ref_model.parameters()]))  # pre-clip norm, as clip_grad_norm_
        history.append(ref_total.item())
        thr = float(np.percentile(np.array(history[-5:], dtype=np.float32), 25.0))
        clipped_any |= ref_total.item() > thr
        torch.nn.utils.clip_grad_norm_(ref_model.parameters(), thr)
        for p, q in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7)
    assert clipped_any


def test_state_dict_round_trip():
    a = gradfast.AutoClip(percentile=30.0, history=3)
    for v in [1.0, 2.0, 3.0, 4.0]:
        a.threshold(torch.tensor(v))
    b = gradfast.AutoClip()
    b.load_state_dict(a.state_dict())
    assert b.percentile == 30.0 and b.history == 3
    assert torch.equal(a.threshold(torch.tensor(5.0)), b.threshold(torch.tensor(5.0)))
    assert b.history_values().tolist() == [3.0, 4.0, 5.0]


def test_argument_checks():
    with pytest.raises(ValueError):
        gradfast.AutoClip(percentile=101)
    with pytest.raises(ValueError):
        gradfast.AutoClip(history=0)


def test_clip_with_norm_reuses_a_norm_and_matches_call():
    torch.manual_seed(3)
    a = [torch.nn.Parameter(torch.randn(5, 5)) for _ in range(3)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ca, cb = gradfast.AutoClip(percentile=20.0, history=4), gradfast.AutoClip(percentile=20.0, history=4)
    for step in range(8):
        grads = [torch.randn(5, 5) * (10 if step == 5 else 1) for _ in a]
        for p, q, g in zip(a, b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        total = ca(a)
        total_b, _ = gradfast.grad_norms(b)
        thr = cb.clip_with_norm_(b, total_b)
        assert torch.equal(thr, ca.last_threshold) and torch.equal(total, total_b)
        for p, q in zip(a, b):
            assert torch.equal(p.grad, q.grad)


def test_min_history_uses_initial_max_norm():
    clipper = gradfast.AutoClip(percentile=50.0, history=10, min_history=3, initial_max_norm=1.5)
    assert clipper.threshold(torch.tensor(100.0)).item() == 1.5
    assert clipper.threshold(torch.tensor(200.0)).item() == 1.5
    assert clipper.threshold(torch.tensor(300.0)).item() == 200.0  # three norms: percentile


def _model(device, dtype=torch.float32):
    """A small MLP with gradients on device."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(),
                                torch.nn.Linear(64, 8)).to(device.torch, dtype)
    model(torch.randn(16, 32, device=device.torch, dtype=dtype)).pow(2).sum().backward()
    return model


@pytest.mark.parametrize("device", GPU, indirect=True)
def test_autoclip_call_no_sync(device):
    model = _model(device)
    clipper = gradfast.AutoClip(percentile=10.0, history=16)
    with device.no_sync():
        for _ in range(20):
            total = clipper(model.parameters())
    assert total.device.type == device.torch


cuda_device = Device("cuda")  # the sync check of a torch-only test on a CUDA device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_autoclip_threshold_no_sync_matches_numpy():
    clipper = gradfast.AutoClip(percentile=37.5, history=10)
    norms = torch.rand(25, device="cuda", dtype=torch.float64) * 10
    norms[7] = float("inf")
    thresholds = []
    with cuda_device.no_sync():
        for i in range(25):
            thresholds.append(clipper.threshold(norms[i]))
    host = norms.cpu().numpy()
    finite = []
    for i, thr in enumerate(thresholds):
        if np.isfinite(host[i]):
            finite.append(host[i])
        assert thr.item() == np.percentile(finite[-10:], 37.5)
