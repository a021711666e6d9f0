"""gradfast.optim remembers each group's steady-state step (optim/_plan.py). Everything a
training loop or a library may change between steps must be noticed: each test changes one
thing mid-training, does the same to torch.optim.Adam(fused=True), and compares."""
import copy

import pytest
import torch

from gradfast.optim import Adam

SHAPES = [(37,), (5, 7), (), (0,), (70000,), (3, 1, 4)]


def twins(seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(s, generator=g) for s in shapes]
    return ([torch.nn.Parameter(b.clone()) for b in base],
            [torch.nn.Parameter(b.clone()) for b in base])


def grads_for(params, step, none=()):
    g = torch.Generator().manual_seed(1000 + step)
    return [None if i in none else torch.randn(p.shape, generator=g) for i, p in enumerate(params)]


def give(params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()


def run(steps, change=None, gf_kw=None, **kw):
    """`steps` steps of both optimizers; change(step, params, opt) is applied to both sides
    before that step's gradients are set."""
    pa, pb = twins()
    a = Adam(pa, **kw, **(gf_kw or {}))
    b = torch.optim.Adam(pb, fused=True, **kw)
    for step in range(steps):
        for params, opt in ((pa, a), (pb, b)):
            if change is not None:
                change(step, params, opt)
            give(params, grads_for(params, step))
            opt.step()
    return pa, a, pb, b


def assert_same(pa, a, pb, b):
    for x, y in zip(pa, pb):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-5, atol=1e-6)
        sa, sb = a.state.get(x, {}), b.state.get(y, {})
        assert set(sa) == set(sb)
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key].to(sa[key].device), rtol=1e-5,
                                       atol=1e-6)


def test_plan_is_used_and_steps_match():
    pa, a, pb, b = run(6, lr=1e-2)
    assert a._plans, "a steady-state step keeps a plan"
    assert_same(pa, a, pb, b)


def test_grads_that_come_and_go():
    def change(step, params, opt):
        pass

    pa, pb = twins()
    a, b = Adam(pa, lr=1e-2), torch.optim.Adam(pb, lr=1e-2, fused=True)
    for step, none in enumerate([(), (), (1, 4), (1, 4), (), (0,), ()]):
        for params, opt in ((pa, a), (pb, b)):
            give(params, grads_for(params, step, none))
            opt.step()
    assert_same(pa, a, pb, b)


def test_state_tensor_replaced_in_place_of_the_old_one():
    def change(step, params, opt):
        if step == 3:
            st = opt.state[params[4]]
            st["exp_avg"] = torch.full_like(st["exp_avg"], 0.5)
            st["exp_avg_sq"] = torch.full_like(st["exp_avg_sq"], 0.25)
            st["step"] = torch.tensor(10.0)
    assert_same(*run(6, change, lr=1e-2))


def test_state_dict_of_a_parameter_replaced():
    def change(step, params, opt):
        if step == 3:
            p = params[1]
            opt.state[p] = {"step": torch.tensor(1.0), "exp_avg": torch.ones_like(p),
                            "exp_avg_sq": torch.ones_like(p)}
    assert_same(*run(6, change, lr=1e-2))


def test_parameter_data_replaced():
    def change(step, params, opt):
        if step == 3:
            params[4].data = params[4].data * 2.0  # new memory
    assert_same(*run(6, change, lr=1e-2))


def test_parameter_appended_to_a_group_in_place():
    extra = torch.randn(9)

    def change(step, params, opt):
        if step == 3:
            p = torch.nn.Parameter(extra.clone())
            params.append(p)
            opt.param_groups[0]["params"].append(p)
    assert_same(*run(6, change, lr=1e-2))


def test_amsgrad_switched_on_mid_training_fails_like_torch():
    # torch keeps no max_exp_avg_sq for state made without amsgrad: KeyError, on both sides
    pa, a, pb, b = run(3, lr=1e-2)
    for params, opt in ((pa, a), (pb, b)):
        opt.param_groups[0]["amsgrad"] = True
        give(params, grads_for(params, 3))
        with pytest.raises(KeyError, match="max_exp_avg_sq"):
            opt.step()


def test_amsgrad_switched_off_mid_training():
    def change(step, params, opt):
        if step == 3:
            opt.param_groups[0]["amsgrad"] = False
    assert_same(*run(6, change, lr=1e-2, amsgrad=True))


def test_load_state_dict_mid_training_from_torch():
    pa, a, pb, b = run(4, lr=1e-2)
    a.load_state_dict(copy.deepcopy(b.state_dict()))  # torch shares same-device tensors
    for step in range(4, 8):
        for params, opt in ((pa, a), (pb, b)):
            give(params, grads_for(params, step))
            opt.step()
    assert_same(pa, a, pb, b)


@pytest.mark.parametrize("layout", ["transposed", "bf16_then_back"])
def test_grad_layout_changes(layout):
    def change(step, params, opt):
        pass

    pa, pb = twins(shapes=[(30, 40), (17,)])
    # The reference is torch's for-loop Adam: torch 2.13's fused CPU kernel walks a grad
    # whose strides differ from its parameter's in memory order, pairing the wrong elements
    # (its result differs from the for-loop and foreach implementations by ~2e-2 here).
    a, b = Adam(pa, lr=1e-2), torch.optim.Adam(pb, lr=1e-2, foreach=False)
    for step in range(6):
        grads = grads_for(pa, step)
        for params, opt in ((pa, a), (pb, b)):
            give(params, grads)
            if step == 3 and layout == "transposed":
                # same values, other memory order: gradfast copies it to the param's layout
                params[0].grad = grads[0].t().contiguous().t()
            opt.step()
    assert_same(pa, a, pb, b)
    if layout == "bf16_then_back":
        # a grad of another dtype is refused, then the plan still works afterwards
        if hasattr(pa[1], "grad_dtype"):
            pa[1].grad_dtype = None  # torch >= 2.10 refuses the assignment otherwise
        pa[1].grad = torch.randn(17, dtype=torch.bfloat16)
        with pytest.raises(RuntimeError, match="dtype"):
            a.step()
        give(pa, grads_for(pa, 99))
        give(pb, grads_for(pb, 99))
        a.step()
        b.step()
        assert_same(pa, a, pb, b)


def test_sparse_grad_after_plan_is_refused_like_torch():
    pa, a, pb, b = run(3, lr=1e-2)
    pa[1].grad = torch.randn(5, 7).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        a.step()


def test_two_groups_and_clipping_keep_matching():
    pa, pb = twins()
    a = Adam([{"params": pa[:3]}, {"params": pa[3:], "lr": 3e-2}], lr=1e-2, max_grad_norm=1.0)
    b = torch.optim.Adam([{"params": pb[:3]}, {"params": pb[3:], "lr": 3e-2}], lr=1e-2,
                         fused=True)
    for step in range(6):
        grads = grads_for(pa, step)
        give(pa, grads)
        give(pb, grads)
        a.step()
        torch.nn.utils.clip_grad_norm_(pb, 1.0)
        b.step()
    assert len(a._plans) == 2
    assert_same(pa, a, pb, b)
