"""gradfast with Hugging Face accelerate: prepare(), accelerator.clip_grad_norm_, and
save_state / load_state resuming bitwise (an AutoClip's history included), plus
GradMonitor.attach on the prepared (wrapped) optimizer."""
import pytest
import torch

accelerate = pytest.importorskip("accelerate")

import gradfast  # noqa: E402
from gradfast.optim import AdamW  # noqa: E402


def setup(make_opt, mixed_precision="no"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(16, 6, generator=g),
                                        torch.randn(16, 2, generator=g) * 3)
    acc = accelerate.Accelerator(cpu=True, mixed_precision=mixed_precision)
    model, opt, dl = acc.prepare(model, make_opt(model.parameters()),
                                 torch.utils.data.DataLoader(ds, batch_size=4))
    return acc, model, opt, dl


def train(acc, model, opt, dl, steps, clip=True):
    done = 0
    for x, y in dl:
        if done == steps:
            break
        loss = torch.nn.functional.mse_loss(model(x).float(), y)
        acc.backward(loss)
        if clip:
            acc.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
        done += 1


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_prepare_and_clip_grad_norm_match_torch(mixed_precision):
    ours = setup(lambda ps: AdamW(ps, lr=1e-2), mixed_precision)
    ref = setup(lambda ps: torch.optim.AdamW(ps, lr=1e-2), mixed_precision)
    train(*ours, steps=4)
    train(*ref, steps=4)
    for p, q in zip(ours[1].parameters(), ref[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_save_state_load_state_resume_bitwise(tmp_path):
    clippers = []

    def make(ps):
        clippers.append(gradfast.AutoClip(percentile=50, history=8))
        return AdamW(ps, lr=1e-2, max_grad_norm=clippers[-1])

    full = setup(make)
    train(*full, steps=4, clip=False)
    first = setup(make)
    train(*first, steps=2, clip=False)
    first[0].save_state(str(tmp_path / "state"))
    second = setup(make)
    second[0].load_state(str(tmp_path / "state"))
    acc, model, opt, dl = second
    # The two remaining batches of the epoch, as the uninterrupted run saw them.
    batches = list(dl)[2:]
    for x, y in batches:
        acc.backward(torch.nn.functional.mse_loss(model(x), y))
        opt.step()
        opt.zero_grad()
    for p, q in zip(full[1].parameters(), model.parameters()):
        assert torch.equal(p, q)
    assert opt.optimizer.param_groups[0]["max_grad_norm"] is clippers[-1]
    assert torch.equal(clippers[-1].history_values(), clippers[0].history_values())


def test_grad_monitor_attach_accelerated_optimizer():
    acc, model, opt, dl = setup(lambda ps: AdamW(ps, lr=1e-2, max_grad_norm=1.0))
    assert type(opt).__name__ == "AcceleratedOptimizer"
    mon = gradfast.GradMonitor(model, warn=False).attach(opt)  # unwraps opt.optimizer
    train(acc, model, opt, dl, steps=3, clip=False)
    assert mon.num_steps == 3
    # grad_norm lives on the gradfast optimizer the wrapper holds.
    torch.testing.assert_close(torch.tensor(mon.data()["total"][-1], dtype=torch.float32),
                               opt.optimizer.grad_norm.float())


def test_attach_names_the_inner_optimizer_when_it_is_not_gradfast():
    acc, model, opt, dl = setup(lambda ps: torch.optim.AdamW(ps, lr=1e-2))
    with pytest.raises(TypeError, match="AcceleratedOptimizer -> AdamW is not a gradfast"):
        gradfast.GradMonitor(model, warn=False).attach(opt)
