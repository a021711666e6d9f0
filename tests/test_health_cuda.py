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


# ------------------------------------------------ adaptive gradient clipping, CUDA kernels

AGC_SLICE = 8192  # csrc/cuda/agc_table.h kAgcSliceElems


def _agc_params(dtype, norm_type=2.0, device="cuda"):
    """layer_params (Linear, Conv, LSTM, Embedding, LayerNorm, biases, a 0-d and an all-zero
    parameter) plus tensors around the kernels' limits: a 1-D tensor of several slices,
    weights whose units span several slices, exactly one slice, or just past the group
    limit, and zero-size tensors; on `device`."""
    from test_health_agc import layer_params
    torch.manual_seed(5)
    params = layer_params(dtype)
    extra = [((3 * AGC_SLICE + 5,), 1e-2), ((3, 2 * AGC_SLICE + 17), 1.0),
             ((4, AGC_SLICE), 1e-3), ((6, 2049), 1.0), ((2, 7, 3, 300), 1e-2), ((40, 1), 1.0),
             ((0, 5), 1.0)]
    if norm_type != float("inf"):  # torch cannot take an inf norm over an empty dim
        extra.append(((5, 0), 1.0))
    for shape, scale in extra:
        q = torch.nn.Parameter(torch.randn(shape, dtype=torch.float64).to(dtype))
        g = torch.randn(shape, dtype=torch.float64) * scale
        if len(shape) >= 2 and shape[0] > 0:
            rows = torch.logspace(-4, 0, shape[0], dtype=torch.float64)
            g *= rows.view(-1, *[1] * (len(shape) - 1))
        q.grad = g.to(dtype)
        params.append(q)
    out = []
    for p in params:
        q = torch.nn.Parameter(p.detach().to(device))
        q.grad = p.grad.to(device)
        out.append(q)
    return out


def _forbid_torch_path(monkeypatch):
    import gradfast.health.agc as agc_mod

    real = agc_mod._agc_torch

    def refuse(params, grads, *args):
        # Tensors with no elements but a zero-size unit (shape (5, 0)) are left to torch.
        if any(g.numel() > 0 for g in grads):
            raise AssertionError("the torch path was taken")
        return real(params, grads, *args)
    monkeypatch.setattr(agc_mod, "_agc_torch", refuse)


