"""gradfast.adaptive_clip_grad_ against a plain-torch reference (the formula of
timm.utils.adaptive_clip_grad), on the parameters of real layers."""
import math

import pytest
import torch
from torch import nn

import gradfast


def reference_agc_(params, clip_factor=0.01, eps=1e-3, norm_type=2.0):
    """Plain torch: unit = dim 0 for ndim > 1, the whole tensor otherwise. Returns the
    number of clipped units."""
    clipped = 0
    for p in params:
        if p.grad is None:
            continue
        w, g = p.detach(), p.grad.detach()
        if w.ndim <= 1:
            wn, gn = w.norm(norm_type), g.norm(norm_type)
        else:
            dims = tuple(range(1, w.ndim))
            wn, gn = w.norm(norm_type, dim=dims, keepdim=True), g.norm(norm_type, dim=dims, keepdim=True)
        max_norm = wn.clamp(min=eps).mul(clip_factor)
        scaled = g * (max_norm / gn.clamp(min=1e-6))
        clipped += int((gn >= max_norm).sum()) + int(torch.isnan(gn).sum())
        p.grad.detach().copy_(torch.where(gn < max_norm, g, scaled))
    return clipped


def layer_params(dtype):
    """Parameters of Linear, Conv2d, LSTM, Embedding, LayerNorm layers and a scalar, with
    gradients of mixed magnitudes so that some units are clipped and others are not."""
    layers = [nn.Linear(40, 24), nn.Conv2d(3, 8, 3), nn.Conv1d(4, 6, 5), nn.LSTM(10, 16),
              nn.Embedding(50, 12), nn.LayerNorm(24), nn.Linear(300, 300, bias=False)]
    params = [p for layer in layers for p in layer.parameters()]
    params.append(nn.Parameter(torch.tensor(0.5)))
    params.append(nn.Parameter(torch.zeros(7)))  # all-zero weight: the eps floor applies
    out = []
    for p in params:
        q = nn.Parameter(p.detach().to(dtype))
        g = torch.randn(p.shape, dtype=torch.float64)
        if q.dim() >= 2:  # per-row magnitudes from tiny to large
            g *= torch.logspace(-5, 0, q.shape[0], dtype=torch.float64).view(-1, *[1] * (q.dim() - 1))
        else:
            g *= 10 ** torch.empty(()).uniform_(-5, 0).item()
        q.grad = g.to(dtype)
        out.append(q)
    return out


def clone_params(params, dtype=None):
    out = []
    for p in params:
        q = nn.Parameter(p.detach().clone().to(dtype or p.dtype))
        q.grad = p.grad.clone().to(dtype or p.dtype)
        out.append(q)
    return out


@pytest.mark.parametrize("clip_factor", [0.01, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(dtype, clip_factor):
    ours = layer_params(dtype)
    ref = clone_params(ours)
    n = gradfast.adaptive_clip_grad_(ours, clip_factor=clip_factor)
    n_ref = reference_agc_(ref, clip_factor=clip_factor)
    assert n.dtype == torch.int64 and n.dim() == 0
    assert 0 < n_ref < sum(p.shape[0] if p.dim() > 1 else 1 for p in ref)  # a real mix
    assert n.item() == n_ref
    rtol = 5e-6 if dtype == torch.float32 else 1e-12
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.grad, q.grad, rtol=rtol, atol=0)
        assert torch.equal(p, q)  # parameters are only read


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_within_twice_torch_error(dtype):
    ours = layer_params(dtype)
    theirs = clone_params(ours)
    exact = clone_params(ours, torch.float64)
    gradfast.adaptive_clip_grad_(ours)
    reference_agc_(theirs)
    reference_agc_(exact)
    for p, q, e in zip(ours, theirs, exact):
        our_err = (p.grad.double() - e.grad).abs().max().item()
        their_err = (q.grad.double() - e.grad).abs().max().item()
        ulp = torch.finfo(dtype).eps * e.grad.abs().max().item()
        assert our_err <= max(2 * their_err, ulp), (p.shape, our_err, their_err)


def test_large_units_and_thread_count_independence():
    """Units longer than a 64K chunk go through the chunked path; results must not depend
    on the number of threads."""
    def make():
        torch.manual_seed(1)
        ps = [nn.Parameter(torch.randn(3, 100000)), nn.Parameter(torch.randn(200000)),
              nn.Parameter(torch.randn(70000, 2))]
        for p, s in zip(ps, [1e-1, 1e-6, 1.0]):
            p.grad = torch.randn(p.shape) * s
        return ps
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = make()
        gradfast.adaptive_clip_grad_(one)
        torch.set_num_threads(max(2, threads))
        many = make()
        gradfast.adaptive_clip_grad_(many)
    finally:
        torch.set_num_threads(threads)
    ref = make()
    reference_agc_(ref)
    for a, b, r in zip(one, many, ref):
        assert torch.equal(a.grad, b.grad)
        torch.testing.assert_close(a.grad, r.grad, rtol=5e-6, atol=0)


def test_torch_path_for_other_layouts():
    torch.manual_seed(2)
    w = nn.Parameter(torch.randn(32, 64).t())  # (64, 32) whose dim 0 is innermost in memory
    w.grad = torch.randn(32, 64).t() * 0.1
    v = nn.Parameter(torch.randn(10, 10))      # native, in the same call
    v.grad = torch.randn(10, 10) * 0.05
    s = nn.Parameter(torch.randn(20, 40)[:, ::2])  # not dense
    s.grad = torch.randn(20, 40)[:, ::2] * 0.3
    ours = [w, v, s]
    ref = clone_params(ours)
    n = gradfast.adaptive_clip_grad_(ours, clip_factor=0.02)
    assert n.item() == reference_agc_(ref, clip_factor=0.02)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.grad, q.grad, rtol=5e-6, atol=0)


def test_nonfinite_and_missing_grads_and_norm_type():
    p = nn.Parameter(torch.randn(4, 5))
    p.grad = torch.randn(4, 5)
    p.grad[1, 2] = float("nan")
    p.grad[3, 0] = float("inf")
    q = nn.Parameter(torch.randn(3))  # no gradient: skipped
    ref = clone_params([p])
    gradfast.adaptive_clip_grad_([p, q])
    reference_agc_(ref)
    torch.testing.assert_close(p.grad, ref[0].grad, equal_nan=True, rtol=5e-6, atol=0)
    assert q.grad is None
    for norm_type in (1.0, math.inf):
        ours = layer_params(torch.float64)
        ref = clone_params(ours)
        gradfast.adaptive_clip_grad_(ours, norm_type=norm_type)
        reference_agc_(ref, norm_type=norm_type)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=0)


def test_no_grads():
    n = gradfast.adaptive_clip_grad_([nn.Parameter(torch.ones(3))])
    assert n.item() == 0
