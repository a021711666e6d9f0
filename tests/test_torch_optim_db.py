"""PyTorch's own optimizer test infrastructure, run against gradfast.optim.Adam / AdamW.

``torch.testing._internal.common_optimizers.optim_db`` (shipped in the torch wheel) drives
the configurations and the error cases; the methods below are ports, adapted to
gradfast's drop-in promise, of the device-agnostic tests of torch's test/test_optim.py
(state_dict determinism, older state dicts, weights_only save/load, hooks, closures,
deepcopy, Tensor lr, "goes right direction" with non-contiguous params, add_param_group,
found_inf, ...). The reference is always stock torch on the same inputs.
"""
import copy
import io
import math

import pytest
import torch
from torch.nn import Parameter
from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                   register_optimizer_step_pre_hook)

pytest.importorskip("expecttest")  # torch.testing._internal.common_utils needs it
from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db  # noqa: E402

import gradfast.optim  # noqa: E402

PAIRS = [(torch.optim.Adam, gradfast.optim.Adam), (torch.optim.AdamW, gradfast.optim.AdamW)]
INFO = {info.optim_cls: info for info in optim_db}
IDS = [t.__name__ for t, _ in PAIRS]


def configs(torch_cls, dtype=torch.float32):
    return INFO[torch_cls].optim_inputs_func(device="cpu", dtype=dtype)


def config_cases():
    for torch_cls, gf_cls in PAIRS:
        for k, cfg in enumerate(configs(torch_cls)):
            yield pytest.param(torch_cls, gf_cls, k, id=f"{torch_cls.__name__}-{cfg.desc}")


def make_params(dtype=torch.float64, seed=0, contiguous=True):
    g = torch.Generator().manual_seed(seed)
    shapes = [(10, 5), (10,), (3, 2, 4), ()]
    out = []
    for s in shapes:
        t = torch.randn(*s, 2, generator=g, dtype=dtype)[..., 0] if not contiguous else \
            torch.randn(s, generator=g, dtype=dtype)
        out.append(Parameter(t.clone() if contiguous else t))
    return out


def twins(ps, n):
    return [[Parameter(p.detach().clone()) for p in ps] for _ in range(n)]


def set_grads(groups_of_params, step, dtype):
    g = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(groups_of_params[0]):
        grad = torch.randn(p.shape, generator=g, dtype=dtype)
        for ps in groups_of_params:
            ps[i].grad = grad.clone()


def run(ps_sets, optimizers, steps, dtype):
    for s in range(steps):
        set_grads(ps_sets, s, dtype)
        for opt in optimizers:
            opt.step()


# ---- every optim_inputs_func configuration ------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("torch_cls,gf_cls,k", list(config_cases()))
def test_config_matches_torch_forloop_and_fused(torch_cls, gf_cls, k, dtype):
    kwargs = dict(configs(torch_cls, dtype)[k].kwargs)
    base = make_params(dtype)
    ours, loop, fused = twins(base, 3)
    opts = [gf_cls(ours, **kwargs), torch_cls(loop, foreach=False, **kwargs),
            torch_cls(fused, fused=True, **kwargs)]
    run([ours, loop, fused], opts, 6, dtype)
    for p, q, f in zip(ours, loop, fused):
        torch.testing.assert_close(p, f, rtol=1e-6 if dtype == torch.float32 else 1e-12,
                                   atol=1e-7 if dtype == torch.float32 else 1e-14)
        torch.testing.assert_close(p, q)  # torch's own default fp32/fp64 tolerances
    sd_ours, sd_fused = opts[0].state_dict(), opts[2].state_dict()
    for i, st in sd_fused["state"].items():
        for key, value in st.items():
            torch.testing.assert_close(sd_ours["state"][i][key], value, msg=key)


# ---- every optim_error_inputs_func case ---------------------------------------------------

def error_cases():
    for torch_cls, gf_cls in PAIRS:
        errs = INFO[torch_cls].optim_error_inputs_func(device="cpu", dtype=torch.float32)
        for k, e in enumerate(errs):
            yield pytest.param(torch_cls, gf_cls, k,
                               id=f"{torch_cls.__name__}-{e.optimizer_error_input.desc}")


def _raise(cls, err):
    inp = err.optimizer_error_input
    params = copy.deepcopy(inp.params)
    if err.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        cls(params, **inp.kwargs)
    else:
        opt = cls(params, **inp.kwargs)
        opt.step()


