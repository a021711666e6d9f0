"""gradfast.optim.SGD against torch.optim.SGD (torch 2.13), on the CPU.

Every comparison runs both optimizers side by side on identical parameters and gradients;
the reference is torch's for-loop SGD (foreach=False, torch's CPU default), which gradfast
reproduces operation for operation (bitwise on fp32/fp64 where torch's CPU add is an FMA).
"""
import copy
import io
import math
import random

import pytest
import torch

import gradfast
from gradfast.optim import SGD

from adam_helpers import clone_params, make_params, random_grads, set_grads
from clip_helpers import bits

SHAPES = [(37,), (5, 7), (), (0,), (1000,), (3, 1, 4), (2, 3, 4, 5)]
BIG = (70000,)  # more than one 65536-element chunk


def torch_fma() -> bool:
    # torch's vectorised CPU add is an FMA from AVX2 on (its DEFAULT build has no FMA).
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def tol(dtype):
    return {torch.float32: dict(rtol=1e-6, atol=1e-7),
            torch.float64: dict(rtol=1e-12, atol=1e-14)}[dtype]


def assert_same_state(opt_a, params_a, opt_b, params_b, exact: bool, **kw):
    """Parameters and momentum buffers equal (bitwise with exact) or close, and the same
    state keys."""
    for pa, pb in zip(params_a, params_b):
        sa, sb = opt_a.state.get(pa, {}), opt_b.state.get(pb, {})
        assert set(sa) == set(sb)
        pairs = [(pa.detach(), pb.detach())] + [(sa[k], sb[k]) for k in sa]
        for a, b in pairs:
            if exact:
                assert torch.equal(bits(a), bits(b))
            else:
                torch.testing.assert_close(a, b, **kw)


def random_config(rng: random.Random):
    hypers = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        momentum = rng.choice([0.0, 0.9, 0.9, 0.5])
        nesterov = momentum != 0 and rng.random() < 0.4
        hypers.append(dict(
            lr=rng.choice([1e-3, 1e-2, 0.1]), momentum=momentum,
            dampening=0.0 if nesterov or momentum == 0 else rng.choice([0.0, 0.1, 0.5]),
            nesterov=nesterov, weight_decay=rng.choice([0.0, 0.0, 1e-2, 0.3]),
            maximize=rng.random() < 0.3))
    return dict(hypers=hypers, tensor_lr=rng.random() < 0.3, drop=rng.choice([0.0, 0.0, 0.3]),
                scheduler=rng.choice([None, "step", "cosine"]))


def groups_of(params, hypers):
    groups = [dict(params=[], **h) for h in hypers]
    for i, p in enumerate(params):
        groups[i % len(groups)]["params"].append(p)
    return groups


def build(cls, params, cfg, **extra):
    hypers = [dict(h) for h in cfg["hypers"]]
    if cfg["tensor_lr"]:
        for h in hypers:
            h["lr"] = torch.tensor(h["lr"])
    opt = cls(groups_of(params, hypers), **extra)
    sched = None
    if cfg["scheduler"] == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    elif cfg["scheduler"] == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    return opt, sched


def run(pairs, base, gen, steps=20, drop=0.0, scale=1.0):
    """Step every (optimizer, scheduler, params) of pairs on the same random grads."""
    for _ in range(steps):
        grads = random_grads(base, gen, drop=drop, scale=scale)
        set_grads([ps for _, _, ps in pairs], grads)
        for opt, sched, _ in pairs:
            opt.step()
            if sched is not None:
                sched.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(8))
