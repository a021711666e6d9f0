"""Selection of the opt-in one-launch clip + Adam step (GRADFAST_ADAM_LAUNCHES=1), on the CPU.

The kernel itself is tested on CUDA in test_adam_cuda.py; here only the Python logic that
decides when it runs, and that the default path never consults it.
"""
import math

import pytest
import torch

import gradfast
from gradfast._native import _C
from gradfast._native import adam as native_adam
from gradfast._native import norm as native_norm
from gradfast._native.norm_kind import L1, L2, LP
from gradfast.optim import Adam, AdamW
from gradfast.optim import adam as adam_mod
from gradfast.optim.adam import LAUNCHES_ENV, _one_launch_kind
from clip_helpers import bits

CUDA0 = torch.device("cuda", 0)  # a device object only: nothing runs on it here
CPU = torch.device("cpu")


def work_item(max_grad_norm=1.0, split=((CUDA0, None),)):
    group = {"max_grad_norm": max_grad_norm}
    return (group, None, [], list(split), None)


def test_one_cuda_item_with_a_native_norm_is_selected():
    assert _one_launch_kind([work_item()], {2.0}, None) == L2
    assert _one_launch_kind([work_item()], {1.0}, None) == L1
    assert _one_launch_kind([work_item()], {3.0}, None) == LP
    assert _one_launch_kind([work_item(max_grad_norm=None)], {2.0}, None) == L2  # skip only
    assert _one_launch_kind([work_item(torch.tensor(0.5))], {2.0}, None) == L2


def test_not_selected_when_the_norm_needs_more_than_one_launch():
    two_items = [work_item(), work_item()]
    assert _one_launch_kind(two_items, {2.0}, None) is None
    two_splits = [work_item(split=((CUDA0, [0]), (torch.device("cuda", 1), [1])))]
    assert _one_launch_kind(two_splits, {2.0}, None) is None
    assert _one_launch_kind([work_item(split=((CPU, None),))], {2.0}, None) is None
    assert _one_launch_kind([work_item()], {-1.0}, None) is None  # torch's own norm
    assert _one_launch_kind([work_item()], {math.nan}, None) is None
    assert _one_launch_kind([work_item()], {2.0, 1.0}, None) is None
    assert _one_launch_kind([work_item()], set(), None) is None
    # AutoClip's threshold is computed from the norm, between the two launches.
    assert _one_launch_kind([work_item(gradfast.AutoClip())], {2.0}, None) is None
    # An attached monitor takes its own norm pass.
    assert _one_launch_kind([work_item()], {2.0}, object()) is None


def _set_launches(monkeypatch, env):
    """GRADFAST_ADAM_LAUNCHES=env for this test, or unset for None."""
    if env is None:
        monkeypatch.delenv(LAUNCHES_ENV, raising=False)
    else:
        monkeypatch.setenv(LAUNCHES_ENV, env)


def _run(params, env, monkeypatch, steps=3, **kw):
    _set_launches(monkeypatch, env)
    opt = Adam(params, lr=1e-2, **kw)
    gen = torch.Generator().manual_seed(3)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return opt