@pytest.mark.parametrize("torch_cls,gf_cls,k", list(error_cases()))
def test_error_input_same_type_and_message(torch_cls, gf_cls, k):
    err = INFO[torch_cls].optim_error_inputs_func(device="cpu", dtype=torch.float32)[k]
    if issubclass(err.error_type, Warning):
        with pytest.warns(err.error_type, match=err.error_regex) as want:
            _raise(torch_cls, err)
        with pytest.warns(err.error_type, match=err.error_regex) as got:
            _raise(gf_cls, err)
        assert [str(w.message) for w in got if issubclass(w.category, err.error_type)] == \
            [str(w.message) for w in want if issubclass(w.category, err.error_type)]
        return
    with pytest.raises(err.error_type, match=err.error_regex) as want:
        _raise(torch_cls, err)
    with pytest.raises(err.error_type) as got:
        _raise(gf_cls, err)
    assert str(got.value) == str(want.value)


# ---- ports of test/test_optim.py's device-agnostic methods ---------------------------------

def weight_bias(contiguous=True, dtype=torch.float32):
    torch.manual_seed(0)
    if contiguous:
        return Parameter(torch.randn(10, 5, dtype=dtype)), Parameter(torch.randn(10, dtype=dtype))
    return (Parameter(torch.randn(10, 5, 2, dtype=dtype)[..., 0]),
            Parameter(torch.randn(10, 2, dtype=dtype)[..., 0]))


def loss_of(weight, bias, x):
    return (weight.mv(x) + bias).pow(2).sum()


@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("torch_cls,gf_cls,k", list(config_cases()))
def test_forloop_goes_right_direction(torch_cls, gf_cls, k, contiguous):
    # torch's test_forloop_goes_right_direction: a few steps lower the loss (raise it with
    # maximize). Non-contiguous views (x[..., 0]) were refused before: they now step
    # through torch's for-loop Adam, so their numbers are torch's bitwise.
    kwargs = dict(configs(torch_cls)[k].kwargs)
    x = torch.randn(5)
    w, b = weight_bias(contiguous)
    w2, b2 = weight_bias(contiguous)
    opt, ref = gf_cls([w, b], **kwargs), torch_cls([w2, b2], foreach=False, **kwargs)
    initial = loss_of(w, b, x).item()
    for o, (ww, bb) in ((opt, (w, b)), (ref, (w2, b2))):
        for _ in range(5):
            o.zero_grad()
            loss_of(ww, bb, x).backward()
            o.step()
    final = loss_of(w, b, x).item()
    assert final > initial if kwargs.get("maximize") else final < initial
    if contiguous:
        torch.testing.assert_close(w, w2)
        torch.testing.assert_close(b, b2)
    else:
        assert torch.equal(w, w2) and torch.equal(b, b2)
        assert not w.is_contiguous()  # stepped in place, still the same view


@pytest.mark.parametrize("torch_cls,gf_cls", PAIRS, ids=IDS)
def test_param_group_with_lrscheduler_goes_right_direction(torch_cls, gf_cls):
    x = torch.randn(5)
    w, b = weight_bias()
    opt = gf_cls([{"params": [w]}, {"params": [b], "lr": 1e-2}], lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, gamma=0.9, step_size=2)
    initial = loss_of(w, b, x).item()
    for _ in range(6):
        opt.zero_grad()
        loss_of(w, b, x).backward()
        opt.step()
        sched.step()
    assert loss_of(w, b, x).item() < initial
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-2 * 0.9 ** 3)


@pytest.mark.parametrize("torch_cls,gf_cls", PAIRS, ids=IDS)
def test_tensor_lr(torch_cls, gf_cls):
    # torch's test_tensor_lr: a Tensor lr gives the float lr's results.
    base = make_params(torch.float32)
    a, b = twins(base, 2)
    lr = 1e-2
    opts = [gf_cls(a, lr=lr), gf_cls(b, lr=torch.tensor(lr, dtype=torch.float64))]
    run([a, b], opts, 5, torch.float32)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("torch_cls,gf_cls", PAIRS, ids=IDS)
def test_step_is_noop_when_params_have_no_grad(torch_cls, gf_cls):
    ps = make_params(torch.float32)
    before = [p.detach().clone() for p in ps]
    opt = gf_cls(ps, lr=1e-2)
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, before)) and len(opt.state) == 0


@pytest.mark.parametrize("torch_cls,gf_cls", PAIRS, ids=IDS)
def test_step_is_noop_for_zero_grads(torch_cls, gf_cls):
    ps = make_params(torch.float32)
    before = [p.detach().clone() for p in ps]
    opt = gf_cls(ps, lr=1e-5, weight_decay=0.0)
    for p in ps:
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, q in zip(ps, before):
        assert torch.equal(p, q)


@pytest.mark.parametrize("torch_cls,gf_cls", PAIRS, ids=IDS)
def test_optimizer_can_be_printed(torch_cls, gf_cls):
    w, b = weight_bias()
    text = repr(gf_cls([w, b], lr=1e-3))
    assert text.startswith(gf_cls.__name__ + " (") and "lr: 0.001" in text


