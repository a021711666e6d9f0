"""gradfast.optim.Adam / AdamW against torch.optim.Adam / AdamW (torch 2.13), on every
device (tests/devices.py: cpu, cuda, cudasim).

Every comparison runs both optimizers side by side on identical parameters and gradients
made on the `device` fixture's device; nothing is compared with stored numbers. The
reference is torch's fused Adam on the same device (on cudasim: torch's CPU kernels) and,
where stated, its for-loop implementation. CUDA-only behaviour (CUDA graphs, no host sync,
the opt-in one-launch step, CPU and CUDA parameters together) is at the end.
"""
import copy
import functools
import io
import math
import random

import pytest
import torch

import gradfast
from gradfast._native import adam as native_adam
from gradfast._native.backend import REAL
from gradfast._native.norm_kind import norm_kind
from gradfast._native.step import StepArgs
from gradfast.bench.adam_cuda import env_var
from gradfast.optim import Adam, AdamW
from gradfast.optim.adam import LAUNCHES_ENV

import adam_helpers
from adam_helpers import clone_params, random_grads, set_grads
from clip_helpers import bits
from devices import GPU

SHAPES = [(37,), (5, 7), (), (0,), (1000,), (3, 1, 4)]
BIG = (70000,)  # more than one 65536-element chunk
# Around the CUDA kernel's tiles (4096 elements) and chunks; a tensor of several chunks.
CUDA_SHAPES = [(37,), (5, 7), (), (0,), (4096,), (4097,), (70001,), (3, 1, 4)]
# cudasim runs the CUDA kernels a fiber per thread: the same shapes, the multi-chunk one
# shortened to two tiles and a bit (test_cudasim_adam.py runs the kernel at full size).
SIM_SHAPES = [(37,), (5, 7), (), (0,), (4096,), (4097,), (8193,), (3, 1, 4)]
SIM_BIG = (8193,)
DEV = "cuda"  # the CUDA-only tests at the end


def gpu_shapes(device):
    """CUDA_SHAPES, or SIM_SHAPES on the simulator."""
    return device.small(CUDA_SHAPES, SIM_SHAPES)


def make_params(dtype=torch.float32, shapes=SHAPES, seed=0, device=None):
    """Parameters from a seed on device (a tests/devices.py Device; None: the CPU)."""
    return adam_helpers.make_params(dtype, shapes, seed, device.torch if device else "cpu")


def tol(dtype):
    return {torch.float32: dict(rtol=1e-5, atol=1e-6),
            torch.float64: dict(rtol=1e-12, atol=1e-13)}[dtype]


# Against torch's fused CUDA Adam: adam_math.h follows it operation for operation (torch
# 2.11's kernel was seen to differ from it in the last bit of a few moments over 20 steps).
TOL_CUDA = {torch.float32: dict(rtol=2e-6, atol=2e-7),
            torch.float64: dict(rtol=1e-13, atol=1e-14)}


def tol_on(device, dtype):
    """The tolerance against torch's fused Adam on device: CUDA's tighter one on a GPU;
    the CPU's on cpu and on cudasim (whose reference is torch's CPU kernel)."""
    return TOL_CUDA[dtype] if device.name == "cuda" else tol(dtype)


def assert_state_close(opt_a, params_a, opt_b, params_b, fused_step_layout=None, **kw):
    """adam_helpers.assert_state_close; when opt_a is gradfast's (or fused_step_layout), its
    steps must also be fp32 tensors on the parameter's device, as torch's fused Adam keeps
    them."""
    if fused_step_layout is None:
        fused_step_layout = isinstance(opt_a, Adam)
    adam_helpers.assert_state_close(opt_a, params_a, opt_b, params_b,
                                    fused_step_layout=fused_step_layout, **kw)


def cuda_params(dtype=torch.float32, shapes=CUDA_SHAPES, seed=0):
    """make_params on the GPU, for the CUDA-only tests."""
    return adam_helpers.make_params(dtype, shapes, seed, DEV)


def groups_of(params, hypers):
    """Split params into len(hypers) groups, round-robin."""
    groups = [dict(params=[], **h) for h in hypers]
    for i, p in enumerate(params):
        groups[i % len(groups)]["params"].append(p)
    return groups


def random_config(rng: random.Random):
    n_groups = rng.choice([1, 1, 2, 3])
    hypers = []
    for _ in range(n_groups):
        h = dict(lr=rng.choice([1e-3, 1e-2, 3e-2]), betas=(rng.choice([0.9, 0.8, 0.0]),
                                                           rng.choice([0.999, 0.99, 0.5])),
                 eps=rng.choice([1e-8, 1e-6, 1e-3]),
                 weight_decay=rng.choice([0.0, 0.0, 1e-2, 0.3]),
                 amsgrad=rng.random() < 0.4, maximize=rng.random() < 0.3)
        hypers.append(h)
    return dict(hypers=hypers, decoupled=rng.random() < 0.4, tensor_lr=rng.random() < 0.3,
                drop=rng.choice([0.0, 0.0, 0.3]), scheduler=rng.choice([None, "step", "cosine"]))


def build(cls, params, cfg, **extra):
    hypers = [dict(h) for h in cfg["hypers"]]
    if cfg["tensor_lr"]:
        for h in hypers:
            h["lr"] = torch.tensor(h["lr"], device=params[0].device)
    opt = cls(groups_of(params, hypers), decoupled_weight_decay=cfg["decoupled"], **extra)
    sched = None
    if cfg["scheduler"] == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    elif cfg["scheduler"] == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    return opt, sched


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(6))
def test_random_configs_match_torch(device, dtype, seed):
    rng = random.Random(seed * 7 + (dtype == torch.float64))
    cfg = random_config(rng)
    big = device.small(BIG, SIM_BIG)
    base = make_params(dtype, shapes=SHAPES + [big] if seed == 0 else SHAPES, seed=seed,
                       device=device)
    ours, fused, loop = clone_params(base), clone_params(base), clone_params(base)
    opt, sch = build(Adam, ours, cfg)
    opt_f, sch_f = build(torch.optim.Adam, fused, cfg, fused=True)
    opt_l, sch_l = build(torch.optim.Adam, loop, cfg, foreach=False)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(20):
        grads = random_grads(base, gen, drop=cfg["drop"])
        set_grads([ours, fused, loop], grads)
        for o, s in ((opt, sch), (opt_f, sch_f), (opt_l, sch_l)):
            o.step()
            if s is not None:
                s.step()
    assert_state_close(opt, ours, opt_f, fused, **tol(dtype))
    # torch's for-loop Adam computes the step size of a (fp32) Tensor lr in fp32.
    loop_tol = tol(torch.float32 if cfg["tensor_lr"] else dtype)
    for p, q in zip(ours, loop):
        torch.testing.assert_close(p.detach(), q.detach(), **loop_tol)
    for p in ours:
        if opt.state.get(p):
            step = opt.state[p]["step"]
            assert step.dtype == torch.float32 and step.device == p.device and step.dim() == 0


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adamw_matches_torch(device, amsgrad):
    base = make_params(torch.float64, seed=3, device=device)
    ours, ref = clone_params(base), clone_params(base)
    opt = AdamW(ours, lr=1e-2, amsgrad=amsgrad)
    opt_r = torch.optim.AdamW(ref, lr=1e-2, amsgrad=amsgrad, fused=True)
    assert opt.defaults["weight_decay"] == 1e-2 and opt.param_groups[0]["decoupled_weight_decay"]
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        set_grads([ours, ref], random_grads(base, gen))
        opt.step()
        opt_r.step()
    assert_state_close(opt, ours, opt_r, ref, **tol(torch.float64))


