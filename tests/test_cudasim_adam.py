"""The CUDA Adam kernels (adam_step, and the one-launch clip_adam_step with its two-launch
fallback) run on the CPU by cudasim (tools/cudasim): against gradfast's CPU kernel (the same
per-element function, already checked against torch), against torch.optim.Adam over many
steps, and against each other, on every simulated device."""
import math

import pytest
import torch

from clip_helpers import FLOAT_DTYPES, bits, dtype_id
from gradfast._native import _C
from gradfast._native.adam import adam_step
from gradfast._native.norm_kind import norm_kind
from sim_device import adam_args, adam_lists

TILE = _C.ADAM_TILE_ELEMS
WD_NONE, WD_L2, WD_DECOUPLED = (int(_C.WeightDecayMode.__members__[n])
                                for n in ("None_", "L2", "Decoupled"))


def _state(dtype, amsgrad, seed=0):
    """[params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps]: sizes around the tile,
    a scalar, an empty tensor, and a parameter at an odd offset (the kernels' scalar path)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(shape, scale=1.0, positive=False):
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
        return (x.abs() if positive else x).to(dtype)

    shapes = [(), (0,), (5,), (TILE,), (2 * TILE + 5,), (3, 1000)]
    params = [rnd(s) for s in shapes]
    params.append(rnd(1001)[1:])  # misaligned
    shapes = [p.shape for p in params]
    grads = [rnd(s, 0.1) for s in shapes]
    exp_avgs = [rnd(s, 0.01) for s in shapes]
    exp_avg_sqs = [rnd(s, 1e-3, positive=True) for s in shapes]
    max_sqs = [v + rnd(v.shape, 1e-3, positive=True) for v in exp_avg_sqs] if amsgrad else []
    steps = [torch.tensor(float(k % 3 + 1)) for k in range(len(params))]
    return [params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps]


def _clone(lists):
    return [[t.clone() for t in lst] for lst in lists]


def _hyper(**over):
    h = dict(lr=1e-3, lr_t=None, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
             wd_mode=WD_NONE, l1=0.0, maximize=False, grad_scale=None, found_inf=None,
             clip=False, max_norm=0.0, skip_nonfinite=False, max_norm_t=None)
    h.update(over)
    return h


# name -> (hyper overrides, total norm given to the step or None)
CONFIGS = {
    "plain": ({}, None),
    "amsgrad": ({}, None),
    "maximize_l2": ({"maximize": True, "weight_decay": 0.01, "wd_mode": WD_L2}, None),
    "decoupled_l1": ({"weight_decay": 0.1, "wd_mode": WD_DECOUPLED, "l1": 1e-3}, None),
    "lr_tensor": ({"lr_t": torch.tensor(2e-3)}, None),
    "lr_tensor64": ({"lr_t": torch.tensor(3e-3, dtype=torch.float64)}, None),
    "grad_scaler": ({"grad_scale": torch.tensor(4.0), "found_inf": torch.tensor(0.0)}, None),
    "found_inf": ({"grad_scale": torch.tensor(4.0), "found_inf": torch.tensor(1.0)}, None),
    "clip": ({"clip": True, "max_norm": 1.0}, 5.0),
    "clip_inactive": ({"clip": True, "max_norm": 10.0}, 5.0),
    "clip_threshold": ({"clip": True, "max_norm_t": torch.tensor(2.0)}, 5.0),
    "skip_nonfinite": ({"skip_nonfinite": True}, math.inf),
    "skip_nonfinite_finite": ({"skip_nonfinite": True, "clip": True, "max_norm": 1.0}, 3.0),
}


def _cpu_adam(lists, amsgrad, skipped, total, dtype, **hyper):
    """The same step through the native layer's CPU kernel (the real back end)."""
    h, step = adam_args(amsgrad, total, **hyper)
    adam_step(adam_lists(lists), h, step, skipped)


