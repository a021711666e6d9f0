"""gradfast.grad_norms: per-tensor norms against torch.linalg.vector_norm, totals against
torch.nn.utils.get_total_norm, and the alignment of parameters without gradients."""
import math

import pytest
import torch

import gradfast
from devices import GPU
from gradfast.health.norms import aligned_per_tensor

SHAPES = [(33, 17), (5,), (), (4, 3, 5, 5), (70000,), (0,), (2, 65537)]
ORDERS = [2.0, 1.0, math.inf, 3.5, 0.0]


def _params(dtype, shapes=SHAPES, scale=1.0):
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, dtype=torch.float64).to(dtype))
        p.grad = (torch.randn(s, dtype=torch.float64) * scale).to(dtype)
        params.append(p)
    return params


def _ulp(x: torch.Tensor) -> torch.Tensor:
    """Spacing of the dtype's values near x (in fp64)."""
    finfo = torch.finfo(x.dtype)
    mag = x.double().abs().clamp(min=finfo.tiny)
    return torch.exp2(torch.floor(torch.log2(mag))) * finfo.eps


def _assert_within_torch_error(ours, theirs, exact):
    """|ours - exact| <= max(2 |torch - exact|, 2 ulp): at most twice torch's own error."""
    our_err = (ours.double() - exact).abs()
    their_err = (theirs.double() - exact).abs()
    bound = torch.maximum(2 * their_err, 2 * _ulp(theirs))
    assert torch.all(our_err <= bound), (our_err, their_err)


@pytest.mark.parametrize("p", ORDERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_tensor_matches_vector_norm(dtype, p):
    params = _params(dtype)
    if p == math.inf:  # torch cannot take the inf norm of an empty tensor
        params = [q for q in params if q.numel() > 0]
    total, per = gradfast.grad_norms(params, p)
    assert per.shape == (len(params),) and per.dtype == dtype
    theirs = torch.stack([torch.linalg.vector_norm(q.grad, p) for q in params])
    if dtype == torch.float32:  # fp64 serves as the exact reference
        exact = torch.stack([torch.linalg.vector_norm(q.grad.double(), p) for q in params])
        _assert_within_torch_error(per, theirs, exact)
    else:  # no wider dtype: a tight tolerance against torch
        torch.testing.assert_close(per, theirs, rtol=1e-11, atol=0)
    rtol = 1e-5 if dtype == torch.float32 else 1e-11
    # The total is gradfast.get_total_norm's, bit for bit, and torch's up to rounding.
    assert torch.equal(total, gradfast.get_total_norm([q.grad for q in params], p))
    if p != 0.0:  # L0 totals differ from torch 2.13 by design (count of elements)
        ref_total = torch.nn.utils.get_total_norm([q.grad for q in params], p)
        torch.testing.assert_close(total, ref_total, rtol=rtol, atol=0)


@pytest.mark.parametrize("p", [2.0, 1.0, math.inf])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_per_tensor_low_precision_within_twice_torch_error(dtype, p):
    params = _params(dtype, [(33, 17), (5,), (4, 3, 5, 5), (70000,)], scale=0.01)
    _, per = gradfast.grad_norms(params, p)
    assert per.dtype == dtype
    exact = torch.stack([torch.linalg.vector_norm(q.grad.double(), p) for q in params])
    theirs = torch.stack([torch.linalg.vector_norm(q.grad, p) for q in params])
    _assert_within_torch_error(per, theirs, exact)


def test_missing_grads_are_aligned_and_ignored_by_total():
    params = _params(torch.float32, [(3, 4), (5,), (6,), (2, 2)])
    params[1].grad = None
    params[3].grad = None
    total, per = gradfast.grad_norms(params)
    assert per.shape == (4,)
    assert math.isnan(per[1]) and math.isnan(per[3])
    torch.testing.assert_close(per[[0, 2]], torch.stack(
        [params[0].grad.norm(), params[2].grad.norm()]), rtol=0, atol=0)
    assert torch.equal(total, gradfast.get_total_norm([params[0].grad, params[2].grad]))
    _, per = gradfast.grad_norms(params, missing=-1.0)
    assert per[1] == -1 and per[3] == -1


def test_no_grads_at_all():
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    total, per = gradfast.grad_norms(params)
    assert total.item() == 0.0 and per.shape == (2,) and torch.isnan(per).all()
    total, per = gradfast.grad_norms([])
    assert total.item() == 0.0 and per.shape == (0,)


def test_mixed_dtypes_promote_and_keep_order():
    params = (_params(torch.float32, [(7, 3)]) + _params(torch.float64, [(5,)])
              + _params(torch.bfloat16, [(4, 4)]) + _params(torch.float32, [(9,)]))
    params[2].grad = None  # a gap between groups
    total, per = gradfast.grad_norms(params)
    assert per.dtype == torch.float64
    for i in (0, 1, 3):
        assert per[i].item() == pytest.approx(
            torch.linalg.vector_norm(params[i].grad).double().item(), rel=1e-6)
    assert math.isnan(per[2])
    assert torch.equal(total, gradfast.get_total_norm([q.grad for q in params if q.grad is not None]))


def test_single_tensor_and_generator():
    p = _params(torch.float32, [(10, 10)])[0]
    total, per = gradfast.grad_norms(p)
    assert per.shape == (1,) and per[0] == total
    total2, per2 = gradfast.grad_norms(q for q in [p])
    assert torch.equal(total, total2) and torch.equal(per, per2)


def test_torch_fallback_for_non_dense_grads_and_negative_orders():
    params = _params(torch.float32, [(10, 20), (5,)])
    params[0].grad = torch.randn(10, 40)[:, ::2]  # not dense: the native kernels refuse it
    total, per = gradfast.grad_norms(params)
    torch.testing.assert_close(per, torch.stack([q.grad.norm() for q in params]))
    torch.testing.assert_close(total, torch.nn.utils.get_total_norm([q.grad for q in params]))
    total, per = gradfast.grad_norms(params, -2.0)
    torch.testing.assert_close(per, torch.stack(
        [torch.linalg.vector_norm(q.grad, -2.0) for q in params]))


def test_inf_norm_of_empty_grad_raises_like_torch():
    params = _params(torch.float32, [(0,), (3,)])
    with pytest.raises(RuntimeError, match="infinity norm"):
        gradfast.grad_norms(params, math.inf)


def test_aligned_per_tensor_runs():
    a = torch.tensor([1.0, 2.0, 3.0])
    b = torch.tensor([10.0, 20.0])
    out = aligned_per_tensor(6, [([0, 2, 4], a), ([1, 3], b)], a.device, torch.float32,
                             positions=[0, 1, 2, 3, 5], missing=-1.0)
    assert out.tolist() == [1.0, 10.0, 2.0, 20.0, -1.0, 3.0]


def _model(device, dtype=torch.float32):
    """A small MLP with gradients on device."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(),
                                torch.nn.Linear(64, 8)).to(device.torch, dtype)
    model(torch.randn(16, 32, device=device.torch, dtype=dtype)).pow(2).sum().backward()
    return model


@pytest.mark.parametrize("device", GPU, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grad_norms_no_sync(device, dtype):
    model = _model(device, dtype)
    params = list(model.parameters())
    with device.no_sync():
        total, per = gradfast.grad_norms(params)
    ref = torch.stack([p.grad.norm() for p in params])
    torch.testing.assert_close(per, ref, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=0)
    assert torch.equal(total, gradfast.get_total_norm([p.grad for p in params]))