def _err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("decoupled", [False, True])
def test_low_precision_error_at_most_twice_torch(device, dtype, decoupled):
    # (on a GPU more elements: 3000, around its tiles)
    shapes = [(3000,), (17, 9), (5,)] if device.name == "cuda" else [(300,), (17, 9), ()]
    base = make_params(dtype, shapes=shapes, seed=5, device=device)
    ours, fused = clone_params(base), clone_params(base)
    ref = [torch.nn.Parameter(p.detach().double()) for p in base]
    kw = dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=decoupled, amsgrad=True)
    opt, opt_f, opt_r = Adam(ours, **kw), torch.optim.Adam(fused, fused=True, **kw), \
        torch.optim.Adam(ref, foreach=False, **kw)
    gen = torch.Generator().manual_seed(2)
    for _ in range(20):
        grads = random_grads(base, gen)
        set_grads([ours, fused], grads)
        set_grads([ref], [g.double() for g in grads])
        opt.step(), opt_f.step(), opt_r.step()
    for p, f, r in zip(ours, fused, ref):
        assert p.dtype == dtype and opt.state[p]["exp_avg"].dtype == dtype
        ours_err, torch_err = _err(p, r), _err(f, r)
        ulp = torch.finfo(dtype).eps * r.abs().max().item()
        assert ours_err <= 2 * torch_err + ulp, (ours_err, torch_err)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_grad_norm_matches_clip_then_step(device, norm_type, dtype):
    # torch (and gradfast) refuse the infinity norm of an empty tensor.
    shapes = [s for s in SHAPES if s != (0,)] if norm_type == math.inf else SHAPES
    base = make_params(dtype, shapes=shapes, seed=11, device=device)
    ours, ref = clone_params(base), clone_params(base)
    opt = Adam(ours, lr=1e-2, max_grad_norm=0.5, grad_norm_type=norm_type, weight_decay=0.05)
    opt_r = torch.optim.Adam(ref, lr=1e-2, weight_decay=0.05, fused=True)
    gen = torch.Generator().manual_seed(3)
    for i in range(20):
        grads = random_grads(base, gen, scale=0.2 if i % 3 else 5.0)  # some steps not clipped
        set_grads([ours, ref], grads)
        total = torch.nn.utils.clip_grad_norm_(ref, 0.5, norm_type)
        opt_r.step()
        opt.step()
        torch.testing.assert_close(opt.grad_norm, total, **tol(dtype))
        for p, g in zip(ours, grads):  # grads are not written back clipped
            assert torch.equal(p.grad, g)
    assert_state_close(opt, ours, opt_r, ref, **tol(dtype))


def test_max_grad_norm_mixed_dtypes_global_norm(device):
    # Two (device, dtype) groups: the norm is still global over all of them.
    p32 = make_params(torch.float32, shapes=[(50,), (4, 4)], seed=1, device=device)
    p64 = make_params(torch.float64, shapes=[(30,), ()], seed=2, device=device)
    ours, ref = clone_params(p32 + p64), clone_params(p32 + p64)
    opt = Adam([{"params": ours[:3]}, {"params": ours[3:]}], lr=1e-2, max_grad_norm=1.0)
    opt_r = torch.optim.Adam([{"params": ref[:3]}, {"params": ref[3:]}], lr=1e-2, fused=True)
    gen = torch.Generator().manual_seed(4)
    for _ in range(20):
        set_grads([ours, ref], random_grads(ours, gen, scale=3.0))
        total = torch.nn.utils.clip_grad_norm_(ref, 1.0)
        opt_r.step()
        opt.step()
        torch.testing.assert_close(opt.grad_norm.double(), total.double(), rtol=1e-6, atol=0)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.detach(), q.detach(), **tol(torch.float32))


def _snapshot(opt, params):
    return [p.detach().clone() for p in params], {
        p: {k: v.clone() for k, v in opt.state[p].items()} for p in params if p in opt.state}


def _assert_bitwise_same(snap, opt, params):
    before_p, before_s = snap
    for p, b in zip(params, before_p):
        assert torch.equal(p.detach(), b)
    for p, st in before_s.items():
        for k, v in st.items():
            assert torch.equal(opt.state[p][k], v), k


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_skip_nonfinite_leaves_everything_unchanged(device, bad, clip):
    base = make_params(torch.float32, seed=21, device=device)
    ours, ref = clone_params(base), clone_params(base)
    opt = Adam(ours, lr=1e-2, amsgrad=True, skip_nonfinite=True, max_grad_norm=clip,
               weight_decay=0.1)
    opt_r = torch.optim.Adam(ref, lr=1e-2, amsgrad=True, fused=True, weight_decay=0.1)
    gen = torch.Generator().manual_seed(5)
    skipped = 0
    for i in range(20):
        grads = random_grads(base, gen)
        if i in (0, 7, 8):
            grads[4] = grads[4].clone()
            grads[4][123] = bad
            set_grads([ours], grads)
            snap = _snapshot(opt, ours)
            opt.step()
            skipped += 1
            _assert_bitwise_same(snap, opt, ours)
            assert int(opt.skipped_steps) == skipped
            assert not math.isfinite(float(opt.grad_norm))
            continue
        set_grads([ours, ref], grads)
        if clip:
            torch.nn.utils.clip_grad_norm_(ref, clip)
        opt.step()
        opt_r.step()
    assert int(opt.skipped_steps) == 3
    assert_state_close(opt, ours, opt_r, ref, **tol(torch.float32))


def _reference_adam_l1(params, grads_per_step, lr, betas, eps, wd, l1, decoupled):
    """torch's fused Adam update written out in fp64 tensor ops, with the L1 term."""
    b1, b2 = betas
    ps = [p.detach().clone() for p in params]
    m = [torch.zeros_like(p) for p in ps]
    v = [torch.zeros_like(p) for p in ps]
    for step, grads in enumerate(grads_per_step, start=1):
        for i, (p, g) in enumerate(zip(ps, grads)):
            g = g.clone()
            if wd and not decoupled:
                g = g + wd * p
            g = g + l1 * torch.sign(p)
            if wd and decoupled:
                p -= lr * wd * p
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
            denom = v[i].sqrt() / math.sqrt(bc2) + eps
            p -= (lr / bc1) * m[i] / denom
    return ps


