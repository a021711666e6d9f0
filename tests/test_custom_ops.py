"""torch.library.opcheck on every custom op gradfast defines (gradfast._native.op): schema
(declared mutations and aliasing), fake implementation, and AOT dispatch with static and
dynamic shapes. Each op runs on the CPU kernels and, through the simulator, on the CUDA
kernels (the back end is a parameter of the native layer)."""
import contextlib

import pytest
import torch

from gradfast._native import adam as native_adam
from gradfast._native.backend import use
from gradfast._native.norm_kind import L1, L2
from gradfast._native.op import DEFINED
from gradfast._native.step import StepArgs


def _norm_samples():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        ts = [torch.randn(s, generator=g).to(dtype) for s in [(7,), (3, 5), ()]]
        yield "group_norm", (ts, 2.0, L2, 1.0)
        yield "group_norm", ([t.clone() for t in ts], 1.0, L1, 0.5)
        math = torch.float64 if dtype is torch.float64 else torch.float32
        yield "group_scale_", ([t.clone() for t in ts], torch.tensor(0.5, dtype=math))
        yield "group_clamp_", ([t.clone() for t in ts], -0.3, 0.3)


def _adam_samples():
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float16):
        for amsgrad in (False, True):
            shapes = [(9,), (2, 3)]
            params = [torch.randn(s, generator=g).to(dtype) for s in shapes]
            grads = [torch.randn(s, generator=g).to(dtype) for s in shapes]
            m = [torch.zeros(s, dtype=dtype) for s in shapes]
            v = [torch.zeros(s, dtype=dtype) for s in shapes]
            vmax = [torch.zeros(s, dtype=dtype) for s in shapes] if amsgrad else []
            steps = [torch.zeros(()) for _ in shapes]
            skipped = [torch.zeros((), dtype=torch.int64)]
            hyper = native_adam.AdamHyper(0.9, 0.999, 1e-8, 0.01, 0.0, False, amsgrad, 2)
            step = StepArgs(1e-3, None, None, None, torch.tensor(3.0, dtype=dtype), True, 1.0,
                            None, True)
            yield "adam_step_", (params, grads, m, v, vmax, steps, skipped,
                                 [float(x) for x in hyper], step.tensors(), step.scalars(),
                                 step.switches())


SAMPLES = list(_norm_samples()) + list(_adam_samples())


@pytest.fixture(params=["cpu", "cudasim"])
def backend(request):
    if request.param == "cpu":
        return contextlib.nullcontext()
    devices = request.getfixturevalue("sim_devices")
    return use(devices[1].backend)


@pytest.mark.parametrize("name,args", SAMPLES,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(SAMPLES)])
def test_opcheck(name, args, backend):
    with backend:
        torch.library.opcheck(getattr(torch.ops.gradfast, name).default, args)


def test_every_op_is_checked():
    assert {name for name, _ in SAMPLES} == set(DEFINED)