def test_random_configs_match_torch(dtype, seed):
    rng = random.Random(seed * 7 + (dtype == torch.float64))
    cfg = random_config(rng)
    base = make_params(dtype, SHAPES + [BIG] if seed == 0 else SHAPES, seed=seed)
    ours, loop, fused = clone_params(base), clone_params(base), clone_params(base)
    opt, sch = build(SGD, ours, cfg)
    opt_l, sch_l = build(torch.optim.SGD, loop, cfg, foreach=False)
    runs = [(opt, sch, ours), (opt_l, sch_l, loop)]
    # torch's fused SGD fails when only some buffers exist (its first step is all-or-none).
    with_fused = cfg["drop"] == 0
    if with_fused:
        opt_f, sch_f = build(torch.optim.SGD, fused, cfg, fused=True)
        runs.append((opt_f, sch_f, fused))
    run(runs, base, torch.Generator().manual_seed(seed), drop=cfg["drop"])
    assert_same_state(opt, ours, opt_l, loop, exact=torch_fma(), **tol(dtype))
    if with_fused:  # torch's fused CPU kernel: separate multiplies and adds, ulps apart
        assert_same_state(opt, ours, opt_f, fused, exact=False,
                          **(dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else tol(dtype)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", range(3))
def test_low_precision_error_at_most_twice_torchs(dtype, seed):
    cfg = random_config(random.Random(100 + seed))
    cfg["tensor_lr"] = False
    base = make_params(dtype, SHAPES, seed=seed)
    exact = [torch.nn.Parameter(p.detach().double()) for p in base]
    ours, loop = clone_params(base), clone_params(base)
    opt, _ = build(SGD, ours, cfg)
    opt_l, _ = build(torch.optim.SGD, loop, cfg, foreach=False)
    opt_e, _ = build(torch.optim.SGD, exact, cfg, foreach=False)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(20):
        grads = random_grads(base, gen)
        set_grads([ours, loop], grads)
        set_grads([exact], [g.double() for g in grads])
        opt.step(), opt_l.step(), opt_e.step()
    err = torch.cat([(p.detach().double() - e.detach()).abs().flatten()
                     for p, e in zip(ours, exact)])
    err_t = torch.cat([(p.detach().double() - e.detach()).abs().flatten()
                       for p, e in zip(loop, exact)])
    assert err.max() <= 2 * err_t.max() and err.mean() <= 2 * err_t.mean()


def test_state_dict_layout_is_torchs():
    for momentum in (0.0, 0.9):
        base = make_params(torch.float32, [(4,), (3, 2), (5,)])
        ours, ref = clone_params(base), clone_params(base)
        opt, opt_r = SGD(ours, lr=0.1, momentum=momentum), \
            torch.optim.SGD(ref, lr=0.1, momentum=momentum)
        grads = random_grads(base, torch.Generator().manual_seed(1))
        grads[1] = None  # a parameter without a grad gets no state
        set_grads([ours, ref], grads)
        opt.step(), opt_r.step()
        sd, sd_r = opt.state_dict(), opt_r.state_dict()
        assert sd["state"].keys() == sd_r["state"].keys()
        for k in sd["state"]:
            assert sd["state"][k].keys() == sd_r["state"][k].keys() == {"momentum_buffer"}
        assert (len(sd["state"]) == 0) == (momentum == 0)
        torch_keys = set(sd_r["param_groups"][0])
        assert torch_keys <= set(sd["param_groups"][0])
        extras = set(sd["param_groups"][0]) - torch_keys
        assert extras == {"max_grad_norm", "grad_norm_type", "l1_weight_decay", "skip_nonfinite"}


@pytest.mark.parametrize("direction", ["torch_to_gradfast", "gradfast_to_torch"])
@pytest.mark.parametrize("kw", [dict(momentum=0.9), dict(momentum=0.9, nesterov=True,
                                                         weight_decay=1e-2),
                                dict(momentum=0.5, dampening=0.3), dict()])
def test_checkpoint_swap_mid_training_continues_equal(direction, kw):
    base = make_params(torch.float32, SHAPES, seed=2)
    first_cls, second_cls = (torch.optim.SGD, SGD) if direction == "torch_to_gradfast" \
        else (SGD, torch.optim.SGD)
    a, ref = clone_params(base), clone_params(base)
    opt_a = first_cls(a, lr=0.05, **kw)
    opt_r = torch.optim.SGD(ref, lr=0.05, foreach=False, **kw)
    gen = torch.Generator().manual_seed(3)
    run([(opt_a, None, a), (opt_r, None, ref)], base, gen, steps=6)
    buf = io.BytesIO()
    torch.save({"model": [p.detach() for p in a], "opt": opt_a.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    b = [torch.nn.Parameter(t.clone()) for t in ckpt["model"]]
    opt_b = second_cls(b, lr=0.05, **kw)
    opt_b.load_state_dict(ckpt["opt"])
    run([(opt_b, None, b), (opt_r, None, ref)], base, gen, steps=6)
    assert_same_state(opt_b, b, opt_r, ref, exact=torch_fma(), **tol(torch.float32))


def test_grad_scaler_unscales_and_skips_like_torch():
    """torch.amp.GradScaler("cpu"): gradfast gets grad_scale/found_inf and decides on the
    "device"; torch's for-loop SGD is unscaled by the scaler and not called on an inf. A
    first step lost to an inf leaves the next one first (buf = grad), as in torch."""
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    ref = copy.deepcopy(model)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, dampening=0.5)
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, dampening=0.5)
    # True only for GradScaler.step (frameworks read it as False: see FusedOptimizer);
    # skipped_steps == 2 below shows GradScaler took the fused unscale/skip path.
    assert not opt._step_supports_amp_scaling
    sc, sc_r = torch.amp.GradScaler("cpu", init_scale=1024.0), \
        torch.amp.GradScaler("cpu", init_scale=1024.0)
    gen = torch.Generator().manual_seed(4)
    for i in range(10):
        x = torch.randn(8, 6, generator=gen)
        if i in (0, 4):
            x[0, 0] = math.inf  # an inf grad: the step is skipped
        for m, o, s in ((model, opt, sc), (ref, opt_r, sc_r)):
            o.zero_grad()
            s.scale(m(x).square().mean()).backward()
            s.step(o)
            s.update()
        if i == 0:
            assert opt.state_dict()["state"] == {} == opt_r.state_dict()["state"]
        assert sc.get_scale() == sc_r.get_scale()
        if i not in (0, 4):  # (a skipped step leaves the grads scaled, as torch's fused)
            for p, q in zip(model.parameters(), ref.parameters()):
                assert torch.equal(bits(p.grad), bits(q.grad))  # written back unscaled
    assert int(opt.skipped_steps) == 2
    assert_same_state(opt, list(model.parameters()), opt_r, list(ref.parameters()),
                      exact=torch_fma(), **tol(torch.float32))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_skip_nonfinite_leaves_everything_bitwise_unchanged(bad, clip):
    base = make_params(torch.float32, SHAPES, seed=5)
    ours = clone_params(base)
    opt = SGD(ours, lr=0.1, momentum=0.9, weight_decay=0.1, skip_nonfinite=True,
              max_grad_norm=clip)
    gen = torch.Generator().manual_seed(6)
    set_grads([ours], random_grads(base, gen))
    opt.step()
    before = [p.detach().clone() for p in ours] + \
        [opt.state[p]["momentum_buffer"].clone() for p in ours]
    grads = random_grads(base, gen)
    grads[4][17] = bad
    set_grads([ours], grads)
    grads_before = [p.grad.clone() for p in ours]
    opt.step()
    after = [p.detach() for p in ours] + [opt.state[p]["momentum_buffer"] for p in ours]
    for x, y in zip(before + grads_before, after + [p.grad for p in ours]):
        assert torch.equal(bits(x), bits(y))
    assert int(opt.skipped_steps) == 1 and not math.isfinite(float(opt.grad_norm))


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_max_grad_norm_is_clip_grad_norm_then_step(norm_type, dtype):
    """max_grad_norm=c is gradfast.clip_grad_norm_(params, c) then torch's SGD: the same
    norm kernel, the clipped grads rounded to their dtype."""
    # (no empty tensor: the inf norm of one is an error, in torch as in gradfast)
    base = make_params(dtype, [s for s in SHAPES if s != (0,)], seed=7)
    ours, ref = clone_params(base), clone_params(base)
    opt = SGD(ours, lr=0.05, momentum=0.9, nesterov=True, max_grad_norm=0.5,
              grad_norm_type=norm_type)
    opt_r = torch.optim.SGD(ref, lr=0.05, momentum=0.9, nesterov=True, foreach=False)
    gen = torch.Generator().manual_seed(8)
    for _ in range(20):
        set_grads([ours, ref], random_grads(base, gen, scale=3.0))
        total = gradfast.clip_grad_norm_(ref, 0.5, norm_type=norm_type)
        opt.step(), opt_r.step()
        assert torch.equal(bits(opt.grad_norm), bits(total))
    exact = torch_fma() and dtype != torch.bfloat16  # torch rounds bf16 intermediates
    assert_same_state(opt, ours, opt_r, ref, exact=exact, rtol=2e-2, atol=1e-2)


def test_tensor_and_autoclip_max_grad_norm():
    base = make_params(torch.float32, [(50,), (6, 6)], seed=9)
    gen = torch.Generator().manual_seed(10)
    grads = [random_grads(base, gen, scale=3.0) for _ in range(12)]
    ours, ref = clone_params(base), clone_params(base)
    thr = torch.tensor(0.5)
    opt = SGD(ours, lr=1e-2, momentum=0.9, max_grad_norm=thr)
    opt_r = torch.optim.SGD(ref, lr=1e-2, momentum=0.9)
    for i, g in enumerate(grads):
        thr.fill_(0.5 + 0.1 * i)  # changed in place: read each step
        set_grads([ours, ref], g)
        total = gradfast.clip_grad_norm_(ref, 1e30)  # the norm only (coefficient 1)
        coef = torch.clamp(thr / (total + 1e-6), max=1.0)
        for q in ref:
            q.grad.mul_(coef)
        opt.step(), opt_r.step()
    assert_same_state(opt, ours, opt_r, ref, exact=torch_fma(), **tol(torch.float32))
    ours, ref = clone_params(base), clone_params(base)
    ac, ac_r = gradfast.AutoClip(percentile=50), gradfast.AutoClip(percentile=50)
    opt = SGD(ours, lr=1e-2, momentum=0.9, max_grad_norm=ac)
    opt_r = torch.optim.SGD(ref, lr=1e-2, momentum=0.9)
    for g in grads:
        set_grads([ours, ref], g)
        ac_r(ref)  # standalone AutoClip: record, threshold, scale the grads
        opt.step(), opt_r.step()
        assert torch.equal(ac.last_threshold, ac_r.last_threshold)
    assert_same_state(opt, ours, opt_r, ref, exact=False, **tol(torch.float32))


def test_l1_weight_decay_adds_sign_before_the_momentum():
    base = make_params(torch.float64, SHAPES, seed=11)
    ours, ref = clone_params(base), clone_params(base)
    opt = SGD(ours, lr=0.05, momentum=0.9, l1_weight_decay=1e-2)
    opt_r = torch.optim.SGD(ref, lr=0.05, momentum=0.9, foreach=False)
    gen = torch.Generator().manual_seed(12)
    for _ in range(20):
        set_grads([ours, ref], random_grads(base, gen))
        for q in ref:
            q.grad.add_(1e-2 * torch.sign(q.detach()))
        opt.step(), opt_r.step()
    assert_same_state(opt, ours, opt_r, ref, exact=torch_fma(), **tol(torch.float64))


def test_layouts_channels_last_transposed_and_strided_grads():
    p4 = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    pt = torch.randn(6, 4).t()  # dense, not contiguous
    base = [p4, pt, torch.randn(9)]
    ours = [torch.nn.Parameter(p.clone(memory_format=torch.preserve_format)) for p in base]
    ref = [torch.nn.Parameter(p.clone(memory_format=torch.preserve_format)) for p in base]
    opt = SGD(ours, lr=0.1, momentum=0.9)
    opt_r = torch.optim.SGD(ref, lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(13)
    for i in range(6):
        grads = random_grads(base, gen)
        grads[2] = torch.randn(18, generator=gen)[::2]  # a strided (non-dense) grad
        set_grads([ours, ref], grads)
        opt.step(), opt_r.step()
    assert opt.state[ours[0]]["momentum_buffer"].stride() == ours[0].stride()
    assert_same_state(opt, ours, opt_r, ref, exact=torch_fma(), **tol(torch.float32))


# ---- torch's argument errors ------------------------------------------------------------

BAD_ARGS = [
    dict(lr=-1.0), dict(lr=torch.tensor([1e-3, 1e-3])), dict(momentum=-0.1),
    dict(weight_decay=-1e-2), dict(nesterov=True), dict(nesterov=True, momentum=0.9,
                                                        dampening=0.1),
    dict(fused=True, foreach=True), dict(fused=True, differentiable=True),
]


@pytest.mark.parametrize("kwargs", BAD_ARGS, ids=str)
def test_argument_errors_match_torch(kwargs):
    p = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(Exception) as theirs:
        torch.optim.SGD(p, **kwargs)
    with pytest.raises(type(theirs.value)) as ours:
        SGD(p, **kwargs)
    assert str(ours.value) == str(theirs.value)


def test_empty_and_non_tensor_params_errors_match_torch():
    for params in ([], [1.0], None):
        with pytest.raises(Exception) as theirs:
            torch.optim.SGD(params)
        with pytest.raises(type(theirs.value)) as ours:
            SGD(params)
        assert str(ours.value) == str(theirs.value)


def test_defaults_match_torch():
    import inspect

    ours = inspect.signature(SGD.__init__).parameters
    theirs = inspect.signature(torch.optim.SGD.__init__).parameters
    for name, par in theirs.items():
        assert name in ours and ours[name].default == par.default and \
            ours[name].kind == par.kind, name
    p = [torch.nn.Parameter(torch.randn(3))]
    torch_group = torch.optim.SGD(p).param_groups[0]
    group = SGD(p).param_groups[0]
    for k, v in torch_group.items():
        if k != "params":
            assert group[k] == v, k


@pytest.mark.parametrize("kwargs", [dict(max_grad_norm=0.0), dict(max_grad_norm=-1.0),
                                    dict(l1_weight_decay=-1.0), dict(grad_norm_type="x"),
                                    dict(max_grad_norm=torch.tensor([1.0, 2.0]))], ids=str)
def test_extra_argument_errors(kwargs):
    with pytest.raises(ValueError):
        SGD([torch.nn.Parameter(torch.randn(3))], **kwargs)


def test_unsupported_inputs_raise_clearly():
    with pytest.raises(RuntimeError, match="differentiable"):
        SGD([torch.nn.Parameter(torch.randn(3))], differentiable=True)
    with pytest.raises(RuntimeError, match="complex"):
        SGD([torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))])
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = SGD(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_torch_compile_step_matches_eager():
    base = make_params(torch.float32, [(64,), (8, 8)])
    ours, ref = clone_params(base), clone_params(base)
    kw = dict(lr=1e-2, momentum=0.9, max_grad_norm=1.0)
    opt, opt_r = SGD(ours, **kw), SGD(ref, **kw)

    @torch.compile(backend="aot_eager", fullgraph=False)
    def compiled_step():
        opt.step()

    gen = torch.Generator().manual_seed(14)
    for _ in range(4):
        set_grads([ours, ref], random_grads(base, gen, scale=2.0))
        compiled_step()
        opt_r.step()
    assert_same_state(opt, ours, opt_r, ref, exact=True)


def test_add_param_group_and_missing_grads_match_torch():
    base = make_params(torch.float32, [(20,), (3, 3), (7,)], seed=17)
    ours, ref = clone_params(base), clone_params(base)
    opt = SGD(ours[:2], lr=1e-2, momentum=0.9)
    opt_r = torch.optim.SGD(ref[:2], lr=1e-2, momentum=0.9)
    gen = torch.Generator().manual_seed(15)
    for i in range(12):
        if i == 5:
            opt.add_param_group({"params": [ours[2]], "lr": 3e-2, "dampening": 0.2})
            opt_r.add_param_group({"params": [ref[2]], "lr": 3e-2, "dampening": 0.2})
        set_grads([ours, ref], random_grads(base, gen, drop=0.3))
        opt.step(), opt_r.step()
    assert opt.param_groups[1]["l1_weight_decay"] == 0.0  # gradfast's extras get defaults
    assert_same_state(opt, ours, opt_r, ref, exact=torch_fma(), **tol(torch.float32))


def test_pickled_optimizer_keeps_working():
    import pickle

    ps = clone_params(make_params(torch.float32, [(10,)]))
    opt = SGD(ps, lr=1e-2, momentum=0.9, max_grad_norm=1.0)
    ps[0].grad = torch.ones(10)
    opt.step()
    opt2 = pickle.loads(pickle.dumps(opt))
    p2 = opt2.param_groups[0]["params"][0]
    p2.grad = torch.ones(10)
    before = p2.detach().clone()
    opt2.step()
    # The second step uses the restored buffer (momentum * 1 + 1 = 1.9), not a first step.
    torch.testing.assert_close(before - p2.detach(), torch.full((10,), 1.9e-2 / (10 ** 0.5)),
                               rtol=1e-5, atol=0)


@pytest.mark.parametrize("kw", [dict(), dict(max_grad_norm=1.0),  # two calls, one call
                                dict(max_grad_norm=1.0, two_groups=True)], ids=str)
def test_state_dict_reads_first_step_flags_only_while_a_skip_was_possible(kw):
    # A momentum buffer whose every step was skipped on the device is left out of the
    # state_dict, which costs a read of its device flag (a sync). After a step that cannot
    # have been skipped (no GradScaler, no skip_nonfinite) no flag is left to read.
    kw = dict(kw)
    two_groups = kw.pop("two_groups", False)
    ps = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3))]
    params = [{"params": [ps[0]]}, {"params": [ps[1]]}] if two_groups else ps
    opt = SGD(params, lr=0.1, momentum=0.9, **kw)
    may_skip = SGD([torch.nn.Parameter(torch.randn(4))], lr=0.1, momentum=0.9,
                   skip_nonfinite=True)
    for o in (opt, may_skip):
        for group in o.param_groups:
            for p in group["params"]:
                p.grad = torch.randn(p.shape)
        o.step()
    assert not opt._gf_pending
    assert may_skip._gf_pending  # until a state_dict reads its flag
    assert "momentum_buffer" in may_skip.state_dict()["state"][0]
    assert not may_skip._gf_pending