@pytest.mark.cuda
@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf"), 3.0], ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=str)
def test_agc_native_matches_reference(dtype, norm_type, monkeypatch):
    from test_health_agc import clone_params, reference_agc_
    _forbid_torch_path(monkeypatch)
    ours = _agc_params(dtype, norm_type)
    ref = clone_params(ours)
    exact = clone_params(ours, torch.float64)
    with no_sync():
        n = gradfast.adaptive_clip_grad_(ours, norm_type=norm_type)
    n_ref = reference_agc_(ref, norm_type=norm_type)
    n_exact = reference_agc_(exact, norm_type=norm_type)
    assert n.device == ours[0].grad.device and n.dtype == torch.int64 and n.dim() == 0
    assert 0 < n_ref
    if dtype in (torch.float32, torch.float64):
        assert n.item() == n_ref
        rtol = 1e-5 if dtype == torch.float32 else 1e-12
        for p, q in zip(ours, ref):
            torch.testing.assert_close(p.grad, q.grad, rtol=rtol, atol=0)
    else:
        # Low precision: a unit norm summed in another order may round to a neighbour, so
        # compare errors against the fp64 computation, as test_health_agc does on the CPU.
        assert abs(n.item() - n_ref) <= 1 and abs(n.item() - n_exact) <= 2
        for p, q, e in zip(ours, ref, exact):
            if p.numel() == 0:
                continue
            our_err = (p.grad.double() - e.grad).abs().max().item()
            their_err = (q.grad.double() - e.grad).abs().max().item()
            ulp = torch.finfo(dtype).eps * e.grad.abs().max().item()
            assert our_err <= max(2 * their_err, ulp), (p.shape, our_err, their_err)
    for p, q in zip(ours, ref):
        assert torch.equal(p, q)  # parameters are only read


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_agc_native_matches_cpu_native(dtype):
    """Both back ends compute the same thing up to the summation order inside unit norms."""
    cpu = _agc_params(dtype, device="cpu")
    gpu = _agc_params(dtype)
    n_cpu = gradfast.adaptive_clip_grad_(cpu)
    n_gpu = gradfast.adaptive_clip_grad_(gpu)
    rtol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 1.6e-2}[dtype]
    if dtype != torch.bfloat16:
        assert n_cpu.item() == n_gpu.item()
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=rtol, atol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("norm_type", [2.0, float("inf")], ids=repr)
def test_agc_native_nonfinite(norm_type, monkeypatch):
    from test_health_agc import clone_params, reference_agc_
    _forbid_torch_path(monkeypatch)
    ours = _agc_params(torch.float32, norm_type)
    for p in ours:  # a NaN in a small unit, a big unit and a one-slice unit; an inf elsewhere
        if p.dim() >= 1 and p.numel() > 0:
            p.grad.view(-1)[p.numel() // 2] = float("nan")
            p.grad.view(-1)[-1] = float("inf")
    ref = clone_params(ours)
    n = gradfast.adaptive_clip_grad_(ours, norm_type=norm_type)
    assert n.item() == reference_agc_(ref, norm_type=norm_type)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=0, equal_nan=True)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_agc_native_deterministic(dtype):
    a = _agc_params(dtype)
    b = _agc_params(dtype)
    # A third list with other allocations (another table, other alignments of nothing else).
    c = _agc_params(dtype)
    counts = [gradfast.adaptive_clip_grad_(x, clip_factor=0.05) for x in (a, b, c)]
    assert counts[0].item() == counts[1].item() == counts[2].item()
    for x, y, z in zip(a, b, c):
        assert torch.equal(x.grad, y.grad) and torch.equal(x.grad, z.grad)
    # Again on the same tensors (cached table, reused workspace): still identical.
    for x, y in zip(a, _agc_params(dtype)):
        x.grad.copy_(y.grad)
    gradfast.adaptive_clip_grad_(a, clip_factor=0.05)
    for x, y in zip(a, b):
        assert torch.equal(x.grad, y.grad)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_agc_native_cuda_graph(dtype, monkeypatch):
    _forbid_torch_path(monkeypatch)
    static = _agc_params(dtype)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            gradfast.adaptive_clip_grad_(static, clip_factor=0.02)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        n = gradfast.adaptive_clip_grad_(static, clip_factor=0.02)
    for seed_scale in (1.0, 3.0, 1e-6):
        fresh = _agc_params(dtype)
        for p, q in zip(static, fresh):
            p.grad.copy_(q.grad * seed_scale)
        eager = _agc_params(dtype)
        for q in eager:
            q.grad.mul_(seed_scale)
        n_eager = gradfast.adaptive_clip_grad_(eager, clip_factor=0.02)
        graph.replay()
        torch.cuda.synchronize()
        assert n.item() == n_eager.item()
        for p, q in zip(static, eager):
            assert torch.equal(p.grad, q.grad)
    assert n_eager.item() == 0  # the last round clips nothing


@pytest.mark.cuda
def test_agc_native_mixed_groups_no_sync(monkeypatch):
    """Several (dtype) groups, tensors entering and leaving, all without a host sync."""
    from test_health_agc import clone_params, reference_agc_
    ours = _agc_params(torch.float32)[:12] + _agc_params(torch.float64)[-6:]
    ref = clone_params(ours)
    _forbid_torch_path(monkeypatch)
    with no_sync():
        n = gradfast.adaptive_clip_grad_(ours)
        # Another table, the same workspace; a smaller factor, so that units clipped by the
        # first call (their norm now at the limit, up to rounding) are clipped by a margin.
        m = gradfast.adaptive_clip_grad_(ours[3:9], clip_factor=0.003)
    n_ref = reference_agc_(ref)
    m_ref = reference_agc_(ref[3:9], clip_factor=0.003)
    assert (n.item(), m.item()) == (n_ref, m_ref)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=0)


@pytest.mark.cuda
def test_agc_duplicate_gradient_goes_to_torch():
    from gradfast.health.agc import _agc_torch
    ours = _agc_params(torch.float32)[:4]
    twice = ours + ours[:1]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in twice[:4]]
    for r, p in zip(ref, ours):
        r.grad = p.grad.clone()
    ref_list = ref + ref[:1]
    n_ref = _agc_torch([r.detach() for r in ref_list], [r.grad for r in ref_list], 0.01, 1e-3,
                       2.0)
    n = gradfast.adaptive_clip_grad_(twice)
    assert n.item() == n_ref.item()
    for p, r in zip(ours, ref):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-6, atol=0)
