"""gradfast.optim.Adam / AdamW on CUDA against torch's fused CUDA Adam (skipped without a GPU)."""
import copy
import math

import pytest
import torch

from gradfast.optim import Adam, AdamW

import adam_helpers  # noqa: E402
from adam_helpers import clone_params, random_grads, set_grads  # noqa: E402,F401
from clip_helpers import bits  # noqa: E402

pytestmark = pytest.mark.cuda

DEV = "cuda"
SHAPES = [(37,), (5, 7), (), (0,), (4096,), (4097,), (70001,), (3, 1, 4)]


def make_params(dtype=torch.float32, shapes=SHAPES, seed=0, device=DEV):
    return adam_helpers.make_params(dtype, shapes, seed, device)


def assert_state_close(opt_a, params_a, opt_b, params_b, **kw):
    adam_helpers.assert_state_close(opt_a, params_a, opt_b, params_b, fused_step_layout=True,
                                    **kw)


TOL = {torch.float32: dict(rtol=2e-6, atol=2e-7), torch.float64: dict(rtol=1e-13, atol=1e-14)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cfg", [
    dict(), dict(amsgrad=True), dict(weight_decay=0.1), dict(maximize=True, amsgrad=True),
    dict(weight_decay=0.1, decoupled_weight_decay=True), dict(tensor_lr=True, weight_decay=0.01),
])
def test_parity_with_torch_fused(dtype, cfg):
    cfg = dict(cfg)
    tensor_lr = cfg.pop("tensor_lr", False)
    base = make_params(dtype)
    ours, ref = clone_params(base), clone_params(base)
    lr = torch.tensor(1e-2, device=DEV) if tensor_lr else 1e-2
    groups = lambda ps: [{"params": ps[:4]}, {"params": ps[4:], "lr": lr, "betas": (0.8, 0.99)}]  # noqa: E731
    opt = Adam(groups(ours), lr=lr, **cfg)
    opt_r = torch.optim.Adam(groups(ref), lr=lr, fused=True, **cfg)
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        set_grads([ours, ref], random_grads(base, gen))
        opt.step()
        opt_r.step()
    # adam_math.h follows torch's fused CUDA update operation for operation; torch 2.11's
    # kernel was seen to differ from it in the last bit of a few moments over 20 steps.
    assert_state_close(opt, ours, opt_r, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_error_at_most_twice_torch(dtype):
    base = make_params(dtype, shapes=[(3000,), (17, 9), (5,)], seed=5)
    ours, fused = clone_params(base), clone_params(base)
    ref = [torch.nn.Parameter(p.detach().double()) for p in base]
    kw = dict(lr=1e-2, weight_decay=0.1, amsgrad=True)
    opt, opt_f = Adam(ours, **kw), torch.optim.Adam(fused, fused=True, **kw)
    opt_r = torch.optim.Adam(ref, foreach=False, **kw)
    gen = torch.Generator().manual_seed(2)
    for _ in range(20):
        grads = random_grads(base, gen)
        set_grads([ours, fused], grads)
        set_grads([ref], [g.double() for g in grads])
        opt.step(), opt_f.step(), opt_r.step()
    for p, f, r in zip(ours, fused, ref):
        e_ours = (p.double() - r).abs().max().item()
        e_torch = (f.double() - r).abs().max().item()
        assert e_ours <= 2 * e_torch + torch.finfo(dtype).eps * r.abs().max().item()


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_max_grad_norm_matches_clip_then_fused_step(norm_type):
    shapes = [s for s in SHAPES if s != (0,)]
    base = make_params(torch.float32, shapes=shapes, seed=3)
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
    assert_state_close(opt, ours, opt_r, ref, **TOL[torch.float32])


def test_cpu_and_cuda_params_in_one_optimizer():
    base = make_params(torch.float32, shapes=[(50,), (6, 6)], seed=4)
    base += make_params(torch.float32, shapes=[(40,), ()], seed=5, device="cpu")
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


def test_misaligned_views_use_the_scalar_path():
    storage = torch.randn(20001, device=DEV)
    p = torch.nn.Parameter(storage[1:].view(100, 200))  # 4-byte offset: not 16-byte aligned
    q = torch.nn.Parameter(p.detach().clone())
    assert p.data_ptr() % 16 != 0
    opt, opt_r = Adam([p], lr=1e-2), torch.optim.Adam([q], lr=1e-2, fused=True)
    for _ in range(5):
        g = torch.randn_like(q)
        p.grad, q.grad = g.clone(), g.clone()
        opt.step(), opt_r.step()
    torch.testing.assert_close(p, q, **TOL[torch.float32])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_skip_nonfinite_bitwise_unchanged_without_sync(bad):
    base = make_params(torch.float32, seed=6)
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
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for p, b in zip(ours, before):
        assert torch.equal(p.detach(), b)
    for p, st in state.items():
        for k, v in st.items():
            assert torch.equal(opt.state[p][k], v)
    assert int(opt.skipped_steps) == 1


@pytest.mark.parametrize("n_launches", [None, "1"], ids=["default", "one-launch"])
def test_no_host_sync_in_steady_state(n_launches):
    base = make_params(torch.float32, seed=7)
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


def test_grad_scaler_matches_torch_fused():
    base = make_params(torch.float16, shapes=[(300,), (8, 8), (4097,)], seed=8)
    ours, ref = clone_params(base), clone_params(base)
    opt = Adam(ours, lr=1e-3)
    opt_r = torch.optim.Adam(ref, lr=1e-3, fused=True)
    sc, sc_r = torch.amp.GradScaler("cuda", init_scale=256.0), \
        torch.amp.GradScaler("cuda", init_scale=256.0)
    gen = torch.Generator().manual_seed(7)
    for i in range(20):
        grads = [g * 256 for g in random_grads(base, gen)]
        if i == 3:
            grads[1][0, 0] = math.inf
        set_grads([ours, ref], grads)
        sc.scale(torch.ones((), device=DEV)), sc_r.scale(torch.ones((), device=DEV))
        sc.step(opt), sc_r.step(opt_r)
        sc.update(), sc_r.update()
        for p, q in zip(ours, ref):
            assert torch.equal(p.grad, q.grad)  # unscaled in the kernel, written back
        assert sc.get_scale() == sc_r.get_scale()
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-3)
        assert float(opt.state[p]["step"]) == float(opt_r.state[q]["step"]) == 19.0
    assert int(opt.skipped_steps) == 1


