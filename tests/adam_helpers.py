"""Builders and comparisons shared by the Adam tests (test_adam.py on every device,
test_adam_plan.py, ...): parameters from a seed, identical copies, gradients, and the state
comparison of two optimizers run side by side."""
from __future__ import annotations

import torch

from devices import allocator_aligned


def make_params(dtype, shapes, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
            for s in shapes]


def clone_params(ps):
    return [torch.nn.Parameter(p.detach().clone()) for p in ps]


def set_grads(param_lists, grads):
    """A copy of each gradient on each list's parameters. CPU copies start on a 512-byte
    boundary, as CUDA allocations do: on cudasim the CUDA norm's last bit depends on the
    address modulo 128 bytes (devices.allocator_aligned), and the tests compare runs
    bitwise."""
    for params in param_lists:
        for p, g in zip(params, grads):
            if g is None:
                p.grad = None
            elif g.is_cpu and g.is_contiguous():
                p.grad = allocator_aligned(g)
            else:
                p.grad = g.clone()


def random_grads(params, gen, drop=0.0, scale=1.0):
    """fp64 normal values rounded to each parameter's dtype, on its device; with drop, that
    share of the parameters gets None (the generator is then also used for the draws)."""
    out = []
    for p in params:
        if drop and torch.rand((), generator=gen).item() < drop:
            out.append(None)
        else:
            out.append((torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale)
                       .to(device=p.device, dtype=p.dtype))
    return out


def assert_state_close(opt_a, params_a, opt_b, params_b, *, fused_step_layout=False, **kw):
    """Parameters and every state entry close (steps equal). fused_step_layout: opt_a's
    steps must also be fp32 tensors on their parameter's device, as torch's fused Adam
    keeps them."""
    for pa, pb in zip(params_a, params_b):
        torch.testing.assert_close(pa.detach(), pb.detach(), **kw)
        sa, sb = opt_a.state.get(pa, {}), opt_b.state.get(pb, {})
        assert set(sa) == set(sb)
        for key in sa:
            a, b = sa[key], sb[key]
            if key == "step":
                if fused_step_layout:
                    assert a.device == pa.device and a.dtype == torch.float32
                assert float(a) == float(b)
            else:
                torch.testing.assert_close(a, b, **kw)
