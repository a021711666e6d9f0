"""Ports of torch's clip-grad tests from test/test_nn.py (test_clip_grad_norm,
test_clip_grad_value, their foreach variants, test_clip_grad_norm_error_if_nonfinite,
mixed dtypes) run against gradfast's drop-in functions, plus gradfast's documented
differences, asserted as documented: norm_type=0 counts nonzero elements, and the
optimizers refuse differentiable=True and complex parameters."""
import math
import warnings
from itertools import product

import pytest
import torch
from torch import nn

import gradfast
from gradfast import clip_grad_norm_, clip_grad_value_, get_total_norm

inf, nan = math.inf, math.nan
NORMS = [0.5, 1.5, 2, 4, "inf"]


def linear():
    torch.manual_seed(0)
    return nn.Linear(10, 10)


def compute_norm(params, norm_type):
    norm_type = float(norm_type)
    if norm_type != inf:
        total = sum(p.grad.abs().pow(norm_type).sum() for p in params)
        return pow(total, 1.0 / norm_type)
    return max(p.grad.abs().max() for p in params)


def common_scale(params, grads):
    scale = torch.cat([p.grad.div(g).view(-1) for p, g in zip(params, grads)])
    assert scale.std().item() == pytest.approx(0, abs=1e-6)
    return scale[0]


@pytest.mark.parametrize("foreach", [None, False, True])
def test_clip_grad_norm(foreach):
    l = linear()
    params = list(l.parameters())
    max_norm = 2
    grads = torch.arange(1.0, 101).view(10, 10), torch.ones(10).div(1000)
    for norm_type in NORMS:
        for p, g in zip(params, grads):
            p.grad = g.clone().view_as(p)
        before = compute_norm(params, norm_type)
        norm = clip_grad_norm_(l.parameters(), max_norm, norm_type=norm_type, foreach=foreach)
        after = compute_norm(params, norm_type)
        torch.testing.assert_close(norm, before)
        torch.testing.assert_close(after, torch.tensor(float(max_norm)))
        assert after <= before
        common_scale(params, grads)
    # Small gradients are left unchanged.
    grads = torch.rand(10, 10).div(10000), torch.ones(10).div(500)
    for norm_type in NORMS:
        for p, g in zip(params, grads):
            p.grad.copy_(g)
        before = compute_norm(params, norm_type)
        norm = clip_grad_norm_(l.parameters(), max_norm, norm_type=norm_type, foreach=foreach)
        after = compute_norm(params, norm_type)
        torch.testing.assert_close(norm, before)
        torch.testing.assert_close(after, before)
        assert after <= max_norm
        assert common_scale(params, grads).item() == pytest.approx(1.0, abs=1e-6)
    # A single Tensor is accepted.
    p1, p2 = torch.randn(10, 10), torch.randn(10, 10)
    g = torch.arange(1.0, 101).view(10, 10)
    p1.grad, p2.grad = g.clone(), g.clone()
    for norm_type in NORMS:
        clip_grad_norm_(p1, max_norm, norm_type=norm_type, foreach=foreach)
        clip_grad_norm_([p2], max_norm, norm_type=norm_type, foreach=foreach)
        assert torch.equal(p1.grad, p2.grad)
    # An exhausted generator warns, as torch does.
    gen = l.parameters()
    for _ in gen:
        pass
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        clip_grad_norm_(gen, max_norm, foreach=foreach)
    assert [str(x.message) for x in w] == [
        "`parameters` is an empty generator, no gradient clipping will occur."]