def prime(opt, w, b, x, steps):
    def closure():
        opt.zero_grad()
        loss = loss_of(w, b, x)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return closure


@pytest.mark.parametrize("torch_cls,gf_cls,k", list(config_cases()))
def test_state_dict_deterministic(torch_cls, gf_cls, k):
    kwargs = dict(configs(torch_cls)[k].kwargs)
    x = torch.randn(5)
    w, b = weight_bias()
    opt = gf_cls([w, b], **kwargs)
    closure = prime(opt, w, b, x, 5)
    w_c, b_c = Parameter(w.detach().clone()), Parameter(b.detach().clone())
    opt_c = gf_cls([w_c, b_c], **kwargs)
    state_dict = copy.deepcopy(opt.state_dict())
    state_dict_c = copy.deepcopy(opt.state_dict())
    opt_c.load_state_dict(state_dict_c)
    torch.testing.assert_close(state_dict, state_dict_c)  # loading did not modify it
    closure_c = prime(opt_c, w_c, b_c, x, 0)
    for _ in range(5):
        opt.step(closure)
        opt_c.step(closure_c)
        assert torch.equal(w, w_c) and torch.equal(b, b_c)
    torch.testing.assert_close(opt.state_dict(), opt_c.state_dict())
    # Repeated param groups have identical representations.
    opt_c.param_groups.extend(opt_c.param_groups)
    assert opt.state_dict()["param_groups"][-1] == opt_c.state_dict()["param_groups"][-1]


@pytest.mark.parametrize("torch_cls,gf_cls", PAIRS, ids=IDS)
def test_can_load_older_state_dict(torch_cls, gf_cls):
    # Checkpoints written before a flag existed lack its key; torch's own checkpoints lack
    # gradfast's extras and hold CPU steps.
    x = torch.randn(5)
    w, b = weight_bias()
    ref = torch_cls([w, b], lr=1e-2)
    prime(ref, w, b, x, 3)
    old = copy.deepcopy(ref.state_dict())
    for group in old["param_groups"]:
        for key in ("maximize", "foreach", "capturable", "differentiable", "fused",
                    "amsgrad", "decoupled_weight_decay"):
            group.pop(key, None)
    w2, b2 = Parameter(w.detach().clone()), Parameter(b.detach().clone())
    opt = gf_cls([w2, b2], lr=1e-2, max_grad_norm=1e6)  # a bound no step reaches
    opt.load_state_dict(old)
    group = opt.param_groups[0]
    assert group["maximize"] is False and group["max_grad_norm"] == 1e6
    assert group["decoupled_weight_decay"] is (gf_cls is gradfast.optim.AdamW)
    ref.load_state_dict(copy.deepcopy(ref.state_dict()))
    prime(ref, w, b, x, 3)
    prime(opt, w2, b2, x, 3)
    torch.testing.assert_close(w2, w)
    torch.testing.assert_close(b2, b)


@pytest.mark.parametrize("torch_cls,gf_cls", PAIRS, ids=IDS)
def test_load_nontensor_step(torch_cls, gf_cls):
    x = torch.randn(5)
    w, b = weight_bias()
    opt = gf_cls([w, b], lr=1e-2)
    prime(opt, w, b, x, 2)
    sd = opt.state_dict()
    for st in sd["state"].values():
        st["step"] = st["step"].item()
    opt.load_state_dict(sd)
    prime(opt, w, b, x, 1)
    assert opt.state[w]["step"].item() == 3.0


@pytest.mark.parametrize("torch_cls,gf_cls", PAIRS, ids=IDS)
def test_save_load_equality_with_weights_only(torch_cls, gf_cls):
    x = torch.randn(5)
    w, b = weight_bias()
    opt = gf_cls([w, b], lr=torch.tensor(1e-2), max_grad_norm=1.0)
    prime(opt, w, b, x, 3)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    torch.testing.assert_close(loaded, opt.state_dict())


@pytest.mark.parametrize("torch_cls,gf_cls", PAIRS, ids=IDS)
def test_deepcopy_copies_all_public_attrs(torch_cls, gf_cls):
    w, b = weight_bias()
    opt = gf_cls([w, b], lr=1e-2)
    prime(opt, w, b, torch.randn(5), 1)

    def public(obj):
        return {k for k in obj.__dict__ if not k.startswith("_")}

    clone = copy.deepcopy(opt)
    assert public(opt) == public(clone)
    torch.testing.assert_close(clone.state_dict(), opt.state_dict())


