"""gradfast.GradMonitor: planted exploding and vanishing layers are flagged, a healthy
model is left alone, and the reports (summary, CSV, plot, TensorBoard) hold the data."""
import csv
import importlib
import logging
import math
import warnings

import pytest
import torch
from torch import nn

import gradfast
from gradfast.health import GradientHealthWarning


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 4))


def train(model, monitor, steps, plant=None, lr=1e-3):
    """Adam on a random regression task; plant(step, model) may tamper with gradients."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(16, 4, generator=gen)
    for step in range(steps):
        x = torch.randn(64, 16, generator=gen)
        loss = (model(x) - x @ target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        skip = plant is not None and plant(step, model) == "skip"
        monitor.step(skipped=skip)
        if not skip:
            opt.step()
    monitor.flush()


def test_healthy_model_stays_quiet():
    model = mlp()
    mon = gradfast.GradMonitor(model, every=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientHealthWarning)
        train(model, mon, 150)
    assert mon.events == []
    assert mon.num_steps == 150 and len(mon.data()["step"]) == 150


def test_healthy_cnn_and_lstm_stay_quiet():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    mon = gradfast.GradMonitor(cnn, every=25)
    opt = torch.optim.SGD(cnn.parameters(), lr=1e-2)
    for _ in range(60):
        loss = nn.functional.cross_entropy(cnn(torch.randn(16, 3, 8, 8)), torch.randint(0, 5, (16,)))
        opt.zero_grad(); loss.backward(); mon.step(); opt.step()
    lstm, head = nn.LSTM(4, 16, batch_first=True), nn.Linear(16, 1)
    mon2 = gradfast.GradMonitor(list(lstm.named_parameters()) + list(head.named_parameters()), every=25)
    opt = torch.optim.Adam(list(lstm.parameters()) + list(head.parameters()), lr=1e-3)
    for _ in range(60):
        out, _ = lstm(torch.randn(8, 20, 4))
        loss = head(out[:, -1]).pow(2).mean()
        opt.zero_grad(); loss.backward(); mon2.step(); opt.step()
    mon.flush(); mon2.flush()
    assert mon.events == [] and mon2.events == []


def test_planted_exploding_layer_is_flagged(caplog):
    model = mlp()
    mon = gradfast.GradMonitor(model, every=8)

    def plant(step, m):
        if step == 60:
            m[2].weight.grad.mul_(1e4)

    with caplog.at_level(logging.WARNING, logger="gradfast.health"):
        with pytest.warns(GradientHealthWarning, match="exploding"):
            train(model, mon, 80, plant)
    exploding = [e for e in mon.events if e.kind == "exploding"]
    assert [e.step for e in exploding] == [60]
    assert exploding[0].layers == ("2.weight",)
    assert exploding[0].value > exploding[0].threshold
    assert any("exploding" in r.getMessage() for r in caplog.records)
    assert all(e.kind == "exploding" for e in mon.events)


def test_planted_vanishing_layer_is_flagged():
    model = mlp()
    mon = gradfast.GradMonitor(model, every=5)

    def plant(step, m):
        if step >= 50:
            m[0].weight.grad.mul_(1e-6)

    with pytest.warns(GradientHealthWarning, match="vanishing gradient in 0.weight"):
        train(model, mon, 70, plant)
    vanishing = [e for e in mon.events if e.kind == "vanishing"]
    assert vanishing and all(e.layers == ("0.weight",) for e in vanishing)
    # reported once it has held vanish_patience=3 steps: from step 52 on
    assert sorted({e.step for e in vanishing}) == list(range(52, 70))
    assert not [e for e in mon.events if e.kind != "vanishing"]
    row = [r for r in mon.stats() if r["layer"] == "0.weight"][0]
    assert row["vanishing"] == 18


def test_vanishing_against_own_history_only():
    """A layer that drops 1e4-fold while staying within range of the others is caught by
    its own history (vanish_drop), not by the cross-layer rule."""
    model = mlp()
    mon = gradfast.GradMonitor(model, every=4, vanish_ratio=1e-8, vanish_drop=1e-3,
                               vanish_patience=1)

    def plant(step, m):
        if step == 40:
            m[4].bias.grad.mul_(1e-4)

    with pytest.warns(GradientHealthWarning):
        train(model, mon, 44, plant)
    assert [(e.step, e.kind, e.layers) for e in mon.events] == [(40, "vanishing", ("4.bias",))]


def test_nonfinite_gradients_are_flagged():
    model = mlp()
    mon = gradfast.GradMonitor(model, every=3)

    def plant(step, m):
        if step == 20:
            m[4].bias.grad[0] = float("nan")
            return "skip"  # as an optimizer does on a non-finite step

    with pytest.warns(GradientHealthWarning, match="non-finite"):
        train(model, mon, 25, plant)
    assert [(e.step, e.kind, e.layers) for e in mon.events] == [(20, "nonfinite", ("4.bias",))]
    assert mon.data()["skipped"].nonzero()[0].tolist() == [20]


def test_readback_only_every_n_steps(monkeypatch):
    model = mlp()
    mon = gradfast.GradMonitor(model, every=10)
    reads = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        if self.dim() == 2 and mon._recorder.buf is not None and self.data_ptr() == mon._recorder.buf.data_ptr():
            reads.append(self.shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    x = torch.randn(4, 16)
    for step in range(25):
        model.zero_grad()
        model(x).sum().backward()
        mon.step()
    assert reads == [10, 10]  # at the 11th and 21st record: the buffer was full
    assert mon.events == [] and len(mon._recorder.chunks) == 2
    mon.flush()
    assert reads == [10, 10, 5]


def test_record_from_elsewhere_with_params_mapping_and_missing_grads():
    model = mlp()
    params = list(model.parameters())
    mon = gradfast.GradMonitor(model, every=2)
    x = torch.randn(4, 16)
    model(x).sum().backward()
    params[1].grad = None
    # An optimizer's own view: a permuted subset of the parameters.
    subset = [params[4], params[0], params[2]]
    total, per = gradfast.grad_norms(subset)
    mon.record(total, per, params=subset, max_norm=0.0, skipped=True)
    d = mon.data()
    norms = d["norms"][0]
    assert norms[0] == pytest.approx(per[1].item()) and norms[4] == pytest.approx(per[0].item())
    assert norms[2] == pytest.approx(per[2].item())
    assert all(math.isnan(norms[i]) for i in (1, 3, 5))
    assert d["clipped"][0] and d["skipped"][0]
    with pytest.raises(ValueError):
        mon.record(total, per)  # 3 entries for 6 watched parameters


def test_annotate_and_reports(tmp_path):
    model = mlp()
    mon = gradfast.GradMonitor(model, every=4)
    x = torch.randn(8, 16)
    totals = []
    for step in range(10):
        model.zero_grad()
        (model(x) * (step + 1)).sum().backward()
        total, per = mon.step()
        totals.append(total.item())
        ref = torch.stack([p.grad.norm() for p in model.parameters()])
        torch.testing.assert_close(per, ref)
        mon.annotate(max_norm=torch.tensor(totals[0] * 4.5), skipped=(step == 7))
    d = mon.data()
    assert d["clipped"].tolist() == [t > totals[0] * 4.5 for t in totals]
    assert d["skipped"].tolist() == [s == 7 for s in range(10)]
    text = mon.summary()
    for name, _ in model.named_parameters():
        assert name in text
    assert "10 steps" in text and "skipped" in text
    path = tmp_path / "norms.csv"
    mon.to_csv(path)
    rows = list(csv.reader(open(path)))
    assert rows[0][:4] == ["step", "total", "clipped", "skipped"] and len(rows) == 11
    assert float(rows[3][1]) == pytest.approx(totals[2], rel=1e-6)
    pytest.importorskip("matplotlib")
    png = tmp_path / "norms.png"
    mon.plot(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tensorboard_writer_and_missing_tensorboard(tmp_path):
    class Writer:
        def __init__(self):
            self.scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

    model = mlp()
    writer = Writer()
    mon = gradfast.GradMonitor(model, every=2, tensorboard=writer)
    model(torch.randn(2, 16)).sum().backward()
    for _ in range(3):
        mon.step()
    mon.flush()
    tags = {t for t, _, _ in writer.scalars}
    assert "grad_norm/total" in tags and "grad_norm/0.weight" in tags
    assert sorted({s for _, _, s in writer.scalars}) == [0, 1, 2]
    try:
        importlib.import_module("torch.utils.tensorboard")
        have_tb = True
    except ImportError:
        have_tb = False
    if have_tb:
        mon = gradfast.GradMonitor(model, tensorboard=str(tmp_path / "tb"))
        mon.step()
        mon.close()
        assert any((tmp_path / "tb").iterdir())
    else:
        with pytest.warns(UserWarning, match="tensorboard is not installed"):
            mon = gradfast.GradMonitor(model, tensorboard=str(tmp_path / "tb"))
        mon.step()
        mon.flush()  # works without TensorBoard


def test_warning_points_at_caller():
    model = mlp()
    mon = gradfast.GradMonitor(model, every=1)
    model(torch.randn(2, 16)).sum().backward()
    mon.step()
    model[0].bias.grad.fill_(float("inf"))
    mon.step()
    with pytest.warns(GradientHealthWarning) as record:
        mon.flush()
    assert record[0].filename == __file__


def test_single_step_dip_is_not_vanishing():
    """A one-step dip (a bias gradient crossing zero) is noise, not a vanishing gradient."""
    model = mlp()
    mon = gradfast.GradMonitor(model, every=7)

    def plant(step, m):
        if step in (30, 45, 46):
            m[4].bias.grad.mul_(1e-7)

    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientHealthWarning)
        train(model, mon, 60, plant)
    assert mon.events == []


def test_annotate_clipped_flag():
    model = mlp()
    mon = gradfast.GradMonitor(model, every=3)
    model(torch.randn(2, 16)).sum().backward()
    for flag in (True, False, True, torch.tensor(True), torch.tensor(False)):
        mon.step()
        mon.annotate(clipped=flag)
    assert mon.data()["clipped"].tolist() == [True, False, True, True, False]


def test_thresholds_on_synthetic_norms():
    """Exact boundaries: factor x running median for exploding, ratio x median layer RMS
    for vanishing, with norms fed through record()."""
    params = [("a", torch.zeros(100)), ("b", torch.zeros(100)), ("c", torch.zeros(100))]
    mon = gradfast.GradMonitor(params, every=4, explode_factor=10.0, vanish_ratio=1e-3,
                               vanish_patience=1, warn=False)
    def feed(total, a, b, c):
        mon.record(torch.tensor(total), torch.tensor([a, b, c]))
    for _ in range(20):
        feed(1.0, 1.0, 1.0, 1.0)
    feed(9.9, 1.0, 1.0, 1.0)      # below 10 x median 1.0: quiet
    feed(10.1, 1.0, 1.0, 1.0)     # above: exploding
    feed(1.0, 1.0, 1.0, 1.1e-3)   # just above 1e-3 x median: quiet
    feed(1.0, 1.0, 1.0, 0.9e-3)   # below: vanishing
    feed(1.0, 1.0, -1.0, 1.0)     # 'b' has no gradient: not vanishing, not counted
    mon.flush()
    assert [(e.step, e.kind, e.layers) for e in mon.events] == [
        (21, "exploding", ()), (23, "vanishing", ("c",))]
    assert math.isnan(mon.data()["norms"][24][1])
