"""The CPU's one-call step: when one (device, dtype) group holds every grad of a step, the
fused optimizers compute the global norm and the update in one native call
(gradfast.optim._fused.one_call_kind, csrc/bindings/norm_first.h).

It must give bitwise the two calls' results (the norm kernel, then the update reading its
output): the same step forced through the two calls is the reference. And it must be
chosen exactly where it applies.
"""
import math

import pytest
import torch

import gradfast
from gradfast._native import adam as native_adam
from gradfast._native import backend as native_backend
from gradfast._native import norm as native_norm
from gradfast._native import sgd as native_sgd
from gradfast._native.norm_kind import INF, L1, L2
from gradfast.optim import SGD, Adam, AdamW
from gradfast.optim._fused import WorkItem, one_call_kind

from clip_helpers import bits

CPU = torch.device("cpu")
SHAPES = [(70001,), (5, 7), (), (300,), (0,)]

OPTIMIZERS = {
    "adam": (Adam, dict(lr=1e-2)),
    "adam-amsgrad-l2": (Adam, dict(lr=1e-2, amsgrad=True, weight_decay=0.1)),
    "adamw-l1-max": (AdamW, dict(lr=1e-2, l1_weight_decay=1e-3, maximize=True)),
    "sgd-momentum": (SGD, dict(lr=1e-2, momentum=0.9, weight_decay=1e-2)),
    "sgd-nesterov": (SGD, dict(lr=1e-2, momentum=0.9, nesterov=True, l1_weight_decay=1e-3)),
    "sgd-plain": (SGD, dict(lr=1e-2)),
}
NORMS = [
    dict(max_grad_norm=0.5),
    dict(max_grad_norm=torch.tensor(0.3, dtype=torch.float64), skip_nonfinite=True),
    dict(skip_nonfinite=True),
    dict(max_grad_norm=0.5, grad_norm_type=math.inf),
    dict(max_grad_norm=0.5, grad_norm_type=1.0, lr=torch.tensor(3e-3)),
    dict(max_grad_norm=0.5, grad_norm_type=3.0),
]


def two_calls(opt):
    """opt with the one-call selection turned off (the norm kernel, then the update)."""
    opt._fused_norm_kind = lambda work, norm_types: None
    return opt


def _equal(a, b):
    return torch.equal(bits(a), bits(b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("norm", NORMS, ids=str)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_one_call_is_bitwise_the_two_calls(name, norm, dtype, monkeypatch):
    cls, kw = OPTIMIZERS[name]
    calls = []
    for mod, fn in ((native_adam, "adam_step"), (native_sgd, "sgd_step")):
        real = getattr(mod, fn)

        def spy(*a, _real=real, **k):
            calls.append(len(a) > 5 and a[5] is not None)  # the norm= argument
            return _real(*a, **k)
        monkeypatch.setattr(mod, fn, spy)
    g = torch.Generator().manual_seed(2)
    # (An infinity norm over an empty tensor is torch's error, tested elsewhere.)
    shapes = [s for s in SHAPES if s != (0,) or norm.get("grad_norm_type") != math.inf]
    base = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
    a = [torch.nn.Parameter(t.clone()) for t in base]
    b = [torch.nn.Parameter(t.clone()) for t in base]
    kw = dict(kw, **norm)
    opt_a, opt_b = cls(a, **kw), two_calls(cls(b, **kw))
    for i in range(5):
        grads = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype)
                 * (1e-3 if i % 2 else 3.0) for t in base]
        if i == 3:
            grads[0][5] = math.nan  # skipped with skip_nonfinite, NaN everywhere without
        for ps, opt in ((a, opt_a), (b, opt_b)):
            for p, gr in zip(ps, grads):
                p.grad = gr.clone()
            calls.clear()
            opt.step()
            assert calls == [opt is opt_a]  # one native step call; norm= only in opt_a's
        for p, q in zip(a, b):
            assert _equal(p, q)
            assert set(opt_a.state[p]) == set(opt_b.state[q])
            for k in opt_a.state[p]:
                assert _equal(opt_a.state[p][k], opt_b.state[q][k])
        assert _equal(opt_a.grad_norm, opt_b.grad_norm)
        assert _equal(opt_a.skipped_steps, opt_b.skipped_steps)
    if norm.get("skip_nonfinite"):
        assert int(opt_a.skipped_steps) == 1