@pytest.mark.parametrize("torch_cls,gf_cls", PAIRS, ids=IDS)
def test_step_hooks_and_global_hooks(torch_cls, gf_cls):
    # torch's test_step_pre_hook / test_step_post_hook / test_step_all_hooks.
    w, b = weight_bias()
    opt = gf_cls([w, b], lr=1e-2)
    calls = []
    h1 = opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    h2 = opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    g1 = register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global_pre"))
    g2 = register_optimizer_step_post_hook(
        lambda o, a, k: calls.append("global_post"))
    try:
        prime(opt, w, b, torch.randn(5), 2)
    finally:
        g1.remove()
        g2.remove()
    h1.remove()
    h2.remove()
    prime(opt, w, b, torch.randn(5), 1)
    assert calls == ["global_pre", "pre", "post", "global_post"] * 2


@pytest.mark.parametrize("torch_cls,gf_cls", PAIRS, ids=IDS)
def test_state_dict_and_load_state_dict_hooks(torch_cls, gf_cls):
    w, b = weight_bias()
    opt = gf_cls([w, b], lr=1e-2)
    prime(opt, w, b, torch.randn(5), 1)
    seen = []
    opt.register_state_dict_pre_hook(lambda o: seen.append("sd_pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    opt.register_load_state_dict_pre_hook(lambda o, sd: seen.append("load_pre"))
    opt.register_load_state_dict_post_hook(lambda o: seen.append("load_post"))
    sd = opt.state_dict()
    assert sd["extra"] == 1
    sd.pop("extra")
    opt.load_state_dict(sd)
    assert seen == ["sd_pre", "load_pre", "load_post"]


@pytest.mark.parametrize("torch_cls,gf_cls", PAIRS, ids=IDS)
def test_closure_is_evaluated_with_grad_once_and_loss_returned(torch_cls, gf_cls):
    w, b = weight_bias()
    opt = gf_cls([w, b], lr=1e-2)
    x, calls = torch.randn(5), []

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = loss_of(w, b, x)
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert calls == [True] and isinstance(loss, torch.Tensor)
    assert opt.step() is None


@pytest.mark.parametrize("torch_cls,gf_cls", PAIRS, ids=IDS)
def test_add_param_group(torch_cls, gf_cls):
    w, b = weight_bias()
    opt = gf_cls([w], lr=1e-2)
    opt.add_param_group({"params": b, "lr": 1e-3})
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="some parameters appear in more than one"):
        opt.add_param_group({"params": [w]})
    # A group gradfast refuses (complex) leaves param_groups as they were, and the
    # optimizer keeps working (it stayed in param_groups, and a later step failed, before).
    cplx = Parameter(torch.randn(3, dtype=torch.complex64))
    with pytest.raises(RuntimeError, match="does not support complex"):
        opt.add_param_group({"params": [cplx]})
    assert len(opt.param_groups) == 2
    prime(opt, w, b, torch.randn(5), 1)
    assert set(opt.state) == {w, b}


@pytest.mark.parametrize("torch_cls,gf_cls", PAIRS, ids=IDS)
def test_fused_meta_params_error_matches_torch(torch_cls, gf_cls):
    def attempt(cls):
        p = Parameter(torch.randn(3, device="meta"))
        p.grad = torch.randn(3, device="meta")
        cls([p], fused=True).step()

    with pytest.raises(RuntimeError) as want:
        attempt(torch_cls)
    with pytest.raises(RuntimeError) as got:
        attempt(gf_cls)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize("torch_cls,gf_cls", PAIRS, ids=IDS)
def test_fused_does_not_step_if_found_inf(torch_cls, gf_cls):
    # torch's test_fused_does_not_step_if_foundinf: GradScaler's found_inf skips the step.
    for cls, kw in ((torch_cls, {"fused": True}), (gf_cls, {})):
        ps = make_params(torch.float32)
        before = [p.detach().clone() for p in ps]
        for p in ps:
            p.grad = torch.ones_like(p)
        opt = cls(ps, lr=1e-2, **kw)
        opt.grad_scale = torch.ones((), dtype=torch.float32)
        opt.found_inf = torch.ones((), dtype=torch.float32)
        opt.step()
        assert all(torch.equal(p, q) for p, q in zip(ps, before)), cls
        assert all(opt.state[p]["step"].item() == 0 for p in ps), cls


@pytest.mark.parametrize("torch_cls,gf_cls", PAIRS, ids=IDS)
def test_mixed_dtypes_in_one_group_match_fused(torch_cls, gf_cls):
    ps = make_params(torch.float32)[:2] + make_params(torch.float64, seed=1)[:2]
    ours, fused = twins(ps, 2)
    opts = [gf_cls(ours, lr=1e-2, weight_decay=0.1), torch_cls(fused, lr=1e-2,
                                                               weight_decay=0.1, fused=True)]
    for s in range(4):
        g = torch.Generator().manual_seed(s)
        for p, q in zip(ours, fused):
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            q.grad = p.grad.clone()
        for o in opts:
            o.step()
    for p, q in zip(ours, fused):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert math.isfinite(sum(p.sum().item() for p in ours))
