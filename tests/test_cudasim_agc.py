"""The CUDA adaptive-gradient-clipping kernels (agc.cu: group mode, one-slice units, and
units of several slices with their second launch) run on the CPU by cudasim
(tools/cudasim), against the plain-torch reference and gradfast's CPU kernel."""
import math

import pytest
import torch
from torch import nn

import gradfast
from clip_helpers import FLOAT_DTYPES, dtype_id
from gradfast._native.norm_kind import norm_kind
from gradfast.health.agc import _unit_size
from test_health_agc import clone_params, layer_params, reference_agc_


def _params(dtype):
    """Real layers (group-mode units) plus units of one slice and of several slices."""
    params = layer_params(dtype)
    gen = torch.Generator().manual_seed(3)
    for shape in [(2, 5000), (3, 20000), (1, 8193)]:
        w = nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype))
        g = torch.randn(shape, generator=gen, dtype=torch.float64)
        g *= torch.logspace(-4, 0, shape[0], dtype=torch.float64).view(-1, 1)
        w.grad = g.to(dtype)
        params.append(w)
    return params


def _sim_agc(dev, params, p, clip_factor=0.01, eps=1e-3):
    units = [_unit_size(q.grad) for q in params]
    return dev.agc_([q.detach() for q in params], [q.grad for q in params], units,
                    norm_kind(p), p, clip_factor, eps)


@pytest.mark.parametrize("p", (2.0, 1.0, math.inf), ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_agc_matches_the_cpu_kernel_and_reference(sim_devices, dtype, p):
    base = _params(dtype)
    cpu = clone_params(base)
    cpu_count = int(gradfast.adaptive_clip_grad_(cpu, 0.01, 1e-3, norm_type=p))
    # The same tensors on every device: a unit's summation order follows its address's
    # 128-byte alignment (as for any view on a GPU), so clones could round differently.
    params = clone_params(base)
    results = []
    for dev in sim_devices:
        for q, b in zip(params, base):
            q.grad.copy_(b.grad)
        count = _sim_agc(dev, params, p)
        assert int(torch.count_nonzero(dev.workspaces["agc"][:16])) == 0  # counters reset
        results.append((count, [q.grad.clone() for q in params]))
    for count, grads in results[1:]:  # every grid size: the same bits
        assert count == results[0][0]
        assert all(torch.equal(a, b) for a, b in zip(grads, results[0][1]))
    count, grads = results[0]
    assert count == cpu_count > 0
    # Unit norms are summed in another order than on the CPU: a factor may differ by an ulp.
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 2 * torch.finfo(dtype).eps)
    for g, q in zip(grads, cpu):
        torch.testing.assert_close(g, q.grad, rtol=tol, atol=0)
    if dtype in (torch.float32, torch.float64):
        ref = clone_params(base)
        assert count == reference_agc_(ref, 0.01, 1e-3, norm_type=p)
        for g, q in zip(grads, ref):
            torch.testing.assert_close(g, q.grad, rtol=tol, atol=0)


def test_agc_count_restarts_each_call(sim_devices):
    dev = sim_devices[2]
    base = _params(torch.float32)
    first = _sim_agc(dev, clone_params(base), 2.0)
    assert dev.launches == 2  # units of several slices are scaled by a second launch
    again = _sim_agc(dev, clone_params(base), 2.0)
    assert first == again > 0
    assert _sim_agc(dev, clone_params(base), 2.0, clip_factor=1e6) == 0  # nothing clipped
    small = [q for q in clone_params(base) if _unit_size(q.grad) <= 8192]
    assert _sim_agc(dev, small, 2.0) > 0 and dev.launches == 1