@pytest.mark.parametrize("decoupled,wd", [(False, 0.0), (False, 0.1), (True, 0.1)])
def test_l1_weight_decay_matches_reference(device, decoupled, wd):
    base = make_params(torch.float64, shapes=[(40,), (6, 6), ()], seed=8, device=device)
    base[0][3] = 0.0  # sign(0) = 0
    ours = clone_params(base)
    opt = Adam(ours, lr=1e-2, weight_decay=wd, decoupled_weight_decay=decoupled,
               l1_weight_decay=0.05)
    gen = torch.Generator().manual_seed(6)
    history = []
    for _ in range(20):
        grads = random_grads(base, gen)
        history.append(grads)
        set_grads([ours], grads)
        opt.step()
    expected = _reference_adam_l1(base, history, 1e-2, (0.9, 0.999), 1e-8, wd, 0.05, decoupled)
    for p, e in zip(ours, expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)
    # And it does something: without L1 the result differs.
    plain = clone_params(base)
    opt2 = Adam(plain, lr=1e-2, weight_decay=wd, decoupled_weight_decay=decoupled)
    for grads in history:
        set_grads([plain], grads)
        opt2.step()
    assert not torch.allclose(plain[0].detach(), ours[0].detach())


def _train(opt, params, grads_list, sched=None):
    for grads in grads_list:
        set_grads([params], grads)
        opt.step()
        if sched is not None:
            sched.step()


@pytest.mark.parametrize("torch_kw", [dict(foreach=False), dict(fused=True), dict()])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_checkpoint_torch_to_gradfast_and_back(device, torch_kw, amsgrad):
    base = make_params(torch.float32, seed=13, device=device)
    gen = torch.Generator().manual_seed(7)
    grads = [random_grads(base, gen, drop=0.2) for _ in range(30)]
    kw = dict(lr=1e-2, amsgrad=amsgrad, weight_decay=0.01)

    # Uninterrupted torch run.
    ref = clone_params(base)
    opt_ref = torch.optim.Adam(ref, **kw, **torch_kw)
    _train(opt_ref, ref, grads)

    # torch for 10 steps -> gradfast for 10 -> torch for 10.
    ps = clone_params(base)
    t1 = torch.optim.Adam(ps, **kw, **torch_kw)
    _train(t1, ps, grads[:10])
    buf = io.BytesIO()
    torch.save(t1.state_dict(), buf)
    buf.seek(0)
    g = Adam(ps, **kw)
    g.load_state_dict(torch.load(buf))
    _train(g, ps, grads[10:20])
    sd = g.state_dict()
    for st in sd["state"].values():
        assert st["step"].dtype == torch.float32 and st["step"].dim() == 0
        assert st["step"].device == base[0].device  # the fused layout, on every device
        assert set(st) == ({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"} if amsgrad
                           else {"step", "exp_avg", "exp_avg_sq"})
    t2 = torch.optim.Adam(ps, **kw, **torch_kw)
    t2.load_state_dict(copy.deepcopy(sd))
    _train(t2, ps, grads[20:])
    assert_state_close(t2, ps, opt_ref, ref, rtol=2e-5, atol=2e-6)


def test_checkpoint_gradfast_roundtrip_is_exact_and_keeps_extras(device):
    base = make_params(torch.float32, seed=14, device=device)
    gen = torch.Generator().manual_seed(8)
    grads = [random_grads(base, gen) for _ in range(20)]
    kw = dict(lr=1e-2, max_grad_norm=0.7, l1_weight_decay=1e-3, skip_nonfinite=True)
    ref = clone_params(base)
    opt_ref = Adam(ref, **kw)
    _train(opt_ref, ref, grads)
    ps = clone_params(base)
    a = Adam(ps, **kw)
    _train(a, ps, grads[:10])
    sd = copy.deepcopy(a.state_dict())
    torch_keys = set(torch.optim.Adam(clone_params(base)).state_dict()["param_groups"][0])
    assert torch_keys <= set(sd["param_groups"][0])
    assert sd["param_groups"][0]["max_grad_norm"] == 0.7
    b = Adam(ps, lr=1e-2)  # extras come back from the checkpoint
    b.load_state_dict(sd)
    _train(b, ps, grads[10:])
    for p, q in zip(ps, ref):
        assert torch.equal(p, q)


def test_old_style_python_number_steps_are_converted(device):
    ps = clone_params(make_params(torch.float32, shapes=[(10,)], device=device))
    ref = clone_params(make_params(torch.float32, shapes=[(10,)], device=device))
    gen = torch.Generator().manual_seed(9)
    grads = [random_grads(ps, gen) for _ in range(6)]
    t = torch.optim.Adam(ps, lr=1e-2, fused=True)
    _train(t, ps, grads[:3])
    sd = t.state_dict()
    for st in sd["state"].values():
        st["step"] = float(st["step"])  # checkpoints from old torch versions
    g = Adam(ps, lr=1e-2)
    g.load_state_dict(sd)
    _train(g, ps, grads[3:])
    opt_ref = torch.optim.Adam(ref, lr=1e-2, fused=True)
    _train(opt_ref, ref, grads)
    assert_state_close(g, ps, opt_ref, ref, **tol(torch.float32))


def test_grad_scaler_matches_torch_fused_with_clipping(device):
    base = make_params(torch.float32, seed=15, device=device)
    ours, ref = clone_params(base), clone_params(base)
    opt = Adam(ours, lr=1e-2, max_grad_norm=1.0)
    opt_r = torch.optim.Adam(ref, lr=1e-2, fused=True)
    sc, sc_r = torch.amp.GradScaler(device.torch, init_scale=1024.0), \
        torch.amp.GradScaler(device.torch, init_scale=1024.0)
    gen = torch.Generator().manual_seed(10)
    for i in range(20):
        grads = [g * 1024.0 for g in random_grads(base, gen)]
        if i == 5:
            grads[0][0] = math.inf
        set_grads([ours, ref], grads)
        snap = _snapshot(opt, ours)
        one = torch.ones((), device=device.torch)
        sc.scale(one), sc_r.scale(one)  # initialises the scales
        sc.step(opt)  # unscales in the kernel, clips the unscaled grads, skips on inf
        sc.update()
        sc_r.unscale_(opt_r)
        torch.nn.utils.clip_grad_norm_(ref, 1.0)
        sc_r.step(opt_r)
        sc_r.update()
        if i == 5:
            _assert_bitwise_same(snap, opt, ours)
        assert sc.get_scale() == sc_r.get_scale()
    assert int(opt.skipped_steps) == 1
    assert_state_close(opt, ours, opt_r, ref, **tol(torch.float32))


def test_grad_scaler_writes_unscaled_grads_back(device):
    base = make_params(torch.float32, shapes=[(33,), (4, 5)], seed=16, device=device)
    ours, ref = clone_params(base), clone_params(base)
    opt = Adam(ours, lr=1e-2)
    opt_r = torch.optim.Adam(ref, lr=1e-2, fused=True)
    sc = torch.amp.GradScaler(device.torch, init_scale=8.0)
    sc_r = torch.amp.GradScaler(device.torch, init_scale=8.0)
    gen = torch.Generator().manual_seed(11)
    for _ in range(5):
        set_grads([ours, ref], [g * 8.0 for g in random_grads(base, gen)])
        one = torch.ones((), device=device.torch)
        sc.scale(one), sc_r.scale(one)
        sc.step(opt), sc_r.step(opt_r)
        sc.update(), sc_r.update()
        for p, q in zip(ours, ref):
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)
    assert_state_close(opt, ours, opt_r, ref, **tol(torch.float32))


