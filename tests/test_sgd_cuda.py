"""gradfast.optim.SGD on a real GPU (marked cuda: skipped without one): bitwise the CPU
kernel (the same sgd_element), against torch's SGD, GradScaler's skip on the device, one
launch per (device, dtype) group (two with clipping), and CUDA graph capture."""
import math

import pytest
import torch

from gradfast.optim import SGD

from adam_helpers import clone_params, make_params, random_grads, set_grads
from clip_helpers import bits

pytestmark = pytest.mark.cuda

SHAPES = [(37,), (5, 7), (), (0,), (4096,), (2, 4097), (70000,)]


def _pair(dtype, **kw):
    base = make_params(dtype, SHAPES, seed=1)
    cpu = clone_params(base)
    gpu = [torch.nn.Parameter(p.detach().cuda()) for p in base]
    return base, cpu, gpu, SGD(cpu, **kw), SGD(gpu, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kw", [dict(lr=0.1), dict(lr=0.1, momentum=0.9, dampening=0.2,
                                                   weight_decay=1e-2, maximize=True),
                                dict(lr=0.1, momentum=0.9, nesterov=True, l1_weight_decay=1e-3,
                                     max_grad_norm=1.0)], ids=["plain", "momentum", "clip"])
def test_cuda_is_bitwise_the_cpu_kernel(dtype, kw):
    base, cpu, gpu, opt_c, opt_g = _pair(dtype, **kw)
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        grads = random_grads(base, gen, scale=2.0)
        set_grads([cpu], grads)
        set_grads([gpu], [g.cuda() for g in grads])
        opt_c.step(), opt_g.step()
    for a, b in zip(cpu, gpu):
        if "max_grad_norm" in kw:  # the norms' summation orders differ between back ends
            torch.testing.assert_close(a.detach(), b.detach().cpu(), rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(bits(a.detach()), bits(b.detach().cpu()))


def test_grad_scaler_skip_and_launches():
    model = torch.nn.Linear(16, 4).cuda()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, max_grad_norm=1.0)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 10)
    x = torch.randn(8, 16, device="cuda")
    x[0, 0] = math.inf
    scaler.scale(model(x).square().mean()).backward()
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(opt)
    scaler.update()
    assert int(opt.skipped_steps) == 1
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p.detach(), q)
    assert opt.state_dict()["state"] == {}  # the first step never happened


def test_cuda_graph_capture_replays_the_step():
    base = make_params(torch.float32, [(1000,), (33, 7)], seed=3)
    ours = [torch.nn.Parameter(p.detach().cuda()) for p in base]
    ref = [torch.nn.Parameter(p.detach().cuda()) for p in base]
    kw = dict(lr=torch.tensor(0.05, device="cuda"), momentum=0.9, max_grad_norm=1.0)
    opt, opt_r = SGD(ours, **kw), SGD(ref, **dict(kw, lr=torch.tensor(0.05, device="cuda")))
    for p, q in zip(ours, ref):
        p.grad, q.grad = torch.zeros_like(p), torch.zeros_like(q)
    gen = torch.Generator().manual_seed(4)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):  # warm-up: buffers, flags, tables, workspaces
            opt.step(), opt_r.step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for _ in range(5):
        grads = [g.cuda() for g in random_grads(base, gen, scale=3.0)]
        for p, q, g in zip(ours, ref, grads):
            p.grad.copy_(g), q.grad.copy_(g)
        graph.replay()
        opt_r.step()
    torch.cuda.synchronize()
    for p, q in zip(ours, ref):
        assert torch.equal(p.detach(), q.detach())
