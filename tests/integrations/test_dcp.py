"""torch.distributed.checkpoint's get_optimizer_state_dict / set_optimizer_state_dict with a
gradfast optimizer (one process, gloo): the state round-trips through DCP's FQN-keyed
format, an AutoClip threshold included, and training continues bitwise."""
import copy

import pytest
import torch
import torch.distributed as dist

dcp_sd = pytest.importorskip("torch.distributed.checkpoint.state_dict")

import gradfast  # noqa: E402
from gradfast.optim import AdamW  # noqa: E402


@pytest.fixture
def one_process_group(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def step(model, opt, seed):
    g = torch.Generator().manual_seed(seed)
    model.zero_grad()
    model(torch.randn(4, 6, generator=g)).pow(2).sum().backward()
    opt.step()


def test_get_set_optimizer_state_dict_round_trip(one_process_group, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = AdamW(model.parameters(), lr=1e-2, max_grad_norm=gradfast.AutoClip(history=8))
    for s in range(3):
        step(model, opt, s)
    osd = dcp_sd.get_optimizer_state_dict(model, opt)
    assert "0.weight" in osd["state"]  # keyed by fully qualified parameter names
    path = tmp_path / "osd.pt"
    torch.save(osd, path)
    osd = torch.load(path, weights_only=True)

    other = copy.deepcopy(model)
    clip = gradfast.AutoClip(history=8)
    opt2 = AdamW(other.parameters(), lr=1e-2, max_grad_norm=clip)
    dcp_sd.set_optimizer_state_dict(other, opt2, osd)
    assert opt2.param_groups[0]["max_grad_norm"] is clip
    assert torch.equal(clip.history_values(),
                       opt.param_groups[0]["max_grad_norm"].history_values())
    for s in range(3, 6):
        step(model, opt, s)
        step(other, opt2, s)
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(p, q)