def _assert_same(a_lists, b_lists):
    """Bitwise equality (NaNs included) of two state lists."""
    names = ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step")
    for name, a_list, b_list in zip(names, a_lists, b_lists):
        assert len(a_list) == len(b_list)
        for i, (a, b) in enumerate(zip(a_list, b_list)):
            assert torch.equal(bits(a), bits(b)), \
                f"{name}[{i}] differs: max {(a.double() - b.double()).abs().max()}"


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_adam_step_is_bitwise_the_cpu_kernel(sim_devices, dtype, config):
    over, total_value = CONFIGS[config]
    amsgrad = config == "amsgrad"
    hyper = _hyper(**over)
    total = torch.tensor(total_value, dtype=dtype) if total_value is not None else None
    expected = _state(dtype, amsgrad)
    skipped_cpu = torch.zeros((), dtype=torch.int64)
    _cpu_adam(expected, amsgrad, skipped_cpu, total, dtype, **hyper)
    for dev in sim_devices:
        lists = _state(dtype, amsgrad)
        skipped = torch.zeros((), dtype=torch.int64)
        dev.adam(lists, amsgrad, skipped=skipped, total=total, **hyper)
        assert dev.launches == 1
        _assert_same(lists, expected)
        assert skipped.item() == skipped_cpu.item()
        assert int(torch.count_nonzero(dev.workspaces["adam"])) == 0
    if config in ("found_inf", "skip_nonfinite"):  # a skipped step changes nothing, counted
        _assert_same(expected, _state(dtype, amsgrad))
    assert skipped_cpu.item() == (1 if config in ("found_inf", "skip_nonfinite") else 0)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=dtype_id)
@pytest.mark.parametrize("variant", ["adam", "amsgrad_maximize", "adamw"])
def test_adam_matches_torch_over_steps(sim_devices, dtype, variant):
    dev = sim_devices[1]
    lists = _state(dtype, amsgrad=variant.startswith("amsgrad"), seed=4)
    params, grads = lists[0], lists[1]
    for m, v, s in zip(*lists[2:4], lists[5]):  # torch's initial state: zeros, step 0
        m.zero_(), v.zero_(), s.zero_()
    for x in lists[4]:
        x.zero_()
    ref = [torch.nn.Parameter(p.clone()) for p in params]
    kw = {"adam": {}, "amsgrad_maximize": {"amsgrad": True, "maximize": True},
          "adamw": {"weight_decay": 0.05}}[variant]
    cls = torch.optim.AdamW if variant == "adamw" else torch.optim.Adam
    opt = cls(ref, lr=1e-2, foreach=False, **kw)
    hyper = _hyper(lr=1e-2, maximize=kw.get("maximize", False))
    if variant == "adamw":
        hyper.update(weight_decay=0.05, wd_mode=WD_DECOUPLED)
    gen = torch.Generator().manual_seed(5)
    for _ in range(12):
        for p, g, r in zip(params, grads, ref):
            g.copy_(torch.randn(g.shape, generator=gen, dtype=torch.float64).to(dtype))
            r.grad = g.clone()
        dev.adam(lists, "amsgrad" in variant, **hyper)
        opt.step()
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p, r.detach(), **tol)
    for s in lists[5]:
        assert s.item() == 12.0


