"""GradMonitor.attach: a gradfast optimizer feeds the monitor from its own norm pass.

Each test trains twin models on identical batches: one with the monitor attached to
gradfast.optim.Adam, one with monitor.step() called by hand (the documented manual way),
and compares what the two monitors recorded."""
import copy
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import gradfast
import gradfast._native
from gradfast.optim import Adam


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 12)
        self.rnn = nn.LSTM(12, 8)
        self.unused = nn.Linear(3, 3)  # never gets a gradient

    def forward(self, x):
        return self.rnn(torch.tanh(self.a(x)))[0]


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 2, 6, generator=g) * (1 + 10 * (i % 3 == 2)) for i in range(n)]


def twins():
    a = Net()
    b = copy.deepcopy(a)
    return a, b


def run_attached(net, steps, **opt_kw):
    opt = Adam(net.parameters(), lr=1e-2, **opt_kw)
    mon = gradfast.GradMonitor(net, every=4, warn=False).attach(opt)
    for x in batches(steps):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
    return mon, opt


def run_manual(net, steps, max_norm=None, **opt_kw):
    opt = Adam(net.parameters(), lr=1e-2, max_grad_norm=max_norm, **opt_kw)
    mon = gradfast.GradMonitor(net, every=4, warn=False)
    for x in batches(steps):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        mon.step(max_norm=max_norm)
        opt.step()
    return mon, opt


def assert_same_records(a, b):
    da, db = a.data(), b.data()
    np.testing.assert_array_equal(da["step"], db["step"])
    np.testing.assert_allclose(da["total"], db["total"], rtol=1e-6)
    np.testing.assert_allclose(da["norms"], db["norms"], rtol=1e-6)  # NaN where no grad
    np.testing.assert_array_equal(da["clipped"], db["clipped"])
    np.testing.assert_array_equal(da["skipped"], db["skipped"])


@pytest.mark.parametrize("max_norm", [None, 0.05, 1e6])
def test_attached_records_what_step_records(max_norm):
    a, b = twins()
    mon_a, _ = run_attached(a, 9, max_grad_norm=max_norm)
    mon_b, _ = run_manual(b, 9, max_norm=max_norm)
    assert_same_records(mon_a, mon_b)
    d = mon_a.data()
    assert np.isnan(d["norms"][:, -1]).all() and np.isnan(d["norms"][:, -2]).all()  # unused
    if max_norm is None:
        assert not d["clipped"].any()
    else:
        np.testing.assert_array_equal(d["clipped"], d["total"] > max_norm)
        if max_norm == 0.05:
            assert 0 < d["clipped"].sum() < len(d["clipped"])  # the batches mix both cases
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)  # training is unchanged