class _LM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(30, 16)
        self.lstm = torch.nn.LSTM(16, 24, num_layers=2)
        self.dec = torch.nn.Linear(24, 30)

    def forward(self, x):
        h, _ = self.lstm(self.emb(x))
        return self.dec(h)


@pytest.fixture
def one_thread():
    # LSTM kernels on a busy 2-core machine are slow with two threads; one is plenty.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_lstm_end_to_end_same_losses(device, one_thread):
    torch.manual_seed(0)
    model = _LM().to(device.torch)
    model_r = copy.deepcopy(model)
    # Learnable sequences: each token is the previous one plus a per-sequence stride.
    gen = torch.Generator().manual_seed(1)
    start = torch.randint(0, 30, (12, 8, 1), generator=gen)
    stride = torch.randint(1, 3, (12, 8, 1), generator=gen)
    data = ((start + stride * torch.arange(21)) % 30).to(device.torch)
    opt = AdamW(model.parameters(), lr=1e-2, max_grad_norm=0.5)
    opt_r = torch.optim.AdamW(model_r.parameters(), lr=1e-2, fused=True)
    losses, losses_r = [], []
    for step in range(36):
        batch = data[step % 12]
        x, y = batch[:, :-1].t(), batch[:, 1:].t()
        for m, o, out in ((model, opt, losses), (model_r, opt_r, losses_r)):
            o.zero_grad()
            loss = torch.nn.functional.cross_entropy(m(x).reshape(-1, 30), y.reshape(-1))
            loss.backward()
            if o is opt_r:
                torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)
            o.step()
            out.append(loss.item())
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(losses_r), rtol=1e-4, atol=1e-5)
    assert losses[-1] < losses[0] - 0.5  # it trains


def _error_of(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the exact type is what is compared
        return type(e), str(e)
    return None


# Argument checks run in the constructor, before any kernel: cpu only.
@pytest.mark.parametrize("kwargs", [
    dict(lr=-1.0), dict(eps=-1e-8), dict(betas=(1.0, 0.999)), dict(betas=(0.9, -0.1)),
    dict(weight_decay=-0.1), dict(betas=(0.9, torch.tensor(0.999))),
    dict(lr=torch.tensor([1e-3, 1e-3])), dict(lr=torch.tensor(1e-3), foreach=True),
    dict(betas=(torch.tensor(0.9), torch.tensor(0.99)), foreach=True),
    dict(betas=(torch.tensor([0.9, 0.9]), torch.tensor(0.99)), capturable=True),
    dict(fused=True, foreach=True), dict(fused=True, differentiable=True),
])
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_argument_errors_match_torch(kwargs, cls):
    params = [torch.nn.Parameter(torch.zeros(3))]
    expected = _error_of(lambda: getattr(torch.optim, cls)(params, **kwargs))
    assert expected is not None
    assert _error_of(lambda: getattr(gradfast.optim, cls)(params, **kwargs)) == expected


def test_empty_and_non_tensor_params_errors_match_torch():
    for bad in ([], torch.zeros(3), [torch.zeros(2), 3]):
        assert _error_of(lambda: Adam(bad)) == _error_of(lambda: torch.optim.Adam(bad))


@pytest.mark.parametrize("kwargs", [dict(max_grad_norm=0.0), dict(max_grad_norm=-1.0),
                                    dict(l1_weight_decay=-1e-3), dict(grad_norm_type="nan")])
def test_extra_argument_errors(kwargs):
    with pytest.raises(ValueError):
        Adam([torch.nn.Parameter(torch.zeros(3))], **kwargs)


def test_differentiable_raises_clear_error():
    with pytest.raises(RuntimeError, match="does not support differentiable=True"):
        Adam([torch.nn.Parameter(torch.zeros(3))], differentiable=True)


def test_sparse_grad_error_matches_torch():
    p = torch.nn.Parameter(torch.zeros(4, 3))
    q = torch.nn.Parameter(torch.zeros(4, 3))
    sparse = torch.sparse_coo_tensor([[0, 2]], torch.ones(2, 3), (4, 3))
    p.grad, q.grad = sparse.clone(), sparse.clone()
    expected = _error_of(torch.optim.Adam([q]).step)
    assert expected is not None and _error_of(Adam([p]).step) == expected


def test_complex_params_raise_clearly():
    with pytest.raises(RuntimeError, match="complex"):
        Adam([torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))])


def test_foreach_fused_accepted_and_stored():
    p = [torch.nn.Parameter(torch.zeros(3))]
    opt = Adam(p, foreach=False, fused=None)
    assert opt.param_groups[0]["foreach"] is False and opt.param_groups[0]["fused"] is None
    opt = Adam(p, fused=True)
    assert opt.param_groups[0]["fused"] is True


def test_params_without_grads_keep_no_state(device):
    ps = clone_params(make_params(torch.float32, shapes=[(4,), (5,)], device=device))
    opt = Adam(ps)
    ps[0].grad = torch.ones(4, device=device.torch)
    opt.step()
    assert ps[1] not in opt.state and float(opt.state[ps[0]]["step"]) == 1.0
    opt.zero_grad()
    opt.step()  # no grads at all: nothing happens
    assert float(opt.state[ps[0]]["step"]) == 1.0


def test_non_contiguous_grad_and_channels_last_param(device):
    p = torch.nn.Parameter(torch.randn(2, 3, 4, 5).to(device.torch,
                                                      memory_format=torch.channels_last))
    q = torch.nn.Parameter(p.detach().clone())
    g = torch.randn(5, 4, 3, 2).to(device.torch).permute(3, 2, 1, 0)  # neither contiguous
    # nor p's layout
    # (torch's fused CPU kernel assumes grads laid out like params: compare with the loop.)
    opt, opt_r = Adam([p], lr=1e-2), torch.optim.Adam([q], lr=1e-2, foreach=False)
    for _ in range(3):
        p.grad, q.grad = g.clone(), g.clone()
        opt.step(), opt_r.step()
    assert opt.state[p]["exp_avg"].stride() == p.stride()
    torch.testing.assert_close(p, q, **tol(torch.float32))