@pytest.mark.parametrize("env", [None, "2", "0", ""])
def test_default_path_never_consults_the_selection(env, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the default path must not consult the one-launch selection")

    monkeypatch.setattr(adam_mod, "_one_launch_kind", boom)
    monkeypatch.setattr(native_adam, "clip_adam_step", boom)
    params = [torch.nn.Parameter(torch.randn(50)), torch.nn.Parameter(torch.randn(3, 4))]
    opt = _run(params, env, monkeypatch, max_grad_norm=0.5, skip_nonfinite=True)
    assert opt._gf_launches is None


def test_env_one_on_cpu_keeps_the_two_launch_results(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the one-launch kernel is CUDA only")

    monkeypatch.setattr(native_adam, "clip_adam_step", boom)
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(s, generator=g) for s in [(70000,), (5, 7), ()]]
    a = [torch.nn.Parameter(t.clone()) for t in base]
    b = [torch.nn.Parameter(t.clone()) for t in base]
    kw = dict(max_grad_norm=0.5, amsgrad=True, weight_decay=0.1)
    opt_a = _run(a, "1", monkeypatch, **kw)
    opt_b = _run(b, None, monkeypatch, **kw)
    assert opt_a._gf_launches is None
    for p, q in zip(a, b):
        assert torch.equal(p, q)
    assert torch.equal(opt_a.grad_norm, opt_b.grad_norm)


def test_env_is_read_each_step(monkeypatch):
    calls = []
    real = adam_mod._one_launch_kind

    def spy(*a):
        calls.append(a)
        return real(*a)

    monkeypatch.setattr(adam_mod, "_one_launch_kind", spy)
    params = [torch.nn.Parameter(torch.randn(10))]
    opt = AdamW(params, lr=1e-2, max_grad_norm=1.0)
    for env in ("1", None, "1", "2"):
        _set_launches(monkeypatch, env)
        params[0].grad = torch.randn(10)
        opt.step()
    assert len(calls) == 2


def test_two_param_groups_are_not_one_item(monkeypatch):
    # Two parameter groups make two work items even on one device: the norm covers both,
    # so the step keeps its two-launch path (checked through the selection inputs).
    seen = []
    real = adam_mod._one_launch_kind

    def spy(work, norm_types, monitor):
        seen.append(len(work))
        out = real(work, norm_types, monitor)
        assert out is None
        return out

    monkeypatch.setattr(adam_mod, "_one_launch_kind", spy)
    p1, p2 = torch.nn.Parameter(torch.randn(8)), torch.nn.Parameter(torch.randn(9))
    monkeypatch.setenv(LAUNCHES_ENV, "1")
    opt = Adam([{"params": [p1]}, {"params": [p2], "lr": 1e-3}], lr=1e-2, max_grad_norm=1.0)
    p1.grad, p2.grad = torch.randn(8), torch.randn(9)
    opt.step()
    assert seen == [2]
    assert opt._gf_launches is None


def _emulated_clip_adam(calls):
    """clip_adam_step's contract on the CPU: the norm of the grads (group_norm), then the
    update reading it (adam_step), returning (total, 1)."""
    def fake(lists, hyper, step, skipped, p, kind, cooperative=True):
        calls.append(kind)
        total = native_norm.norm(lists.grads, p, kind, 1.0)[0]
        native_adam.adam_step(lists, hyper, step._replace(total=total), skipped)
        return total, 1
    return fake


def _bits_equal(a, b):
    return torch.equal(bits(a), bits(b))


CFGS = [
    dict(max_grad_norm=0.5),
    dict(max_grad_norm=0.5, amsgrad=True, weight_decay=0.1),
    dict(max_grad_norm=0.5, weight_decay=0.1, decoupled_weight_decay=True),
    dict(max_grad_norm=0.5, l1_weight_decay=1e-3, maximize=True),
    dict(max_grad_norm=0.5, lr=torch.tensor(3e-3)),
    dict(max_grad_norm=torch.tensor(0.3, dtype=torch.float64), skip_nonfinite=True),
    dict(skip_nonfinite=True),
    dict(max_grad_norm=0.5, grad_norm_type=math.inf),
    dict(max_grad_norm=0.5, grad_norm_type=1.0, skip_nonfinite=True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("cfg", CFGS)
def test_one_launch_branch_wiring_matches_default(dtype, cfg, monkeypatch):
    # The one-launch branch of Adam._fused_step, forced on the CPU with group_clip_adam
    # emulated by its contract: every argument it passes must give the default's bits.
    calls = []
    monkeypatch.setattr(native_adam, "clip_adam_step", _emulated_clip_adam(calls))
    real = adam_mod._one_launch_kind

    def on_cpu_too(work, norm_types, monitor):
        group, lists, copies, split, host = work[0]
        if len(work) == 1 and len(split) == 1 and split[0][0].type == "cpu":
            work = [(group, lists, copies, [(CUDA0, None)], host)]
        return real(work, norm_types, monitor)

    monkeypatch.setattr(adam_mod, "_one_launch_kind", on_cpu_too)
    g = torch.Generator().manual_seed(1)
    base = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype)
            for s in [(70001,), (5, 7), (), (300,)]]
    a = [torch.nn.Parameter(t.clone()) for t in base]
    b = [torch.nn.Parameter(t.clone()) for t in base]
    opt_a, opt_b = Adam(a, **cfg), Adam(b, **cfg)
    for i in range(5):
        grads = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype) *
                 (1e-3 if i % 2 else 1.0) for t in base]
        if i == 3 and cfg.get("skip_nonfinite"):
            grads[0][5] = math.nan
        for ps, env in ((a, "1"), (b, None)):
            for p, gr in zip(ps, grads):
                p.grad = gr.clone()
            _set_launches(monkeypatch, env)
            (opt_a if ps is a else opt_b).step()
        assert opt_a._gf_launches == 1 and opt_b._gf_launches is None
        for p, q in zip(a, b):
            assert _bits_equal(p, q)
            for k in opt_a.state[p]:
                assert _bits_equal(opt_a.state[p][k], opt_b.state[q][k])
        assert _bits_equal(opt_a.grad_norm, opt_b.grad_norm)
        assert _bits_equal(opt_a.skipped_steps, opt_b.skipped_steps)
    assert len(calls) == 5
    if cfg.get("skip_nonfinite"):
        assert int(opt_a.skipped_steps) == 1


