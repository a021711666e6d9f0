"""gradfast.optim.Adam / AdamW against torch.optim.Adam / AdamW (torch 2.13), on the CPU.

Every comparison runs both optimizers side by side on identical parameters and gradients;
nothing is compared with stored numbers.
"""
import copy
import io
import math
import random

import pytest
import torch

import gradfast
from gradfast.optim import Adam, AdamW

import adam_helpers  # noqa: E402
from adam_helpers import assert_state_close, clone_params, random_grads, set_grads  # noqa: E402,F401

SHAPES = [(37,), (5, 7), (), (0,), (1000,), (3, 1, 4)]
BIG = (70000,)  # more than one 65536-element chunk


def make_params(dtype=torch.float32, shapes=SHAPES, seed=0):
    return adam_helpers.make_params(dtype, shapes, seed)


def tol(dtype):
    return {torch.float32: dict(rtol=1e-5, atol=1e-6),
            torch.float64: dict(rtol=1e-12, atol=1e-13)}[dtype]


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
            h["lr"] = torch.tensor(h["lr"])
    opt = cls(groups_of(params, hypers), decoupled_weight_decay=cfg["decoupled"], **extra)
    sched = None
    if cfg["scheduler"] == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    elif cfg["scheduler"] == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    return opt, sched


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(6))
def test_random_configs_match_torch(dtype, seed):
    rng = random.Random(seed * 7 + (dtype == torch.float64))
    cfg = random_config(rng)
    base = make_params(dtype, shapes=SHAPES + [BIG] if seed == 0 else SHAPES, seed=seed)
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
def test_adamw_matches_torch(amsgrad):
    base = make_params(torch.float64, seed=3)
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
def test_low_precision_error_at_most_twice_torch(dtype, decoupled):
    base = make_params(dtype, shapes=[(300,), (17, 9), ()], seed=5)
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
def test_max_grad_norm_matches_clip_then_step(norm_type, dtype):
    # torch (and gradfast) refuse the infinity norm of an empty tensor.
    shapes = [s for s in SHAPES if s != (0,)] if norm_type == math.inf else SHAPES
    base = make_params(dtype, shapes=shapes, seed=11)
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