def test_tensor_lr_changed_in_place_is_read_each_step(device):
    base = make_params(torch.float32, shapes=[(20,)], device=device)
    ours, ref = clone_params(base), clone_params(base)
    lr, lr_r = torch.tensor(1e-2, device=device.torch), torch.tensor(1e-2, device=device.torch)
    opt, opt_r = Adam(ours, lr=lr), torch.optim.Adam(ref, lr=lr_r, fused=True)
    gen = torch.Generator().manual_seed(12)
    for i in range(10):
        set_grads([ours, ref], random_grads(base, gen))
        lr.fill_(1e-2 / (i + 1))
        lr_r.fill_(1e-2 / (i + 1))
        opt.step(), opt_r.step()
    torch.testing.assert_close(ours[0], ref[0], **tol(torch.float32))


# torch.compile: on cudasim the compiled graph calls the same custom ops, which
# test_custom_ops.py opchecks on the simulated kernels; compiling again there is slow.
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)],
                         indirect=True)
def test_torch_compile_step_matches_eager(device):
    # (on CUDA also the shapes of the CUDA file's compile test)
    shapes = [(300,), (8, 8)] if device.name == "cuda" else [(64,), (8, 8)]
    base = make_params(torch.float32, shapes=shapes, device=device)
    ours, ref = clone_params(base), clone_params(base)
    opt, opt_r = Adam(ours, lr=1e-2, max_grad_norm=1.0), Adam(ref, lr=1e-2, max_grad_norm=1.0)

    @torch.compile(backend="aot_eager", fullgraph=False)
    def compiled_step():
        opt.step()

    gen = torch.Generator().manual_seed(13)
    for _ in range(4):
        set_grads([ours, ref], random_grads(base, gen, scale=2.0))
        compiled_step()
        opt_r.step()
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert float(opt.state[ours[0]]["step"]) == 4.0


def test_add_param_group_mid_training_matches_torch(device):
    base = make_params(torch.float32, shapes=[(20,), (3, 3), (7,)], seed=17, device=device)
    ours, ref = clone_params(base), clone_params(base)
    opt = Adam(ours[:2], lr=1e-2)
    opt_r = torch.optim.Adam(ref[:2], lr=1e-2, fused=True)
    gen = torch.Generator().manual_seed(14)
    for i in range(12):
        if i == 5:
            opt.add_param_group({"params": [ours[2]], "lr": 3e-2, "weight_decay": 0.1})
            opt_r.add_param_group({"params": [ref[2]], "lr": 3e-2, "weight_decay": 0.1})
        set_grads([ours, ref], random_grads(base, gen))
        opt.step(), opt_r.step()
    assert opt.param_groups[1]["l1_weight_decay"] == 0.0  # gradfast's extras get defaults
    assert_state_close(opt, ours, opt_r, ref, **tol(torch.float32))


def test_pickled_optimizer_keeps_working(device):
    import pickle

    ps = clone_params(make_params(torch.float32, shapes=[(10,)], device=device))
    opt = AdamW(ps, lr=1e-2, max_grad_norm=1.0)
    ps[0].grad = torch.ones(10, device=device.torch)
    opt.step()
    opt2 = pickle.loads(pickle.dumps(opt))
    assert opt2.param_groups[0]["max_grad_norm"] == 1.0 and opt2.skipped_steps is not None
    p2 = opt2.param_groups[0]["params"][0]
    p2.grad = torch.ones(10, device=device.torch)
    opt2.step()
    assert float(opt2.state[p2]["step"]) == 2.0


def test_tensor_and_autoclip_max_grad_norm(device):
    base = make_params(torch.float32, shapes=[(50,), (6, 6)], seed=18, device=device)
    gen = torch.Generator().manual_seed(15)
    grads = [random_grads(base, gen, scale=3.0) for _ in range(12)]
    # A Tensor threshold, changed in place, is read each step.
    ours, ref = clone_params(base), clone_params(base)
    thr = torch.tensor(0.5, device=device.torch)
    opt = Adam(ours, lr=1e-2, max_grad_norm=thr)
    opt_r = torch.optim.Adam(ref, lr=1e-2, fused=True)
    for i, g in enumerate(grads):
        thr.fill_(0.5 + 0.1 * i)
        set_grads([ours, ref], g)
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in g]))
        coef = torch.clamp(thr / (total + 1e-6), max=1.0)
        for q in ref:
            q.grad.mul_(coef)
        opt.step(), opt_r.step()
    assert_state_close(opt, ours, opt_r, ref, **tol(torch.float32))
    # gradfast.AutoClip: the optimizer calls its threshold() with the global norm.
    ours, ref = clone_params(base), clone_params(base)
    ac, ac_r = gradfast.AutoClip(percentile=50), gradfast.AutoClip(percentile=50)
    opt = Adam(ours, lr=1e-2, max_grad_norm=ac)
    opt_r = torch.optim.Adam(ref, lr=1e-2, fused=True)
    for g in grads:
        set_grads([ours, ref], g)
        ac_r(ref)  # standalone AutoClip: record, threshold, scale the grads
        opt.step(), opt_r.step()
        assert torch.equal(ac.last_threshold, ac_r.last_threshold)
    assert_state_close(opt, ours, opt_r, ref, **tol(torch.float32))


# ---- from torch's fused CUDA tests, on every device ------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cfg", [
    dict(), dict(amsgrad=True), dict(weight_decay=0.1), dict(maximize=True, amsgrad=True),
    dict(weight_decay=0.1, decoupled_weight_decay=True), dict(tensor_lr=True, weight_decay=0.01),
])
def test_parity_with_torch_fused(device, dtype, cfg):
    cfg = dict(cfg)
    tensor_lr = cfg.pop("tensor_lr", False)
    base = make_params(dtype, shapes=gpu_shapes(device), device=device)
    ours, ref = clone_params(base), clone_params(base)
    lr = torch.tensor(1e-2, device=device.torch) if tensor_lr else 1e-2
    groups = lambda ps: [{"params": ps[:4]}, {"params": ps[4:], "lr": lr, "betas": (0.8, 0.99)}]  # noqa: E731
    opt = Adam(groups(ours), lr=lr, **cfg)
    opt_r = torch.optim.Adam(groups(ref), lr=lr, fused=True, **cfg)
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        set_grads([ours, ref], random_grads(base, gen))
        opt.step()
        opt_r.step()
    assert_state_close(opt, ours, opt_r, ref, **tol_on(device, dtype))


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_max_grad_norm_matches_clip_then_fused_step(device, norm_type):
    shapes = [s for s in gpu_shapes(device) if s != (0,)]
    base = make_params(torch.float32, shapes=shapes, seed=3, device=device)
    ours, ref = clone_params(base), clone_params(base)
    opt = AdamW(ours, lr=1e-2, max_grad_norm=0.5, grad_norm_type=norm_type)
    opt_r = torch.optim.AdamW(ref, lr=1e-2, fused=True)
    gen = torch.Generator().manual_seed(3)
    for i in range(20):
        grads = random_grads(base, gen, scale=0.001 if i % 4 == 0 else 1.0)
        set_grads([ours, ref], grads)
        total = torch.nn.utils.clip_grad_norm_(ref, 0.5, norm_type)
        opt_r.step()
        opt.step()
        torch.testing.assert_close(opt.grad_norm, total, rtol=1e-6, atol=0)
    assert_state_close(opt, ours, opt_r, ref, **tol_on(device, torch.float32))