def test_one_norm_pass_serves_clipping_and_monitor(monkeypatch):
    calls = []
    real = gradfast._native._C.cpu_multi_norm

    def counting(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    net = Net()
    opt = Adam(net.parameters(), lr=1e-2, max_grad_norm=0.5)
    gradfast.GradMonitor(net, warn=False).attach(opt)
    net(batches(1)[0]).sum().backward()
    opt.step()  # first step builds plans; count the steady state
    monkeypatch.setattr(gradfast._native._C, "cpu_multi_norm", counting)
    for x in batches(3):
        opt.zero_grad()
        net(x).sum().backward()
        opt.step()
    assert len(calls) == 3


def test_monitor_with_another_norm_order_gets_its_own():
    a, b = twins()
    opt = Adam(a.parameters(), lr=1e-2, max_grad_norm=0.5)  # clips with the 2-norm
    mon_a = gradfast.GradMonitor(a, every=4, warn=False, norm_type=1.0).attach(opt)
    opt_b = Adam(b.parameters(), lr=1e-2, max_grad_norm=0.5)
    mon_b = gradfast.GradMonitor(b, every=4, warn=False, norm_type=1.0)
    for x in batches(6):
        for net, o in ((a, opt), (b, opt_b)):
            o.zero_grad()
            net(x).pow(2).mean().backward()
        mon_b.step(max_norm=0.5)
        opt.step()
        opt_b.step()
    da, db = mon_a.data(), mon_b.data()
    np.testing.assert_allclose(da["total"], db["total"], rtol=1e-6)
    np.testing.assert_allclose(da["norms"], db["norms"], rtol=1e-6)
    # clip events are judged by the optimizer's own (2-)norm against max_norm, so only the
    # recorded norms are compared here


def test_skipped_steps_are_marked():
    net = Net()
    opt = Adam(net.parameters(), lr=1e-2, skip_nonfinite=True)
    mon = gradfast.GradMonitor(net, every=2, warn=False).attach(opt)
    for i, x in enumerate(batches(5)):
        opt.zero_grad()
        net(x).sum().backward()
        if i == 3:
            net.a.weight.grad[0, 0] = float("nan")
        opt.step()
    d = mon.data()
    np.testing.assert_array_equal(d["skipped"], [False, False, False, True, False])
    assert int(opt.skipped_steps) == 1


def test_grad_scaler_records_unscaled_norms():
    a, b = twins()
    opt = Adam(a.parameters(), lr=1e-2, max_grad_norm=1.0)
    mon_a = gradfast.GradMonitor(a, every=4, warn=False).attach(opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _, mon_b = None, gradfast.GradMonitor(b, every=4, warn=False)
    for x in batches(5):
        opt.zero_grad()
        scaler.scale(a(x).pow(2).mean()).backward()
        scaler.step(opt)
        scaler.update()
        b.zero_grad()
        b(x).pow(2).mean().backward()
        mon_b.step(max_norm=1.0)
        with torch.no_grad():  # keep the twin's weights equal to the scaled side's
            for pa, pb in zip(a.parameters(), b.parameters()):
                pb.copy_(pa)
    da, db = mon_a.data(), mon_b.data()
    np.testing.assert_allclose(da["total"], db["total"], rtol=1e-5)
    np.testing.assert_allclose(da["norms"], db["norms"], rtol=1e-5)
    np.testing.assert_array_equal(da["clipped"], db["clipped"])


def test_autoclip_threshold_marks_clips():
    net = Net()
    clipper = gradfast.AutoClip(percentile=50, history=10)
    opt = Adam(net.parameters(), lr=1e-2, max_grad_norm=clipper)
    mon = gradfast.GradMonitor(net, every=3, warn=False).attach(opt)
    totals, thresholds = [], []
    for x in batches(7):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
        totals.append(float(opt.grad_norm))
        thresholds.append(float(clipper.last_threshold))
    d = mon.data()
    np.testing.assert_allclose(d["total"], totals, rtol=1e-6)
    np.testing.assert_array_equal(d["clipped"], np.array(totals) > np.array(thresholds))


def test_attach_refuses_torch_optimizers_and_detach_stops_feeding():
    net = Net()
    mon = gradfast.GradMonitor(net, warn=False)
    with pytest.raises(TypeError, match="not a gradfast optimizer"):
        mon.attach(torch.optim.Adam(net.parameters()))
    opt = Adam(net.parameters())
    mon.attach(opt)
    net(batches(1)[0]).sum().backward()
    opt.step()
    mon.detach(opt)
    opt.step()
    assert mon.num_steps == 1


def test_optimizer_with_monitor_pickles_without_it():
    net = Net()
    opt = Adam(net.parameters(), max_grad_norm=1.0)
    gradfast.GradMonitor(net, warn=False).attach(opt)
    net(batches(1)[0]).sum().backward()
    opt.step()
    clone = pickle.loads(pickle.dumps(opt))
    assert not clone._gf_norm_hooks  # hooks are not pickled
    torch.testing.assert_close(clone.state_dict()["state"][0]["exp_avg"],
                               opt.state_dict()["state"][0]["exp_avg"])