@pytest.mark.parametrize("norm_type", NORMS + [1, 3.0, -1.0, -inf])
def test_clip_grad_norm_equals_torch(norm_type):
    l, ref = linear(), linear()
    g = torch.Generator().manual_seed(1)
    for p, q in zip(l.parameters(), ref.parameters()):
        p.grad = torch.randn(p.shape, generator=g) * 5
        q.grad = p.grad.clone()
    ours = clip_grad_norm_(l.parameters(), 1.0, norm_type)
    want = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0, norm_type)
    torch.testing.assert_close(ours, want)
    for p, q in zip(l.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


@pytest.mark.parametrize("foreach", [None, False, True])
def test_clip_grad_value(foreach):
    l = linear()
    clip_value = 2.5
    grad_w, grad_b = torch.arange(-50.0, 50).view(10, 10).div_(5), torch.ones(10).mul_(2)
    for grad_list in ([grad_w, grad_b], [grad_w, None]):
        for p, g in zip(l.parameters(), grad_list):
            p.grad = g.clone().view_as(p) if g is not None else g
        clip_grad_value_(l.parameters(), clip_value, foreach=foreach)
        for p in (p for p in l.parameters() if p.grad is not None):
            assert p.grad.max() <= clip_value and p.grad.min() >= -clip_value
    p1, p2 = torch.randn(10, 10), torch.randn(10, 10)
    g = torch.arange(-50.0, 50).view(10, 10).div_(5)
    p1.grad, p2.grad = g.clone(), g.clone()
    clip_grad_value_(p1, clip_value, foreach=foreach)
    clip_grad_value_([p2], clip_value, foreach=foreach)
    assert torch.equal(p1.grad, p2.grad)
    ref = g.clone().clamp_(-clip_value, clip_value)
    assert torch.equal(p1.grad, ref)


NORMS_POS = [0.1, 1, 2, 3.5, inf]
NORMS_NEG = [-0.1, -1, -2, -3.5]
NORMS_EXCEPT_0 = NORMS_POS + NORMS_NEG
NORMS_ALL = NORMS_EXCEPT_0 + [0]
# (grad_only_one_elem, prefix_finite_grad_param, scalars, norms_nonfinite, norms_finite),
# torch's table.
NONFINITE_CASES = [
    (False, False, [inf, -inf], NORMS_EXCEPT_0, [0]),
    (False, True, [inf, -inf], NORMS_POS, NORMS_NEG + [0]),
    (True, False, [inf, -inf], NORMS_POS, NORMS_NEG + [0]),
    (True, True, [inf, -inf], NORMS_POS, NORMS_NEG + [0]),
    (False, False, [nan], NORMS_EXCEPT_0, [0]),
    (False, True, [nan], NORMS_EXCEPT_0, [0]),
    (True, False, [nan], NORMS_EXCEPT_0, [0]),
    (True, True, [nan], NORMS_EXCEPT_0, [0]),
    (False, False, [2e22, -2e22], [], NORMS_ALL),
    (False, True, [2e22, -2e22], [], NORMS_ALL),
    (True, False, [2e22, -2e22], [], NORMS_ALL),
    (True, True, [2e22, -2e22], [], NORMS_ALL),
    (False, False, [2e200, -2e200], [3.5, 2, -2, -3.5], [inf, 1, 0.1, 0, -1, -0.1]),
    (False, True, [2e200, -2e200], [3.5, 2], NORMS_NEG + [inf, 1, 0.1, 0]),
    (True, False, [2e200, -2e200], [3.5, 2], NORMS_NEG + [inf, 1, 0.1, 0]),
    (True, True, [2e200, -2e200], [3.5, 2], NORMS_NEG + [inf, 1, 0.1, 0]),
]


def gen_parameters(scalar, grad_only_one_elem, prefix_finite_grad_param):
    param = torch.ones(10, dtype=torch.float64, requires_grad=True)
    if grad_only_one_elem:
        param[1].mul(scalar).sum().backward()
    else:
        param.mul(scalar).sum().backward()
    if prefix_finite_grad_param:
        prefix = torch.ones(1, dtype=torch.float64, requires_grad=True)
        prefix.mul(1).sum().backward()
        return [prefix, param]
    return [param]


@pytest.mark.parametrize("case", range(len(NONFINITE_CASES)))
def test_clip_grad_norm_error_if_nonfinite(case):
    one_elem, prefix, scalars, norms_nonfinite, norms_finite = NONFINITE_CASES[case]
    for error_if_nonfinite in (False, True):
        for nonfinite, norms in ((True, norms_nonfinite), (False, norms_finite)):
            for norm_type, scalar in product(norms, scalars):
                params = gen_parameters(scalar, one_elem, prefix)
                ref = gen_parameters(scalar, one_elem, prefix)
                if nonfinite and error_if_nonfinite:
                    before = [p.grad.clone() for p in params]
                    with pytest.raises(RuntimeError) as got:
                        clip_grad_norm_(params, 1, norm_type=norm_type, error_if_nonfinite=True)
                    with pytest.raises(RuntimeError) as want:
                        torch.nn.utils.clip_grad_norm_(ref, 1, norm_type=norm_type,
                                                       error_if_nonfinite=True)
                    assert str(got.value) == str(want.value)
                    assert f"The total norm of order {float(norm_type)} for gradients" in \
                        str(got.value)
                    for b, p in zip(before, params):  # untouched when it raises
                        torch.testing.assert_close(b, p.grad, equal_nan=True)
                else:
                    total = clip_grad_norm_(params, 1, norm_type=norm_type,
                                            error_if_nonfinite=error_if_nonfinite)
                    assert math.isfinite(total.item()) != nonfinite, (norm_type, scalar)


def test_mixed_dtypes_total_norm_equals_torch():
    # test_clip_grad_norm_multi_device, device-agnostic part: tensors of several dtypes
    # (each dtype's per-tensor norms are rounded to that dtype, then combined in fp64, as
    # torch does; the per-tensor sums are accumulated in another order, so not bitwise).
    ts = [torch.randn(7, dtype=torch.float32), torch.randn(3, 3, dtype=torch.float64),
          torch.randn(5, dtype=torch.bfloat16)]
    for norm_type in (1.0, 2.0, inf):
        ours = get_total_norm(ts, norm_type)
        want = torch.nn.utils.get_total_norm(ts, norm_type)
        assert ours.dtype == want.dtype
        torch.testing.assert_close(ours, want)


# ---- documented differences, asserted ------------------------------------------------------

def test_norm_type_0_counts_nonzero_elements():
    # gradfast's documented L0: nonzero elements. torch 2.13 counts the tensors that hold
    # any nonzero element.
    a, b = torch.zeros(6), torch.zeros(4)
    a[:3], b[1] = 1.0, -2.0
    pa, pb = nn.Parameter(torch.zeros(6)), nn.Parameter(torch.zeros(4))
    pa.grad, pb.grad = a.clone(), b.clone()
    assert get_total_norm([a, b], 0).item() == 4.0
    assert clip_grad_norm_([pa, pb], 100.0, norm_type=0).item() == 4.0
    assert torch.nn.utils.get_total_norm([a, b], 0).item() == 2.0


@pytest.mark.parametrize("cls", [gradfast.optim.Adam, gradfast.optim.AdamW])
def test_optimizers_refuse_differentiable_and_complex(cls):
    p = nn.Parameter(torch.randn(3))
    with pytest.raises(RuntimeError, match="does not support differentiable=True"):
        cls([p], differentiable=True)
    torch.optim.Adam([p], differentiable=True)  # torch accepts it
    c = nn.Parameter(torch.randn(3, dtype=torch.complex64))
    with pytest.raises(RuntimeError, match="does not support complex parameters"):
        cls([c])
    torch.optim.Adam([c])  # torch accepts it