def test_one_call_with_grad_scaler_matches_two_calls():
    # GradScaler on the CPU: the kernel unscales, found_inf skips; the reported norm is the
    # unscaled one.
    g = torch.Generator().manual_seed(5)
    base = [torch.randn(s, generator=g) for s in [(64,), (3, 3)]]
    a = [torch.nn.Parameter(t.clone()) for t in base]
    b = [torch.nn.Parameter(t.clone()) for t in base]
    opt_a = Adam(a, lr=1e-2, max_grad_norm=0.5)
    opt_b = two_calls(Adam(b, lr=1e-2, max_grad_norm=0.5))
    sc_a = torch.amp.GradScaler("cpu", init_scale=1024.0)
    sc_b = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for i in range(4):
        grads = [torch.randn(t.shape, generator=g) for t in base]
        if i == 2:
            grads[1][0, 0] = math.inf
        for ps, opt, sc in ((a, opt_a, sc_a), (b, opt_b, sc_b)):
            sc.scale(torch.ones(()))  # (what scaler.scale(loss) sets up)
            for p, gr in zip(ps, grads):
                p.grad = gr * sc.get_scale()
            sc.step(opt)
            sc.update()
        for p, q in zip(a, b):
            assert _equal(p, q)
        assert _equal(opt_a.grad_norm, opt_b.grad_norm)
        assert sc_a.get_scale() == sc_b.get_scale()


def _item(max_grad_norm=1.0, split=((CPU, None),)):
    return WorkItem({"max_grad_norm": max_grad_norm}, None, [], list(split), None)


def test_selection():
    assert one_call_kind([_item()], {2.0}) == L2
    assert one_call_kind([_item()], {1.0}) == L1
    assert one_call_kind([_item()], {math.inf}) == INF
    assert one_call_kind([_item(None)], {2.0}) == L2  # skip_nonfinite only
    assert one_call_kind([_item(torch.tensor(0.5))], {2.0}) == L2
    assert one_call_kind([_item(), _item()], {2.0}) is None  # two parameter groups
    two_splits = [_item(split=((CPU, [0]), (CPU, [1])))]  # two dtypes
    assert one_call_kind(two_splits, {2.0}) is None
    assert one_call_kind([_item(split=((torch.device("cuda", 0), None),))], {2.0}) is None
    assert one_call_kind([_item()], set()) is None  # no norm this step
    assert one_call_kind([_item()], {-1.0}) is None  # torch's own norm
    assert one_call_kind([_item()], {math.nan}) is None
    # AutoClip's threshold is computed from the norm, between the two calls.
    assert one_call_kind([_item(gradfast.AutoClip())], {2.0}) is None


def test_not_selected_on_the_simulator():
    # The simulator's CPU tensors run the CUDA kernels, which take a computed norm.
    sim = native_backend.Backend(native_backend.current().lib, simulated=0)
    with native_backend.use(sim):
        assert one_call_kind([_item()], {2.0}) is None
    assert one_call_kind([_item()], {2.0}) == L2


@pytest.mark.parametrize("cls", [Adam, SGD])
def test_two_groups_or_autoclip_take_the_two_calls(cls, monkeypatch):
    calls = []
    real = native_norm.group_total
    monkeypatch.setattr(native_norm, "group_total",
                        lambda *a: calls.append("norm") or real(*a))
    p1, p2 = torch.nn.Parameter(torch.randn(10)), torch.nn.Parameter(torch.randn(4))
    for p in (p1, p2):
        p.grad = torch.randn(p.shape)
    cls([{"params": [p1]}, {"params": [p2]}], lr=1e-2, max_grad_norm=1.0).step()
    cls([p1, p2], lr=1e-2, max_grad_norm=gradfast.AutoClip()).step()
    cls([p1, p2], lr=1e-2, max_grad_norm=1.0).step()  # one call: no separate norm
    # The two groups' norm is a total over both (total_norm); AutoClip's is group_total.
    assert calls == ["norm"]