def test_checkpoint_round_trip_with_torch_fused(device):
    base = make_params(torch.float32, shapes=gpu_shapes(device), seed=11, device=device)
    gen = torch.Generator().manual_seed(10)
    grads = [random_grads(base, gen) for _ in range(30)]
    ref = clone_params(base)
    opt_ref = torch.optim.Adam(ref, lr=1e-2, fused=True)
    ps = clone_params(base)
    a = torch.optim.Adam(ps, lr=1e-2)  # foreach: steps on the CPU (on a GPU too)
    for i, g in enumerate(grads):
        set_grads([ref], g)
        opt_ref.step()
        if i == 10:
            b = Adam(ps, lr=1e-2)
            b.load_state_dict(a.state_dict())
            a = b
        if i == 20:
            c = torch.optim.Adam(ps, lr=1e-2, fused=True)
            c.load_state_dict(copy.deepcopy(a.state_dict()))
            a = c
        set_grads([ps], g)
        a.step()
    assert_state_close(a, ps, opt_ref, ref, fused_step_layout=True, rtol=1e-5, atol=1e-6)


# ---- the CUDA kernels' paths, on the GPU and on cudasim ----------------------


@pytest.mark.parametrize("device", GPU, indirect=True)
def test_misaligned_views_use_the_scalar_path(device):
    storage = torch.randn(20001, device=device.torch)
    p = torch.nn.Parameter(storage[1:].view(100, 200))  # 4-byte offset: not 16-byte aligned
    q = torch.nn.Parameter(p.detach().clone())
    assert p.data_ptr() % 16 != 0
    opt, opt_r = Adam([p], lr=1e-2), torch.optim.Adam([q], lr=1e-2, fused=True)
    for _ in range(5):
        g = torch.randn_like(q)
        p.grad, q.grad = g.clone(), g.clone()
        opt.step(), opt_r.step()
    torch.testing.assert_close(p, q, **tol_on(device, torch.float32))


@pytest.mark.parametrize("device", GPU, indirect=True)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_skip_nonfinite_bitwise_unchanged_without_sync(device, bad):
    # The skip decided on the device (the sync debug mode only exists on a GPU).
    base = make_params(torch.float32, shapes=gpu_shapes(device), seed=6, device=device)
    ours = clone_params(base)
    opt = Adam(ours, lr=1e-2, amsgrad=True, skip_nonfinite=True, max_grad_norm=1.0)
    gen = torch.Generator().manual_seed(5)
    set_grads([ours], random_grads(base, gen))
    opt.step()
    before = [p.detach().clone() for p in ours]
    state = {p: {k: v.clone() for k, v in opt.state[p].items()} for p in ours if p in opt.state}
    grads = random_grads(base, gen)
    grads[6][17] = bad
    set_grads([ours], grads)
    if device.name == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        if device.name == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    for p, b in zip(ours, before):
        assert torch.equal(p.detach(), b)
    for p, st in state.items():
        for k, v in st.items():
            assert torch.equal(opt.state[p][k], v)
    assert int(opt.skipped_steps) == 1


@pytest.mark.parametrize("device", GPU, indirect=True)
def test_grad_scaler_fp16_matches_torch_fused(device):
    base = make_params(torch.float16, shapes=[(300,), (8, 8), (4097,)], seed=8, device=device)
    ours, ref = clone_params(base), clone_params(base)
    opt = Adam(ours, lr=1e-3)
    opt_r = torch.optim.Adam(ref, lr=1e-3, fused=True)
    sc, sc_r = torch.amp.GradScaler(device.torch, init_scale=256.0), \
        torch.amp.GradScaler(device.torch, init_scale=256.0)
    gen = torch.Generator().manual_seed(7)
    for i in range(20):
        grads = [g * 256 for g in random_grads(base, gen)]
        if i == 3:
            grads[1][0, 0] = math.inf
        set_grads([ours, ref], grads)
        sc.scale(torch.ones((), device=device.torch)), sc_r.scale(torch.ones((), device=device.torch))
        sc.step(opt), sc_r.step(opt_r)
        sc.update(), sc_r.update()
        for p, q in zip(ours, ref):
            assert torch.equal(p.grad, q.grad)  # unscaled in the kernel, written back
        assert sc.get_scale() == sc_r.get_scale()
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-3)
        assert float(opt.state[p]["step"]) == float(opt_r.state[q]["step"]) == 19.0
    assert int(opt.skipped_steps) == 1


@pytest.mark.parametrize("device", GPU, indirect=True)
def test_grad_scaler_with_clipping_uses_unscaled_norm(device):
    base = make_params(torch.float32, shapes=[(300,), (8, 8)], seed=9, device=device)
    ours, ref = clone_params(base), clone_params(base)
    opt = Adam(ours, lr=1e-2, max_grad_norm=1.0)
    opt_r = torch.optim.Adam(ref, lr=1e-2, fused=True)
    sc, sc_r = torch.amp.GradScaler(device.torch, init_scale=1024.0), \
        torch.amp.GradScaler(device.torch, init_scale=1024.0)
    gen = torch.Generator().manual_seed(8)
    for _ in range(10):
        set_grads([ours, ref], [g * 1024 for g in random_grads(base, gen, scale=3.0)])
        sc.scale(torch.ones((), device=device.torch)), sc_r.scale(torch.ones((), device=device.torch))
        sc.step(opt)
        sc_r.unscale_(opt_r)
        total = torch.nn.utils.clip_grad_norm_(ref, 1.0)
        sc_r.step(opt_r)
        sc.update(), sc_r.update()
        torch.testing.assert_close(opt.grad_norm, total, rtol=1e-6, atol=0)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, **tol_on(device, torch.float32))


# ---- CUDA only -----------------------------------------------------------------------------
# GPU-side behaviour: CPU and CUDA parameters in one optimizer, the sync debug mode, CUDA
# graphs, the profiler, and the opt-in one-launch step (gradfast.optim selects it for CUDA
# parameters only; test_cudasim_adam.py runs its kernel on the simulator).