def test_max_grad_norm_mixed_dtypes_global_norm():
    # Two (device, dtype) groups: the norm is still global over all of them.
    p32 = make_params(torch.float32, shapes=[(50,), (4, 4)], seed=1)
    p64 = make_params(torch.float64, shapes=[(30,), ()], seed=2)
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
def test_skip_nonfinite_leaves_everything_unchanged(bad, clip):
    base = make_params(torch.float32, seed=21)
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
def test_l1_weight_decay_matches_reference(decoupled, wd):
    base = make_params(torch.float64, shapes=[(40,), (6, 6), ()], seed=8)
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
def test_checkpoint_torch_to_gradfast_and_back(torch_kw, amsgrad):
    base = make_params(torch.float32, seed=13)
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
        assert set(st) == ({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"} if amsgrad
                           else {"step", "exp_avg", "exp_avg_sq"})
    t2 = torch.optim.Adam(ps, **kw, **torch_kw)
    t2.load_state_dict(copy.deepcopy(sd))
    _train(t2, ps, grads[20:])
    assert_state_close(t2, ps, opt_ref, ref, rtol=2e-5, atol=2e-6)


def test_checkpoint_gradfast_roundtrip_is_exact_and_keeps_extras():
    base = make_params(torch.float32, seed=14)
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


def test_old_style_python_number_steps_are_converted():
    ps = clone_params(make_params(torch.float32, shapes=[(10,)]))
    ref = clone_params(make_params(torch.float32, shapes=[(10,)]))
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


def test_grad_scaler_cpu_matches_torch_fused():
    base = make_params(torch.float32, seed=15)
    ours, ref = clone_params(base), clone_params(base)
    opt = Adam(ours, lr=1e-2, max_grad_norm=1.0)
    opt_r = torch.optim.Adam(ref, lr=1e-2, fused=True)
    sc, sc_r = torch.amp.GradScaler("cpu", init_scale=1024.0), \
        torch.amp.GradScaler("cpu", init_scale=1024.0)
    gen = torch.Generator().manual_seed(10)
    for i in range(20):
        grads = [g * 1024.0 for g in random_grads(base, gen)]
        if i == 5:
            grads[0][0] = math.inf
        set_grads([ours, ref], grads)
        snap = _snapshot(opt, ours)
        sc.scale(torch.ones(())), sc_r.scale(torch.ones(()))  # initialises the scales
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


def test_grad_scaler_writes_unscaled_grads_back():
    base = make_params(torch.float32, shapes=[(33,), (4, 5)], seed=16)
    ours, ref = clone_params(base), clone_params(base)
    opt = Adam(ours, lr=1e-2)
    opt_r = torch.optim.Adam(ref, lr=1e-2, fused=True)
    sc, sc_r = torch.amp.GradScaler("cpu", init_scale=8.0), torch.amp.GradScaler("cpu", init_scale=8.0)
    gen = torch.Generator().manual_seed(11)
    for _ in range(5):
        set_grads([ours, ref], [g * 8.0 for g in random_grads(base, gen)])
        sc.scale(torch.ones(())), sc_r.scale(torch.ones(()))
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


def test_lstm_end_to_end_same_losses(one_thread):
    torch.manual_seed(0)
    model = _LM()
    model_r = copy.deepcopy(model)
    # Learnable sequences: each token is the previous one plus a per-sequence stride.
    gen = torch.Generator().manual_seed(1)
    start = torch.randint(0, 30, (12, 8, 1), generator=gen)
    stride = torch.randint(1, 3, (12, 8, 1), generator=gen)
    data = (start + stride * torch.arange(21)) % 30
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
    assert opt.param_groups[0]["fused"] is True and opt._step_supports_amp_scaling


def test_params_without_grads_keep_no_state():
    ps = clone_params(make_params(torch.float32, shapes=[(4,), (5,)]))
    opt = Adam(ps)
    ps[0].grad = torch.ones(4)
    opt.step()
    assert ps[1] not in opt.state and float(opt.state[ps[0]]["step"]) == 1.0
    opt.zero_grad()
    opt.step()  # no grads at all: nothing happens
    assert float(opt.state[ps[0]]["step"]) == 1.0


def test_non_contiguous_grad_and_channels_last_param():
    p = torch.nn.Parameter(torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last))
    q = torch.nn.Parameter(p.detach().clone())
    g = torch.randn(5, 4, 3, 2).permute(3, 2, 1, 0)  # neither contiguous nor p's layout
    # (torch's fused CPU kernel assumes grads laid out like params: compare with the loop.)
    opt, opt_r = Adam([p], lr=1e-2), torch.optim.Adam([q], lr=1e-2, foreach=False)
    for _ in range(3):
        p.grad, q.grad = g.clone(), g.clone()
        opt.step(), opt_r.step()
    assert opt.state[p]["exp_avg"].stride() == p.stride()
    torch.testing.assert_close(p, q, **tol(torch.float32))


def test_tensor_lr_changed_in_place_is_read_each_step():
    base = make_params(torch.float32, shapes=[(20,)])
    ours, ref = clone_params(base), clone_params(base)
    lr, lr_r = torch.tensor(1e-2), torch.tensor(1e-2)
    opt, opt_r = Adam(ours, lr=lr), torch.optim.Adam(ref, lr=lr_r, fused=True)
    gen = torch.Generator().manual_seed(12)
    for i in range(10):
        set_grads([ours, ref], random_grads(base, gen))
        lr.fill_(1e-2 / (i + 1))
        lr_r.fill_(1e-2 / (i + 1))
        opt.step(), opt_r.step()
    torch.testing.assert_close(ours[0], ref[0], **tol(torch.float32))


def test_torch_compile_step_matches_eager():
    base = make_params(torch.float32, shapes=[(64,), (8, 8)])
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


def test_add_param_group_mid_training_matches_torch():
    base = make_params(torch.float32, shapes=[(20,), (3, 3), (7,)], seed=17)
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


def test_pickled_optimizer_keeps_working():
    import pickle

    ps = clone_params(make_params(torch.float32, shapes=[(10,)]))
    opt = AdamW(ps, lr=1e-2, max_grad_norm=1.0)
    ps[0].grad = torch.ones(10)
    opt.step()
    opt2 = pickle.loads(pickle.dumps(opt))
    assert opt2.param_groups[0]["max_grad_norm"] == 1.0 and opt2.skipped_steps is not None
    p2 = opt2.param_groups[0]["params"][0]
    p2.grad = torch.ones(10)
    opt2.step()
    assert float(opt2.state[p2]["step"]) == 2.0


def test_tensor_and_autoclip_max_grad_norm():
    base = make_params(torch.float32, shapes=[(50,), (6, 6)], seed=18)
    gen = torch.Generator().manual_seed(15)
    grads = [random_grads(base, gen, scale=3.0) for _ in range(12)]
    # A Tensor threshold, changed in place, is read each step.
    ours, ref = clone_params(base), clone_params(base)
    thr = torch.tensor(0.5)
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