def test_grad_scaler_with_clipping_uses_unscaled_norm():
    base = make_params(torch.float32, shapes=[(300,), (8, 8)], seed=9)
    ours, ref = clone_params(base), clone_params(base)
    opt = Adam(ours, lr=1e-2, max_grad_norm=1.0)
    opt_r = torch.optim.Adam(ref, lr=1e-2, fused=True)
    sc, sc_r = torch.amp.GradScaler("cuda", init_scale=1024.0), \
        torch.amp.GradScaler("cuda", init_scale=1024.0)
    gen = torch.Generator().manual_seed(8)
    for _ in range(10):
        set_grads([ours, ref], [g * 1024 for g in random_grads(base, gen, scale=3.0)])
        sc.scale(torch.ones((), device=DEV)), sc_r.scale(torch.ones((), device=DEV))
        sc.step(opt)
        sc_r.unscale_(opt_r)
        total = torch.nn.utils.clip_grad_norm_(ref, 1.0)
        sc_r.step(opt_r)
        sc.update(), sc_r.update()
        torch.testing.assert_close(opt.grad_norm, total, rtol=1e-6, atol=0)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, **TOL[torch.float32])


@pytest.mark.parametrize("n_launches, shapes, seed", [
    (None, [(1000,), (64, 64), (), (5000,)], 10),
    # one launch (GRADFAST_ADAM_LAUNCHES=1, see below), a tensor of several grid rounds too
    ("1", [(1000,), (64, 64), (), (5000,), (70001,)], 28),
], ids=["default", "one-launch"])
def test_cuda_graph_capture_and_replay(n_launches, shapes, seed):
    base = make_params(torch.float32, shapes=shapes, seed=seed)
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


def test_checkpoint_round_trip_with_torch_fused():
    base = make_params(torch.float32, seed=11)
    gen = torch.Generator().manual_seed(10)
    grads = [random_grads(base, gen) for _ in range(30)]
    ref = clone_params(base)
    opt_ref = torch.optim.Adam(ref, lr=1e-2, fused=True)
    ps = clone_params(base)
    a = torch.optim.Adam(ps, lr=1e-2)  # foreach: steps on the CPU
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
    assert_state_close(a, ps, opt_ref, ref, rtol=1e-5, atol=1e-6)


def test_torch_compile_on_cuda():
    base = make_params(torch.float32, shapes=[(300,), (8, 8)], seed=12)
    ours, ref = clone_params(base), clone_params(base)
    opt, opt_r = Adam(ours, lr=1e-2, max_grad_norm=1.0), Adam(ref, lr=1e-2, max_grad_norm=1.0)

    @torch.compile(backend="aot_eager")
    def step():
        opt.step()

    gen = torch.Generator().manual_seed(11)
    for _ in range(4):
        set_grads([ours, ref], random_grads(base, gen, scale=2.0))
        step()
        opt_r.step()
    for p, q in zip(ours, ref):
        assert torch.equal(p, q)


# ---- the opt-in one-launch clip + Adam step (GRADFAST_ADAM_LAUNCHES=1) ---------------------

