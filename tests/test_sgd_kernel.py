"""The native CPU SGD kernel (gradfast._native.sgd.sgd_step on the real back end) against
torch's for-loop SGD (torch.optim.SGD(foreach=False)) over 20+ steps of seeded random
configurations, and its first-step, skip, clip, unscale and L1 semantics."""
import math
import random

import pytest
import torch

from clip_helpers import FLOAT_DTYPES, LOW_PRECISION, bits, dtype_id
from sgd_kernels import cpu_step, make_state

SHAPES = [(), (0,), (7,), (37,), (1000,), (3, 5, 7), (2, 4097)]
STEPS = 20


def _configs(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        momentum = rng.choice([0.0, 0.9, 0.5])
        nesterov = momentum != 0 and rng.random() < 0.4
        dampening = 0.0 if nesterov or momentum == 0 else rng.choice([0.0, 0.1, 0.5])
        out.append(dict(momentum=momentum, dampening=dampening, nesterov=nesterov,
                        weight_decay=rng.choice([0.0, 1e-2, 0.3]),
                        maximize=rng.random() < 0.3))
    return out


CONFIGS = _configs(12, seed=1)


def _torch_run(params, grads_per_step, lr, cfg, dtype=None):
    ref = [torch.nn.Parameter(p.clone() if dtype is None else p.to(dtype)) for p in params]
    opt = torch.optim.SGD(ref, lr=lr, foreach=False, **cfg)
    for grads in grads_per_step:
        for r, g in zip(ref, grads):
            r.grad = g.clone() if dtype is None else g.to(dtype)
        opt.step()
    bufs = [opt.state[r].get("momentum_buffer") for r in ref]
    return [r.detach() for r in ref], bufs


def _grads(shapes, dtype, seed, steps=STEPS):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
            for _ in range(steps)]


def _gradfast_run(params, grads_per_step, lr, cfg, threads=1):
    state = make_state([p.shape for p in params], params[0].dtype,
                       momentum=cfg["momentum"] != 0)
    for dst, src in zip(state[0], params):
        dst.copy_(src)
    for grads in grads_per_step:
        for dst, src in zip(state[1], grads):
            dst.copy_(src)
        cpu_step(state, cfg, {"lr": lr}, threads=threads)
    return state


def _torch_uses_fma() -> bool:
    # torch's vectorised CPU add is an FMA from AVX2 on (its DEFAULT build has no FMA).
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


@pytest.mark.parametrize("cfg", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=dtype_id)
def test_matches_torch_for_loop(dtype, cfg):
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]
    grads = _grads(SHAPES, dtype, seed=4)
    ref, ref_bufs = _torch_run(params, grads, 0.05, cfg)
    state = _gradfast_run(params, grads, 0.05, cfg)
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    for p, r in zip(state[0], ref):
        torch.testing.assert_close(p, r, **tol)
    if cfg["momentum"]:
        for b, r in zip(state[2], ref_bufs):
            torch.testing.assert_close(b, r, **tol)
        assert all(int(f) == 0 for f in state[3])
    if _torch_uses_fma():
        # The same operations, FMAs included, in the same order: bitwise torch's.
        for p, r in zip(state[0], ref):
            assert torch.equal(bits(p), bits(r))


@pytest.mark.parametrize("cfg", CONFIGS[:6], ids=[str(i) for i in range(6)])
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=dtype_id)
def test_low_precision_error_at_most_twice_torchs(dtype, cfg):
    gen = torch.Generator().manual_seed(5)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]
    grads = _grads(SHAPES, dtype, seed=6)
    exact, _ = _torch_run(params, grads, 0.05, cfg, dtype=torch.float64)
    ref, _ = _torch_run(params, grads, 0.05, cfg)
    state = _gradfast_run(params, grads, 0.05, cfg)
    # Over every element of every tensor (one element alone is a coin toss of roundings).
    ours = torch.cat([(p.double() - e).abs().flatten() for p, e in zip(state[0], exact)])
    torchs = torch.cat([(r.double() - e).abs().flatten() for r, e in zip(ref, exact)])
    assert ours.max() <= 2 * torchs.max(), (ours.max(), torchs.max())
    assert ours.mean() <= 2 * torchs.mean(), (ours.mean(), torchs.mean())