@pytest.mark.cuda
def test_cpu_and_cuda_params_in_one_optimizer():
    base = cuda_params(torch.float32, shapes=[(50,), (6, 6)], seed=4)
    base += make_params(torch.float32, shapes=[(40,), ()], seed=5)
    ours, ref = clone_params(base), clone_params(base)
    opt = Adam(ours, lr=1e-2, max_grad_norm=1.0)
    opt_r = torch.optim.Adam(ref, lr=1e-2, fused=True)
    gen = torch.Generator().manual_seed(4)
    for _ in range(20):
        set_grads([ours, ref], random_grads(base, gen, scale=2.0))
        torch.nn.utils.clip_grad_norm_(ref, 1.0)
        opt_r.step()
        opt.step()
    assert_state_close(opt, ours, opt_r, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("n_launches", [None, "1"], ids=["default", "one-launch"])
def test_no_host_sync_in_steady_state(n_launches):
    base = cuda_params(torch.float32, seed=7)
    ours = clone_params(base)
    lr = torch.tensor(1e-3, device=DEV)
    opt = Adam(ours, lr=lr, max_grad_norm=1.0, skip_nonfinite=True, l1_weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    gen = torch.Generator().manual_seed(6)
    grads = [random_grads(base, gen) for _ in range(4)]
    with launches(n_launches):  # GRADFAST_ADAM_LAUNCHES (see the one-launch tests below)
        set_grads([ours], grads[0])
        opt.step()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for g in grads[1:]:
                for p, gg in zip(ours, g):
                    p.grad.copy_(gg)
                opt.step()
                sched.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert float(opt.state[ours[0]]["step"]) == 4.0
    if n_launches == "1":
        assert opt._gf_launches == 1


@pytest.mark.cuda
@pytest.mark.parametrize("n_launches, shapes, seed", [
    (None, [(1000,), (64, 64), (), (5000,)], 10),
    # one launch (GRADFAST_ADAM_LAUNCHES=1, see below), a tensor of several grid rounds too
    ("1", [(1000,), (64, 64), (), (5000,), (70001,)], 28),
], ids=["default", "one-launch"])
def test_cuda_graph_capture_and_replay(n_launches, shapes, seed):
    base = cuda_params(torch.float32, shapes=shapes, seed=seed)
    ours, eager = clone_params(base), clone_params(base)
    lr, lr_e = torch.tensor(1e-2, device=DEV), torch.tensor(1e-2, device=DEV)
    kw = dict(amsgrad=True, weight_decay=0.01, max_grad_norm=1.0, skip_nonfinite=True,
              capturable=True)
    opt, opt_e = Adam(ours, lr=lr, **kw), Adam(eager, lr=lr_e, **kw)
    gen = torch.Generator().manual_seed(seed)
    static_grads = [torch.zeros_like(p) for p in ours]
    for p, g in zip(ours, static_grads):
        p.grad = g
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with launches(n_launches):
        with torch.cuda.stream(s):  # warm-up: state, device tables, workspaces
            for _ in range(3):
                grads = random_grads(base, gen)
                for g, x in zip(static_grads, grads):
                    g.copy_(x)
                set_grads([eager], grads)
                opt.step()
                with launches(None):
                    opt_e.step()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            opt.step()
        if n_launches == "1":
            assert opt._gf_launches == 1
    for i in range(10):
        grads = random_grads(base, gen, scale=3.0)
        if i == 4:
            grads[3][7] = math.nan
        for g, x in zip(static_grads, grads):
            g.copy_(x)
        set_grads([eager], grads)
        lr.fill_(1e-2 / (i + 1))
        lr_e.fill_(1e-2 / (i + 1))
        graph.replay()
        opt_e.step()  # eager, the default two launches
        torch.cuda.synchronize()
        for p, q in zip(ours, eager):
            assert_bitwise(p, q)
            for k in opt.state[p]:
                assert_bitwise(opt.state[p][k], opt_e.state[q][k])
        assert_bitwise(opt.grad_norm, opt_e.grad_norm)
    assert float(opt.state[ours[0]]["step"]) == 12.0
    assert int(opt.skipped_steps) == int(opt_e.skipped_steps) == 1
    assert_workspaces_zero()


# ---- the opt-in one-launch clip + Adam step (GRADFAST_ADAM_LAUNCHES=1) ---------------------


ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


# GRADFAST_ADAM_LAUNCHES set (or removed, None) for a block, as the bench sets it.
launches = functools.partial(env_var, LAUNCHES_ENV)


def assert_bitwise(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
    assert torch.equal(bits(a), bits(b))


def assert_same_step(opt1, ps1, opt2, ps2):
    """Everything a step writes, bitwise: params, grads (unscaled in place), moments, steps,
    grad_norm and skipped_steps."""
    for p, q in zip(ps1, ps2):
        assert_bitwise(p, q)
        if p.grad is not None:
            assert_bitwise(p.grad, q.grad)
        s1, s2 = opt1.state.get(p, {}), opt2.state.get(q, {})
        assert set(s1) == set(s2)
        for k in s1:
            assert_bitwise(s1[k], s2[k])
    assert (opt1.grad_norm is None) == (opt2.grad_norm is None)
    if opt1.grad_norm is not None:
        assert_bitwise(opt1.grad_norm, opt2.grad_norm)
    assert_bitwise(opt1.skipped_steps, opt2.skipped_steps)


def assert_workspaces_zero():
    for (kind, _, _), ws in REAL.workspaces.items():
        if kind in ("norm", "adam"):
            assert int(torch.count_nonzero(ws)) == 0


def misaligned_clone(ps):
    """Parameters 4 bytes (fp32) past a 16-byte boundary: the update's scalar path."""
    out = []
    for p in ps:
        storage = torch.empty(p.numel() + 1, dtype=p.dtype, device=p.device)
        view = storage[1:].view(p.shape)
        view.copy_(p)
        out.append(torch.nn.Parameter(view))
    return out


def run_pair(base, make_opt, grads_for, steps=6, expect=1, scalers=None, clone=clone_params):
    """The same steps with GRADFAST_ADAM_LAUNCHES=1 and with the default; bitwise equal
    after every step, and the one-launch kernel ran (expect=1) or was not selected (None)."""
    one, two = clone(base), clone(base)
    opt1, opt2 = make_opt(one), make_opt(two)
    for i in range(steps):
        set_grads([one, two], grads_for(i))
        if scalers is None:
            with launches("1"):
                opt1.step()
            with launches(None):
                opt2.step()
        else:
            sc1, sc2 = scalers
            for sc, opt, env in ((sc1, opt1, "1"), (sc2, opt2, None)):
                sc.scale(torch.ones((), device=DEV))
                with launches(env):
                    sc.step(opt)
                sc.update()
            assert sc1.get_scale() == sc2.get_scale()
        assert opt1._gf_launches == expect
        assert opt2._gf_launches is None or expect is None
        assert_same_step(opt1, one, opt2, two)
    assert_workspaces_zero()
    return opt1, opt2


SHAPES_NONEMPTY = [s for s in CUDA_SHAPES if s != (0,)]

ONE_LAUNCH_CFGS = [
    dict(max_grad_norm=0.5),
    dict(max_grad_norm=0.5, amsgrad=True),
    dict(max_grad_norm=0.5, weight_decay=0.1),
    dict(max_grad_norm=0.5, weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True),
    dict(max_grad_norm=0.5, l1_weight_decay=1e-3, weight_decay=0.01),
    dict(max_grad_norm=0.5, maximize=True),
    dict(max_grad_norm=0.5, tensor_lr=True),
    dict(max_grad_norm="tensor", skip_nonfinite=True),
    dict(skip_nonfinite=True),  # skip only: the norm without clipping
    dict(max_grad_norm=0.5, grad_norm_type=1.0),
    dict(max_grad_norm=0.5, grad_norm_type=math.inf),
    dict(max_grad_norm=0.5, grad_norm_type=3.0),
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("cfg", ONE_LAUNCH_CFGS)
def test_one_launch_bitwise_equals_two_launches(dtype, cfg):
    cfg = dict(cfg)
    if cfg.pop("tensor_lr", False):
        cfg["lr"] = torch.tensor(1e-2, device=DEV)
    if cfg.get("max_grad_norm") == "tensor":
        cfg["max_grad_norm"] = torch.tensor(0.5, device=DEV, dtype=torch.float64)
    cfg.setdefault("lr", 1e-2)
    shapes = CUDA_SHAPES if cfg.get("grad_norm_type") != math.inf else SHAPES_NONEMPTY
    base = cuda_params(dtype, shapes=shapes, seed=20)
    gen = torch.Generator().manual_seed(20)
    # Scales so that the clip is active on some steps and not on others.
    grads = [random_grads(base, gen, scale=1e-3 if i % 3 == 0 else 1.0) for i in range(6)]
    run_pair(base, lambda ps: Adam(ps, **cfg), lambda i: grads[i])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_one_launch_skip_nonfinite(dtype, bad):
    base = cuda_params(dtype, seed=21)
    gen = torch.Generator().manual_seed(21)
    grads = [random_grads(base, gen) for _ in range(5)]
    grads[2][6][17] = bad
    opt1, _ = run_pair(base, lambda ps: Adam(ps, lr=1e-2, amsgrad=True, skip_nonfinite=True,
                                             max_grad_norm=1.0), lambda i: grads[i], steps=5)
    assert int(opt1.skipped_steps) == 1


@pytest.mark.cuda
def test_one_launch_autoclip_is_not_selected_and_unchanged():
    base = cuda_params(torch.float32, seed=22)
    gen = torch.Generator().manual_seed(22)
    grads = [random_grads(base, gen, scale=float(i + 1)) for i in range(6)]
    run_pair(base, lambda ps: Adam(ps, lr=1e-2, max_grad_norm=gradfast.AutoClip(percentile=50)),
             lambda i: grads[i], expect=None)


@pytest.mark.cuda
@pytest.mark.parametrize("clip", [False, True])
def test_one_launch_grad_scaler(clip):
    base = cuda_params(torch.float16, shapes=[(300,), (8, 8), (4097,), (70001,)], seed=23)
    gen = torch.Generator().manual_seed(23)
    grads = [[g * 256 for g in random_grads(base, gen)] for _ in range(8)]
    grads[3][1][0, 0] = math.inf
    kw = dict(lr=1e-3, skip_nonfinite=True)
    if clip:
        kw["max_grad_norm"] = 1.0
    scalers = (torch.amp.GradScaler("cuda", init_scale=256.0),
               torch.amp.GradScaler("cuda", init_scale=256.0))
    opt1, _ = run_pair(base, lambda ps: Adam(ps, **kw), lambda i: grads[i], steps=8,
                       scalers=scalers)
    assert int(opt1.skipped_steps) == 1


@pytest.mark.cuda
def test_one_launch_big_and_many_tensors():
    # Far more tiles (and chunks) than co-resident blocks: both grid-stride loops run many
    # rounds; many small tensors; tensors of many chunks.
    shapes = [((1 << 23) + 12345,), (3 << 20,), (5,), ()]
    shapes += [(1 + (i * 37) % 300,) for i in range(3000)]
    base = cuda_params(torch.float32, shapes=shapes, seed=24)
    gen = torch.Generator().manual_seed(24)
    grads = [random_grads(base, gen, scale=0.01 if i == 1 else 1.0) for i in range(3)]
    run_pair(base, lambda ps: Adam(ps, lr=1e-3, amsgrad=True, max_grad_norm=10.0,
                                   weight_decay=0.01), lambda i: grads[i], steps=3)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_one_launch_misaligned_params(dtype):
    base = cuda_params(dtype, shapes=[(20000,), (70001,), (3, 5)], seed=30)
    gen = torch.Generator().manual_seed(30)
    grads = [random_grads(base, gen) for _ in range(3)]
    run_pair(base, lambda ps: Adam(ps, lr=1e-2, max_grad_norm=1.0, amsgrad=True),
             lambda i: grads[i], steps=3, clone=misaligned_clone)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_launch_fallback_gives_the_same_bits(dtype):
    # The native fallback (two launches on the same outputs and workspaces), forced.
    base = cuda_params(dtype, seed=25)
    gen = torch.Generator().manual_seed(25)
    grads = random_grads(base, gen)
    outs = []
    for coop in (True, False):
        ps = clone_params(base)
        state = [(torch.zeros_like(p), torch.zeros_like(p), torch.zeros_like(p),
                  torch.zeros((), device=DEV)) for p in ps]
        skipped = torch.zeros((), dtype=torch.int64, device=DEV)
        gs = [g.clone() for g in grads]
        lists = native_adam.AdamLists(
            [p.detach() for p in ps], gs, [s[0] for s in state], [s[1] for s in state],
            [s[2] for s in state], [s[3] for s in state])
        hyper = native_adam.AdamHyper(0.9, 0.999, 1e-8, 0.0, 0.0, False, True, 0)
        step = StepArgs(1e-2, None, None, None, None, True, 0.5, None, True)
        total, n = native_adam.clip_adam_step(lists, hyper, step, skipped, 2.0, norm_kind(2.0),
                                              cooperative=coop)
        assert n == (1 if coop else 2)
        outs.append([total, skipped] + [p.detach() for p in ps] + [t for s in state for t in s])
    for a, b in zip(*outs):
        assert_bitwise(a, b)
    assert_workspaces_zero()


@pytest.mark.cuda
def test_one_launch_is_one_kernel():
    base = cuda_params(torch.float32, seed=26)
    ps = clone_params(base)
    opt = Adam(ps, lr=1e-2, max_grad_norm=1.0)
    gen = torch.Generator().manual_seed(26)
    with launches("1"):
        set_grads([ps], random_grads(base, gen))
        opt.step()  # warm-up: state, tables, workspaces
        torch.cuda.synchronize()
        set_grads([ps], random_grads(base, gen))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            opt.step()
            torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert sum("clip_adam_kernel" in n for n in names) == 1, names
    assert not any("multi_norm_kernel" in n or "::adam_kernel<" in n for n in names), names
    assert opt._gf_launches == 1


@pytest.mark.cuda
def test_one_launch_two_param_groups_use_two_launches():
    base = cuda_params(torch.float32, seed=29)
    gen = torch.Generator().manual_seed(29)
    grads = [random_grads(base, gen) for _ in range(3)]
    run_pair(base, lambda ps: Adam([{"params": ps[:3]}, {"params": ps[3:], "lr": 1e-3}],
                                   lr=1e-2, max_grad_norm=0.5), lambda i: grads[i], steps=3,
             expect=None)