@pytest.mark.parametrize("p", (2.0, 1.0, math.inf), ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_one_launch_is_bitwise_the_two_launches(sim_devices, dtype, p):
    hyper = _hyper(clip=True, max_norm=0.5, skip_nonfinite=True,
                   weight_decay=0.01, wd_mode=WD_L2)
    kind = norm_kind(p)
    reference = None
    for dev in sim_devices:
        one, two = _state(dtype, True, seed=6), _state(dtype, True, seed=6)
        skipped1, skipped2 = torch.zeros((), dtype=torch.int64), torch.zeros((), dtype=torch.int64)
        for _ in range(3):  # reused workspaces, steps counting up
            total1, launches1 = dev.clip_adam(one, True, kind, p, cooperative=True,
                                              skipped=skipped1, **hyper)
            assert int(torch.count_nonzero(dev.workspaces["norm"])) == 0
            assert int(torch.count_nonzero(dev.workspaces["adam"])) == 0
            total2, launches2 = dev.clip_adam(two, True, kind, p, cooperative=False,
                                              skipped=skipped2, **hyper)
            # One launch where the device can launch cooperative kernels, else the fallback.
            assert launches1 == (1 if dev.index != 3 else 2) and launches2 == 2
            assert dev.launches == launches2  # what it reports is what ran
            assert torch.equal(total1, total2)
            _assert_same(one, two)
        assert skipped1.item() == skipped2.item() == 0
        # The norm is multi_norm's, bitwise; the update is adam_step's with that total.
        ref_state = _state(dtype, True, seed=6)
        for _ in range(3):
            t = dev.norm(ref_state[1], kind, p)[0]
            dev.adam(ref_state, True, total=t, **hyper)
        assert torch.equal(t, total1)
        _assert_same(one, ref_state)
        if reference is None:
            reference = one
        _assert_same(one, reference)  # every grid size: the same bits


def test_one_launch_skips_a_nonfinite_step(sim_devices):
    hyper = _hyper(clip=True, max_norm=0.5, skip_nonfinite=True)
    for dev in sim_devices:
        lists = _state(torch.float32, False, seed=7)
        lists[1][4][TILE + 3] = math.nan
        before = _clone(lists)
        skipped = torch.zeros((), dtype=torch.int64)
        total, _ = dev.clip_adam(lists, False, norm_kind(2.0), 2.0, skipped=skipped, **hyper)
        assert total.isnan() and skipped.item() == 1
        _assert_same(lists, before)
        assert int(torch.count_nonzero(dev.workspaces["adam"])) == 0


@pytest.mark.parametrize("seed", range(24))
def test_random_adam_steps_are_bitwise_the_cpu_kernel(sim_devices, seed):
    """Random sizes (0-20K elements, some at odd offsets: the scalar path), dtypes and
    hyperparameters, three steps, against the CPU kernel on identical copies."""
    gen = torch.Generator().manual_seed(2000 + seed)
    pick = lambda n: int(torch.randint(n, (), generator=gen))  # noqa: E731
    dtype = FLOAT_DTYPES[pick(4)]
    amsgrad = bool(pick(2))

    def rnd(n, offset, scale=1.0, positive=False):
        x = torch.randn(n + offset, generator=gen, dtype=torch.float64)[offset:] * scale
        return (x.abs() if positive else x).to(dtype)

    sizes = [pick(20_000) if pick(3) == 0 else pick(50) for _ in range(1 + pick(12))]
    offsets = [pick(4) for _ in sizes]
    lists = [[rnd(n, o) for n, o in zip(sizes, offsets)],
             [rnd(n, o, 0.1) for n, o in zip(sizes, offsets)],
             [rnd(n, o, 0.01) for n, o in zip(sizes, offsets)],
             [rnd(n, o, 1e-3, True) for n, o in zip(sizes, offsets)],
             [rnd(n, o, 1e-3, True) for n, o in zip(sizes, offsets)] if amsgrad else [],
             [torch.tensor(float(pick(5))) for _ in sizes]]
    wd_mode = pick(3)
    hyper = _hyper(lr=10.0 ** -(1 + pick(4)), beta1=0.8 + 0.19 * pick(2),
                   beta2=0.99 + 0.009 * pick(2), eps=10.0 ** -(4 + pick(6)),
                   weight_decay=0.05 * (wd_mode != WD_NONE), wd_mode=wd_mode,
                   l1=1e-3 * pick(2), maximize=bool(pick(2)), clip=bool(pick(2)), max_norm=0.5)
    total = torch.tensor(0.1 + 3 * pick(3), dtype=dtype)
    ours, ref = _clone(lists), _clone(lists)
    dev = sim_devices[seed % 4]
    for _ in range(3):
        dev.adam(ours, amsgrad, total=total, **hyper)
        _cpu_adam(ref, amsgrad, None, total, dtype, **hyper)
    _assert_same(ours, ref)