import functools  # noqa: E402

import gradfast  # noqa: E402
from gradfast._native import adam as native_adam  # noqa: E402
from gradfast._native.backend import REAL  # noqa: E402
from gradfast._native.norm_kind import norm_kind  # noqa: E402
from gradfast._native.step import StepArgs  # noqa: E402
from gradfast.bench.adam_cuda import env_var  # noqa: E402
from gradfast.optim.adam import LAUNCHES_ENV  # noqa: E402

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


SHAPES_NONEMPTY = [s for s in SHAPES if s != (0,)]

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


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("cfg", ONE_LAUNCH_CFGS)
def test_one_launch_bitwise_equals_two_launches(dtype, cfg):
    cfg = dict(cfg)
    if cfg.pop("tensor_lr", False):
        cfg["lr"] = torch.tensor(1e-2, device=DEV)
    if cfg.get("max_grad_norm") == "tensor":
        cfg["max_grad_norm"] = torch.tensor(0.5, device=DEV, dtype=torch.float64)
    cfg.setdefault("lr", 1e-2)
    shapes = SHAPES if cfg.get("grad_norm_type") != math.inf else SHAPES_NONEMPTY
    base = make_params(dtype, shapes=shapes, seed=20)
    gen = torch.Generator().manual_seed(20)
    # Scales so that the clip is active on some steps and not on others.
    grads = [random_grads(base, gen, scale=1e-3 if i % 3 == 0 else 1.0) for i in range(6)]
    run_pair(base, lambda ps: Adam(ps, **cfg), lambda i: grads[i])


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_one_launch_skip_nonfinite(dtype, bad):
    base = make_params(dtype, seed=21)
    gen = torch.Generator().manual_seed(21)
    grads = [random_grads(base, gen) for _ in range(5)]
    grads[2][6][17] = bad
    opt1, _ = run_pair(base, lambda ps: Adam(ps, lr=1e-2, amsgrad=True, skip_nonfinite=True,
                                             max_grad_norm=1.0), lambda i: grads[i], steps=5)
    assert int(opt1.skipped_steps) == 1


def test_one_launch_autoclip_is_not_selected_and_unchanged():
    base = make_params(torch.float32, seed=22)
    gen = torch.Generator().manual_seed(22)
    grads = [random_grads(base, gen, scale=float(i + 1)) for i in range(6)]
    run_pair(base, lambda ps: Adam(ps, lr=1e-2, max_grad_norm=gradfast.AutoClip(percentile=50)),
             lambda i: grads[i], expect=None)


@pytest.mark.parametrize("clip", [False, True])
def test_one_launch_grad_scaler(clip):
    base = make_params(torch.float16, shapes=[(300,), (8, 8), (4097,), (70001,)], seed=23)
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


def test_one_launch_big_and_many_tensors():
    # Far more tiles (and chunks) than co-resident blocks: both grid-stride loops run many
    # rounds; many small tensors; tensors of many chunks.
    shapes = [((1 << 23) + 12345,), (3 << 20,), (5,), ()]
    shapes += [(1 + (i * 37) % 300,) for i in range(3000)]
    base = make_params(torch.float32, shapes=shapes, seed=24)
    gen = torch.Generator().manual_seed(24)
    grads = [random_grads(base, gen, scale=0.01 if i == 1 else 1.0) for i in range(3)]
    run_pair(base, lambda ps: Adam(ps, lr=1e-3, amsgrad=True, max_grad_norm=10.0,
                                   weight_decay=0.01), lambda i: grads[i], steps=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_one_launch_misaligned_params(dtype):
    base = make_params(dtype, shapes=[(20000,), (70001,), (3, 5)], seed=30)
    gen = torch.Generator().manual_seed(30)
    grads = [random_grads(base, gen) for _ in range(3)]
    run_pair(base, lambda ps: Adam(ps, lr=1e-2, max_grad_norm=1.0, amsgrad=True),
             lambda i: grads[i], steps=3, clone=misaligned_clone)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_launch_fallback_gives_the_same_bits(dtype):
    # The native fallback (two launches on the same outputs and workspaces), forced.
    base = make_params(dtype, seed=25)
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


def test_one_launch_is_one_kernel():
    base = make_params(torch.float32, seed=26)
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


def test_one_launch_two_param_groups_use_two_launches():
    base = make_params(torch.float32, seed=29)
    gen = torch.Generator().manual_seed(29)
    grads = [random_grads(base, gen) for _ in range(3)]
    run_pair(base, lambda ps: Adam([{"params": ps[:3]}, {"params": ps[3:], "lr": 1e-3}],
                                   lr=1e-2, max_grad_norm=0.5), lambda i: grads[i], steps=3,
             expect=None)
