"""The optimizers' public register_step_norms_hook (what GradMonitor.attach uses), the
GradScaler fused unscale/skip path (kept for fp16) next to the _step_supports_amp_scaling
answer frameworks read, and the torch fallback for parameters that are not dense."""
import copy
import pickle

import pytest
import torch

import gradfast
from gradfast.optim import Adam, AdamW


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))


def backward(model, scaler=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    model.zero_grad()
    loss = model(torch.randn(5, 4, generator=g)).pow(2).sum()
    (loss if scaler is None else scaler.scale(loss)).backward()


@pytest.mark.parametrize("max_norm", [None, 0.5, "tensor", "autoclip"])
@pytest.mark.parametrize("hook_order", [2.0, 1.0, "inf"])
def test_hook_record(max_norm, hook_order):
    m = net()
    threshold = {"tensor": torch.tensor(0.5), "autoclip": gradfast.AutoClip()}.get(
        max_norm, max_norm)
    opt = AdamW(m.parameters(), lr=1e-2, max_grad_norm=threshold)
    records = []
    handle = opt.register_step_norms_hook(lambda o, r: records.append((o, r)),
                                          norm_type=hook_order)
    backward(m)
    grads = [p.grad.clone() for p in m.parameters()]  # pre-clip
    opt.step()
    (o, rec), = records
    assert o is opt
    assert rec.params == list(m.parameters())
    assert rec.total.dtype == torch.float32 and rec.total.dim() == 0
    torch.testing.assert_close(rec.total, torch.nn.utils.get_total_norm(grads, hook_order))
    torch.testing.assert_close(rec.per_tensor, torch.stack(
        [torch.linalg.vector_norm(g, float(hook_order)) for g in grads]))
    assert rec.skipped.dtype == torch.bool and not rec.skipped
    if max_norm is None:
        assert rec.max_norm is None
    elif max_norm == "autoclip":
        assert rec.max_norm is threshold.last_threshold
    else:
        assert float(rec.max_norm) == 0.5
    handle.remove()
    backward(m)
    opt.step()
    assert len(records) == 1


def test_hook_shares_the_clip_norm_pass_and_unscales_under_grad_scaler():
    m, ref = net(), net()
    opt = Adam(m.parameters(), lr=1e-2, max_grad_norm=1.0)
    records = []
    opt.register_step_norms_hook(lambda o, r: records.append(r))
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    backward(m, scaler)
    backward(ref)
    scaler.step(opt)
    want = torch.nn.utils.get_total_norm([p.grad for p in ref.parameters()])
    torch.testing.assert_close(records[0].total, want)
    torch.testing.assert_close(opt.grad_norm, want)


def test_hook_sees_skipped_steps():
    m = net()
    opt = Adam(m.parameters(), lr=1e-2, skip_nonfinite=True)
    records = []
    opt.register_step_norms_hook(lambda o, r: records.append(r))
    backward(m)
    next(m.parameters()).grad[0, 0] = float("inf")
    before = [p.detach().clone() for p in m.parameters()]
    opt.step()
    assert bool(records[0].skipped) and int(opt.skipped_steps) == 1
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), before))


def test_hooks_are_not_pickled_or_deep_copied():
    m = net()
    opt = Adam(m.parameters())
    opt.register_step_norms_hook(lambda o, r: None)
    backward(m)
    opt.step()
    for clone in (pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt)):
        assert len(clone._gf_norm_hooks) == 0
        backward(m)
        clone.step()


def test_grad_scaler_keeps_the_fused_unscale_and_skip(monkeypatch):
    # GradScaler.step hands gradfast grad_scale/found_inf (the kernel unscales and skips on
    # the device); GradScaler never unscales the grads itself (only its inf check, with a
    # dummy scale of 1). Anyone else reading the flag (Lightning, accelerate) sees False,
    # so they unscale through the scaler before clipping.
    m, ref = net(), net()
    opt = AdamW(m.parameters(), lr=1e-2)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, fused=True)
    assert opt._step_supports_amp_scaling is False
    scales = []
    real = torch.amp.GradScaler._unscale_grads_

    def spy(self, optimizer, inv_scale, found_inf, allow_fp16):
        if optimizer is opt:
            scales.append(float(inv_scale))
        return real(self, optimizer, inv_scale, found_inf, allow_fp16)

    monkeypatch.setattr(torch.amp.GradScaler, "_unscale_grads_", spy)
    scaler, ref_scaler = torch.amp.GradScaler("cpu", init_scale=512.0), \
        torch.amp.GradScaler("cpu", init_scale=512.0)
    for step in range(4):
        backward(m, scaler, seed=step)
        backward(ref, ref_scaler, seed=step)
        if step == 2:  # an overflow: both skip
            next(m.parameters()).grad[0, 0] = float("inf")
            next(ref.parameters()).grad[0, 0] = float("inf")
        scaler.step(opt)
        ref_scaler.step(ref_opt)
        scaler.update()
        ref_scaler.update()
    assert scales and all(s == 1.0 for s in scales)
    for p, q in zip(m.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert int(opt.skipped_steps) == 1 and scaler.get_scale() == ref_scaler.get_scale()


def test_unscale_then_clip_then_step_still_skips_on_found_inf():
    # What Lightning (fp16) and accelerate do once the flag reads False: scaler.unscale_,
    # clip, scaler.step. GradScaler.step then passes found_inf and no grad_scale.
    m = net()
    opt = Adam(m.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=64.0)
    backward(m, scaler)
    next(m.parameters()).grad[0, 0] = float("nan")
    before = [p.detach().clone() for p in m.parameters()]
    scaler.unscale_(opt)
    gradfast.clip_grad_norm_(m.parameters(), 1.0)
    scaler.step(opt)
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), before))


@pytest.mark.parametrize("extras", [{}, {"max_grad_norm": 0.3}, {"l1_weight_decay": 0.01},
                                    {"l1_weight_decay": 0.01, "maximize": True},
                                    {"max_grad_norm": 0.3, "amsgrad": True}])
def test_non_dense_params_step_through_torch(extras):
    # A view with gaps (x[..., 0]) steps through torch's for-loop Adam, next to dense
    # params stepped natively, within one global clip norm: the same numbers as a dense
    # copy stepped natively (up to the kernels' rounding) and exactly torch's for-loop
    # when gradfast adds nothing.
    torch.manual_seed(0)
    view = torch.nn.Parameter(torch.randn(6, 5, 2)[..., 0])
    dense = torch.nn.Parameter(torch.randn(7))
    view_c = torch.nn.Parameter(view.detach().clone())
    dense_c = torch.nn.Parameter(dense.detach().clone())
    opt = AdamW([view, dense], lr=1e-2, **extras)
    ref = AdamW([view_c, dense_c], lr=1e-2, **extras)
    for s in range(4):
        g = torch.Generator().manual_seed(s)
        gv, gd = torch.randn(6, 5, generator=g), torch.randn(7, generator=g)
        view.grad, dense.grad = gv.clone(), gd.clone()
        view_c.grad, dense_c.grad = gv.clone(), gd.clone()
        opt.step()
        ref.step()
    assert not view.is_contiguous()
    torch.testing.assert_close(view, view_c, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dense, dense_c, rtol=1e-6, atol=1e-6)
    if "max_grad_norm" in extras:
        torch.testing.assert_close(opt.grad_norm, ref.grad_norm)
