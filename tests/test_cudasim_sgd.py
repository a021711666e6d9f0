"""The CUDA SGD kernel run on the CPU by cudasim (tools/cudasim), through gradfast's own
native layer (gradfast._native.sgd: device table, workspace, structs): bitwise the CPU
kernel (the same per-element function, checked against torch in test_sgd_kernel.py), one
launch per call, workspaces left zeroed, the first-step flags cleared by the device exactly
when the step is not skipped; and gradfast.optim.SGD on a simulated GPU: one launch per
(device, dtype) group, two with clipping."""
import math

import pytest
import torch

from clip_helpers import FLOAT_DTYPES, bits, dtype_id
from gradfast._native import _C
from gradfast.optim import SGD
from sgd_kernels import cpu_step, step_state

TILE = _C.SGD_TILE_ELEMS


def _state(dtype, momentum=True, first=True, seed=0):
    """Sizes around the tile, a scalar, an empty tensor and a misaligned view (the kernel's
    scalar path)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(shape, scale=1.0):
        return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    shapes = [(), (0,), (5,), (TILE,), (2 * TILE + 5,), (3, 1000)]
    params = [rnd(s) for s in shapes] + [rnd(1001)[1:]]
    grads = [rnd(p.shape, 0.1) for p in params]
    bufs = [rnd(p.shape, 0.01) for p in params] if momentum else []
    firsts = [torch.tensor(int(first and k % 2 == 0), dtype=torch.int32)
              for k in range(len(params))] if momentum else []
    return [params, grads, bufs, firsts]


CONFIGS = {
    "plain": ({"momentum": 0.0}, {}, None),
    "momentum": ({"momentum": 0.9}, {}, None),
    "dampening_wd_maximize": ({"momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01,
                               "maximize": True}, {}, None),
    "nesterov_l1": ({"momentum": 0.9, "nesterov": True, "l1": 1e-3}, {}, None),
    "lr_tensor": ({"momentum": 0.9}, {"lr_t": torch.tensor(2e-3)}, None),
    "lr_tensor64": ({}, {"lr_t": torch.tensor(3e-3, dtype=torch.float64)}, None),
    "grad_scaler": ({"momentum": 0.9}, {"grad_scale": torch.tensor(4.0),
                                        "found_inf": torch.tensor(0.0)}, None),
    "found_inf": ({"momentum": 0.9}, {"grad_scale": torch.tensor(4.0),
                                      "found_inf": torch.tensor(1.0)}, None),
    "clip": ({"momentum": 0.9}, {"clip": True, "max_norm": 1.0}, 5.0),
    "clip_threshold": ({"momentum": 0.9}, {"clip": True, "max_norm_t": torch.tensor(2.0)}, 5.0),
    "skip_nonfinite": ({"momentum": 0.9}, {"skip_nonfinite": True}, math.inf),
    "scaler_clip": ({"momentum": 0.9, "weight_decay": 0.1},
                    {"grad_scale": torch.tensor(8.0), "found_inf": torch.tensor(0.0),
                     "clip": True, "max_norm": 0.5, "skip_nonfinite": True}, 3.0),
}
SKIPPING = ("found_inf", "skip_nonfinite")


def _assert_same(a_lists, b_lists):
    for name, a_list, b_list in zip(("param", "grad", "buf", "first"), a_lists, b_lists):
        assert len(a_list) == len(b_list)
        for i, (a, b) in enumerate(zip(a_list, b_list)):
            assert torch.equal(bits(a) if a.is_floating_point() else a,
                               bits(b) if b.is_floating_point() else b), f"{name}[{i}] differs"


def _devices(sim_devices, config, dtype):
    """One simulated device per case, round-robin (the simulator is slow); "momentum" runs on
    every device (different grid sizes)."""
    if config == "momentum":
        return sim_devices
    return [sim_devices[(sorted(CONFIGS).index(config) + FLOAT_DTYPES.index(dtype))
                        % len(sim_devices)]]


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_sgd_step_is_bitwise_the_cpu_kernel(sim_devices, dtype, config):
    hyper, ctl, total_value = CONFIGS[config]
    ctl = dict(ctl, lr=ctl.get("lr", 1e-2))
    if total_value is not None:
        ctl["total"] = torch.tensor(total_value, dtype=dtype)
    momentum = hyper.get("momentum", 0.0) != 0
    expected = _state(dtype, momentum)
    skipped_cpu = torch.zeros((), dtype=torch.int64)
    cpu_step(expected, hyper, ctl, skipped=skipped_cpu)
    for dev in _devices(sim_devices, config, dtype):
        state = _state(dtype, momentum)
        skipped = torch.zeros((), dtype=torch.int64)
        dev.run(step_state, state, hyper, ctl, skipped)
        assert dev.launches == 1
        _assert_same(state, expected)
        assert skipped.item() == skipped_cpu.item()
        assert int(torch.count_nonzero(dev.workspaces["sgd"])) == 0
    if config in SKIPPING:  # a skipped step changes nothing (flags included), counted
        _assert_same(expected, _state(dtype, momentum))
    assert skipped_cpu.item() == (1 if config in SKIPPING else 0)
    if momentum and config not in SKIPPING:
        assert all(int(f) == 0 for f in expected[3])


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=dtype_id)
def test_steps_reuse_the_workspace(sim_devices, dtype):
    """Several steps (first flags set on some tensors, then cleared) on one workspace."""
    hyper = {"momentum": 0.9, "dampening": 0.1}
    a, b = _state(dtype, seed=3), _state(dtype, seed=3)
    gen = torch.Generator().manual_seed(4)
    for step in range(4):
        for ga, gb in zip(a[1], b[1]):
            g = torch.randn(ga.shape, generator=gen, dtype=torch.float64).to(dtype)
            ga.copy_(g), gb.copy_(g)
        dev = sim_devices[step % 2]
        dev.run(step_state, a, hyper, {"lr": 0.1})
        cpu_step(b, hyper, {"lr": 0.1})
        _assert_same(a, b)
        assert int(torch.count_nonzero(dev.workspaces["sgd"])) == 0


@pytest.mark.parametrize("clip", [None, 1.0])
def test_optimizer_launches_per_group(sim_devices, clip):
    """gradfast.optim.SGD with the simulated GPU as back end: one launch per (device, dtype)
    group, plus the norm's one per group with clipping; the result is the CPU kernel's
    (bitwise without clipping; with it, the CPU and CUDA norms sum in different orders)."""
    dev = sim_devices[0]
    gen = torch.Generator().manual_seed(5)
    base = [torch.randn(s, generator=gen) for s in [(300,), (5000,), (7, 3)]]
    base += [torch.randn(50, generator=gen).double(), torch.randn(9, generator=gen).double()]
    kw = dict(lr=0.1, momentum=0.9, max_grad_norm=clip)
    sim_p = [torch.nn.Parameter(p.clone()) for p in base]
    cpu_p = [torch.nn.Parameter(p.clone()) for p in base]
    sim_opt, cpu_opt = SGD(sim_p, **kw), SGD(cpu_p, **kw)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in base]
        for p, q, g in zip(sim_p, cpu_p, grads):
            p.grad, q.grad = g.clone(), g.clone()
        dev.run(sim_opt.step)
        assert dev.launches == (2 if clip is None else 4)  # 2 dtype groups
        cpu_opt.step()
    for p, q in zip(sim_p, cpu_p):
        if clip is None:
            assert torch.equal(bits(p.detach()), bits(q.detach()))
        else:
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)
