"""gradfast inside Lightning's Trainer (CPU, a tiny model, a few steps): bf16-mixed and fp32
with Trainer(gradient_clip_val=...), gradfast's own max_grad_norm=, gradient accumulation,
a checkpoint resume that continues bitwise like an uninterrupted run (with an AutoClip,
loaded under weights_only=True), and GradMonitor.attach(self.optimizers())."""

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

import gradfast  # noqa: E402
from gradfast.optim import AdamW  # noqa: E402


def data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = torch.randn(n, 2, generator=g) * 3
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


class Module(pl.LightningModule):
    def __init__(self, make_opt, monitor=False):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, 2))
        self.make_opt = make_opt
        self.monitor = None
        self.want_monitor = monitor

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x).float(), y)

    def configure_optimizers(self):
        return self.make_opt(self.parameters())

    def on_train_start(self):
        if self.want_monitor:  # the idiomatic place: Lightning's optimizer wrapper
            self.monitor = gradfast.GradMonitor(self, warn=False).attach(self.optimizers())


def trainer(tmp_path=None, **kw):
    kw.setdefault("max_steps", 4)
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, default_root_dir=tmp_path, **kw)


def fit(make_opt, **kw):
    module = Module(make_opt)
    trainer(**kw).fit(module, data())
    return [p.detach().clone() for p in module.parameters()]


def assert_params_close(a, b, **tol):
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, **tol)


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_gradient_clip_val_trains_like_torch_adamw(precision):
    # bf16-mixed + gradient_clip_val raised "does not allow for gradient clipping" before.
    kw = dict(precision=precision, gradient_clip_val=0.5)
    ours = fit(lambda ps: AdamW(ps, lr=1e-2), **kw)
    ref = fit(lambda ps: torch.optim.AdamW(ps, lr=1e-2), **kw)
    start = [p.detach() for p in Module(None).parameters()]
    assert any(not torch.equal(p, q) for p, q in zip(ours, start))
    assert_params_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_max_grad_norm_matches_gradient_clip_val():
    ours = fit(lambda ps: AdamW(ps, lr=1e-2, max_grad_norm=0.5))
    ref = fit(lambda ps: torch.optim.AdamW(ps, lr=1e-2), gradient_clip_val=0.5)
    assert_params_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_gradient_accumulation():
    kw = dict(accumulate_grad_batches=2, gradient_clip_val=0.5, max_steps=2, max_epochs=2)
    ours = fit(lambda ps: AdamW(ps, lr=1e-2), **kw)
    ref = fit(lambda ps: torch.optim.AdamW(ps, lr=1e-2), **kw)
    assert_params_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_checkpoint_resume_continues_bitwise(tmp_path):
    clippers = []

    def make(ps):
        clippers.append(gradfast.AutoClip(percentile=50, history=8))
        return AdamW(ps, lr=1e-2, max_grad_norm=clippers[-1])

    # Epoch-aligned: 2 batches per epoch, 2 epochs straight vs 1 epoch + resume.
    full = Module(make)
    trainer(max_steps=-1, max_epochs=2).fit(full, data())
    first = Module(make)
    t1 = trainer(max_steps=-1, max_epochs=1)
    t1.fit(first, data())
    ckpt = tmp_path / "half.ckpt"
    t1.save_checkpoint(ckpt)
    torch.load(ckpt, weights_only=True)  # what Lightning's resume does by default
    resumed = Module(make)
    trainer(max_steps=-1, max_epochs=2).fit(resumed, data(), ckpt_path=ckpt)
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    resumed_clip = clippers[-1]
    # The history went back into the AutoClip the resumed optimizer was built with.
    assert resumed.trainer.optimizers[0].param_groups[0]["max_grad_norm"] is resumed_clip
    assert torch.equal(resumed_clip.history_values(), clippers[0].history_values())


def test_grad_monitor_attach_self_optimizers():
    module = Module(lambda ps: AdamW(ps, lr=1e-2, max_grad_norm=1.0), monitor=True)
    trainer(max_steps=3).fit(module, data())
    d = module.monitor.data()
    assert module.monitor.num_steps == 3 and len(d["total"]) == 3
    assert (d["total"] > 0).all()