def test_one_launch_branch_wiring_with_grad_scaler(monkeypatch):
    calls = []
    monkeypatch.setattr(native_adam, "clip_adam_step", _emulated_clip_adam(calls))
    real = adam_mod._one_launch_kind
    monkeypatch.setattr(adam_mod, "_one_launch_kind", lambda work, nt, mon: real(
        [(w[0], w[1], w[2], [(CUDA0, None)], w[4]) for w in work], nt, mon))
    g = torch.Generator().manual_seed(2)
    base = [torch.randn(s, generator=g) for s in [(3000,), (8, 8)]]
    a = [torch.nn.Parameter(t.clone()) for t in base]
    b = [torch.nn.Parameter(t.clone()) for t in base]
    opt_a = Adam(a, lr=1e-3, max_grad_norm=1.0, skip_nonfinite=True)
    opt_b = Adam(b, lr=1e-3, max_grad_norm=1.0, skip_nonfinite=True)
    sc_a, sc_b = torch.amp.GradScaler("cpu", init_scale=256.0), \
        torch.amp.GradScaler("cpu", init_scale=256.0)
    for i in range(6):
        grads = [torch.randn(t.shape, generator=g) * 256 for t in base]
        if i == 2:
            grads[1][0, 0] = math.inf
        for ps, opt, sc, env in ((a, opt_a, sc_a, "1"), (b, opt_b, sc_b, None)):
            for p, gr in zip(ps, grads):
                p.grad = gr.clone()
            _set_launches(monkeypatch, env)
            sc.scale(torch.ones(()))
            sc.step(opt)
            sc.update()
        for p, q in zip(a, b):
            assert _bits_equal(p, q) and _bits_equal(p.grad, q.grad)
        assert _bits_equal(opt_a.grad_norm, opt_b.grad_norm)
    assert int(opt_a.skipped_steps) == int(opt_b.skipped_steps) == 1
    assert len(calls) == 6


@pytest.mark.skipif(not hasattr(_C, "cuda_clip_adam_step"), reason="built without CUDA")
def test_native_entry_point_validates_before_touching_a_device():
    hyper = _C.AdamHyper(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, l1=0.0,
                         maximize=False)
    flags = _C.AdamFlags(amsgrad=False, wd=_C.WeightDecayMode.None_, l1=False, unscale=False)
    control = _C.StepControl(lr=1e-3, clip=True, max_norm=1.0)
    args = dict(norm_meta=0, norm_n=1, n_chunks=1, meta=0, n=1, n_tiles=1, dtype=0, kind=0,
                p=2.0, norm_workspace=16, total=16, coef=0, hyper=hyper, flags=flags,
                control=control, skipped=0, adam_workspace=16, cooperative=True, device=0,
                stream=0)

    def call(**over):
        kw = dict(args, **over)
        return _C.cuda_clip_adam_step(*kw.values())

    with pytest.raises(ValueError, match="workspaces and total_out"):
        call(total=0)
    with pytest.raises(ValueError, match="16-byte aligned"):
        call(norm_workspace=8)
    with pytest.raises(ValueError, match="bad tensor lists"):
        call(n=0)
    with pytest.raises(ValueError, match="bad tensor lists"):
        call(norm_n=2)  # the norm table must list the Adam table's grads
    with pytest.raises(ValueError, match="unknown dtype"):
        call(kind=9, meta=16, norm_meta=16)