@pytest.mark.parametrize("threads", (1, 2, 3))
def test_threads_do_not_change_bits(threads):
    cfg = dict(momentum=0.9, dampening=0.1, nesterov=False, weight_decay=1e-2, maximize=True)
    shapes = [(70000,), (3,), (140001,)]
    params = [torch.randn(s) for s in shapes]
    grads = _grads(shapes, torch.float32, seed=7, steps=3)
    one = _gradfast_run(params, grads, 0.1, cfg, threads=1)
    many = _gradfast_run(params, grads, 0.1, cfg, threads=threads)
    for a, b in zip(one[0] + one[2], many[0] + many[2]):
        assert torch.equal(bits(a), bits(b))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_skipped_step_changes_nothing_and_keeps_first(dtype):
    """found_inf (and a non-finite norm with skip_nonfinite) skip on the "device": nothing
    changes, the first-step flags stay set, so the next step is still torch's first."""
    cfg = dict(momentum=0.9, dampening=0.5, nesterov=False, weight_decay=0.0, maximize=False)
    state = make_state(SHAPES, dtype)
    before = [[t.clone() for t in lst] for lst in state]
    skipped = torch.zeros((), dtype=torch.int64)
    cpu_step(state, cfg, {"lr": 0.1, "grad_scale": torch.tensor(2.0),
                              "found_inf": torch.tensor(1.0)}, skipped=skipped)
    cpu_step(state, cfg, {"lr": 0.1, "total": torch.tensor(math.nan, dtype=dtype),
                              "skip_nonfinite": True}, skipped=skipped)
    for lst, old in zip(state, before):
        for a, b in zip(lst, old):
            assert torch.equal(bits(a), bits(b))
    assert skipped.item() == 2
    # Now a real first step: buf = grad exactly (no dampening), as torch's first step.
    grads = [g.clone() for g in state[1]]
    cpu_step(state, cfg, {"lr": 0.1}, skipped=skipped)
    for b, g in zip(state[2], grads):
        assert torch.equal(bits(b), bits(g))
    assert all(int(f) == 0 for f in state[3]) and skipped.item() == 2


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_clip_is_torchs_clip_grad_norm_then_sgd(dtype):
    cfg = dict(momentum=0.9, dampening=0.0, nesterov=True, weight_decay=1e-2, maximize=False)
    state = make_state(SHAPES, dtype, seed=8)
    ref = [torch.nn.Parameter(p.clone()) for p in state[0]]
    for r, g in zip(ref, state[1]):
        r.grad = g.clone()
    total = torch.nn.utils.clip_grad_norm_(ref, 0.05, foreach=False)
    torch.optim.SGD(ref, lr=0.1, foreach=False, **cfg).step()
    assert total.dtype == dtype
    cpu_step(state, cfg, {"lr": 0.1, "total": total, "clip": True, "max_norm": 0.05})
    for p, r in zip(state[0], ref):
        if dtype in LOW_PRECISION:  # torch rounds the intermediates to the dtype
            torch.testing.assert_close(p, r.detach(), rtol=2e-2, atol=1e-2)
        else:
            assert torch.equal(bits(p), bits(r.detach()))


def test_clip_threshold_tensor_and_lr_tensor():
    cfg = dict(momentum=0.5, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=True)
    a, b = make_state(SHAPES, torch.float32, seed=9), make_state(SHAPES, torch.float32, seed=9)
    total = torch.tensor(4.0)
    cpu_step(a, cfg, {"lr": 0.0, "lr_t": torch.tensor(0.1, dtype=torch.float64),
                          "total": total, "clip": True, "max_norm_t": torch.tensor(2.0)})
    coef = torch.clamp(torch.tensor(2.0) / (total + 1e-6), max=1.0)
    for g in b[1]:
        g.mul_(coef)
    cpu_step(b, cfg, {"lr": 0.1})
    for x, y in zip(a[0] + a[2], b[0] + b[2]):
        assert torch.equal(bits(x), bits(y))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_unscale_divides_and_stores_the_unscaled_grad(dtype):
    cfg = dict(momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False)
    a, b = make_state(SHAPES, dtype, seed=10), make_state(SHAPES, dtype, seed=10)
    for g in a[1]:
        g.mul_(1024.0)
    cpu_step(a, cfg, {"lr": 0.1, "grad_scale": torch.tensor(1024.0),
                          "found_inf": torch.tensor(0.0)})
    cpu_step(b, cfg, {"lr": 0.1})
    for x, y in zip(a[0] + a[1] + a[2], b[0] + b[1] + b[2]):
        assert torch.equal(bits(x), bits(y))


def test_l1_adds_sign_of_p_before_the_momentum():
    cfg = dict(momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False)
    a, b = make_state(SHAPES, torch.float64, seed=11), make_state(SHAPES, torch.float64, seed=11)
    for _ in range(3):
        for g, p in zip(b[1], b[0]):
            g.copy_(torch.ones_like(g) * 0.25)
        for g in a[1]:
            g.fill_(0.25)
        for g, p in zip(b[1], b[0]):
            g.add_(1e-2 * torch.sign(p))
        cpu_step(a, dict(cfg, l1=1e-2), {"lr": 0.1})
        cpu_step(b, cfg, {"lr": 0.1})
    for x, y in zip(a[0] + a[2], b[0] + b[2]):
        assert torch.equal(bits(x), bits(y))
