"""Parity of gradfast's clip family with torch.nn.utils on the CPU.

Every test runs gradfast and stock torch on identical copies of the same inputs. Norms are
compared by the rules in clip_helpers.assert_norm_matches; clipped gradients must be
bitwise what torch's clip_grads_with_norm_ makes of gradfast's total (the scaling step
is exact), and close to torch's own clip_grad_norm_ result.
"""
import math
import random
import warnings

import pytest
import torch
import torch.nn.utils as tnu
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


import gradfast  # noqa: E402
from clip_helpers import (  # noqa: E402
    FLOAT_DTYPES,
    INF,
    LOW_PRECISION,
    NEGATIVE_NORM_TYPES,
    NORM_TYPES,
    GradSpec,
    assert_grads_close_to_torch,
    assert_grads_identical,
    assert_norm_matches,
    assert_same_error,
    assert_tensors_identical,
    build,
    dtype_id,
    grads_of,
    torch_error,
)
from gradfast._native import CHUNK_ELEMS  # noqa: E402

C = CHUNK_ELEMS
# Scalars, empties, tiny, and sizes on both sides of the chunk boundary (multiples and not).
ZOO_SHAPES = [(), (0,), (1,), (7,), (3, 0, 4), (5, 13), (C - 1,), (C,), (C + 1,),
              (2, C // 2 + 3), (3, C + 7), (2, 3, 5, 7)]
NONEMPTY_ZOO = [s for s in ZOO_SHAPES if math.prod(s) > 0]


def _scale_for(dtype, p):
    # Keep fp16 norms representable (max 65504) for the large tensors of the zoo.
    if dtype == torch.float16 and float(p) == 0.5:
        return 1e-6
    if dtype == torch.float16 and float(p) == 1.0:
        return 1e-3
    return 1.0


def run_both(specs, seed, max_norm, norm_type=2.0, form="list", foreach=None, fn="clip"):
    """Runs gradfast and torch on identical inputs.

    Returns (gf_params, th_params, gf_total, th_total)."""
    pg, pt = build(specs, seed), build(specs, seed)

    def arg(params):
        if form == "generator":
            return (p for p in params)
        if form == "tuple":
            return tuple(params)
        if form == "single":
            assert len(params) == 1
            return params[0]
        return list(params)

    if fn == "clip":
        gf = gradfast.clip_grad_norm_(arg(pg), max_norm, norm_type, foreach=foreach)
        th = tnu.clip_grad_norm_(arg(pt), max_norm, norm_type, foreach=foreach)
    else:
        # get_total_norm takes the gradients themselves.
        if form == "single":
            gf = gradfast.get_total_norm(pg[0].grad, norm_type, foreach=foreach)
            th = tnu.get_total_norm(pt[0].grad, norm_type, foreach=foreach)
        else:
            gf = gradfast.get_total_norm(arg([p.grad for p in pg if p.grad is not None]),
                                         norm_type, foreach=foreach)
            th = tnu.get_total_norm(arg([p.grad for p in pt if p.grad is not None]),
                                    norm_type, foreach=foreach)
    return pg, pt, gf, th


def check_clip(specs, seed, max_norm, norm_type=2.0, form="list", foreach=None):
    """The full clip_grad_norm_ check: norm, exact scaling, closeness to torch's grads."""
    pg, pt, gf, th = run_both(specs, seed, max_norm, norm_type, form, foreach)
    originals = grads_of(build(specs, seed))
    assert_norm_matches(gf, th, originals, norm_type)
    # Scaling is exact: torch's clip_grads_with_norm_ given gradfast's total does the same.
    pr = build(specs, seed)
    tnu.clip_grads_with_norm_(pr, max_norm, gf)
    assert_grads_identical(pg, pr, "gradfast vs torch scaling by gradfast's total")
    if float(norm_type) != 0:  # for L0 the totals differ by design
        assert_grads_close_to_torch(pg, pt, gf, th)
    return gf, th


def max_norm_for(specs, seed, norm_type, factor):
    """A max_norm `factor` times the reference norm (so both sides of the threshold)."""
    total = gradfast.get_total_norm(grads_of(build(specs, seed)), norm_type)
    value = total.double().item()
    if not math.isfinite(value) or value == 0:
        value = 1.0
    return value * factor


# ----------------------------------------------------------------------- the shape zoo


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_zoo_total_norm(dtype, norm_type):
    p = float(norm_type)
    shapes = NONEMPTY_ZOO if p in (INF, -INF) else ZOO_SHAPES
    specs = [GradSpec(s, dtype, scale=_scale_for(dtype, p), zero_frac=0.2 if i % 3 == 0 else 0)
             for i, s in enumerate(shapes)]
    pg, pt, gf, th = run_both(specs, 11, 1.0, norm_type, fn="total")
    assert_norm_matches(gf, th, grads_of(pg), norm_type)
    assert_grads_identical(pg, pt, "get_total_norm must not modify")


@pytest.mark.parametrize("factor", [0.25, 4.0], ids=["clipping", "not-clipping"])
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_zoo_clip(dtype, norm_type, factor):
    p = float(norm_type)
    shapes = NONEMPTY_ZOO if p in (INF, -INF) else ZOO_SHAPES
    # (no zeros for -inf, whose norm would then be 0 and never clip)
    specs = [GradSpec(s, dtype, scale=_scale_for(dtype, p),
                      zero_frac=0.1 if i % 2 and p != -INF else 0)
             for i, s in enumerate(shapes)]
    max_norm = max_norm_for(specs, 5, norm_type, factor)
    gf, th = check_clip(specs, 5, max_norm, norm_type)
    if p != 0 and math.isfinite(gf.item()):
        coef = max_norm / (gf.double().item() + 1e-6)
        assert (coef < 1) == (factor < 1)  # the test really is on the side it claims


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=repr)
def test_all_four_dtypes_in_one_call(norm_type):
    p = float(norm_type)
    specs = []  # no empty tensors, so the infinity norms are defined
    for i, dtype in enumerate([torch.float16, torch.float32, torch.bfloat16, torch.float64] * 2):
        shape = [(C + 5,), (3, 7), (), (2, C // 2)][i % 4]
        specs.append(GradSpec(shape, dtype, scale=_scale_for(dtype, p), zero_frac=0.25))
    for factor in (0.3, 3.0):
        max_norm = max_norm_for(specs, 3, norm_type, factor)
        gf, th = check_clip(specs, 3, max_norm, norm_type)
        assert gf.dtype == torch.float64


@pytest.mark.parametrize("pair", [(torch.float16, torch.bfloat16), (torch.float16, torch.float32),
                                  (torch.bfloat16, torch.float64), (torch.float32, torch.float64)],
                         ids=lambda pr: "+".join(map(dtype_id, pr)))
@pytest.mark.parametrize("norm_type", [2.0, 1.0, INF, -INF, 0.0, 3.5], ids=repr)
def test_dtype_pairs(pair, norm_type):
    specs = [GradSpec((C + 3,), pair[0], scale=_scale_for(pair[0], norm_type), zero_frac=0.5),
             GradSpec((17,), pair[1]), GradSpec((4, 4), pair[0]),
             GradSpec((2, C), pair[1], zero_frac=0.1)]
    max_norm = max_norm_for(specs, 8, norm_type, 0.5)
    gf, th = check_clip(specs, 8, max_norm, norm_type)
    promoted = torch.promote_types(*pair)
    assert gf.dtype == promoted


# -------------------------------------------------------------- randomised configurations


def random_config(rng: random.Random):
    dtypes = list(FLOAT_DTYPES)
    n = rng.randint(1, 7)
    mixed = rng.random() < 0.35
    base_dtype = rng.choice(dtypes)
    norm_type = rng.choice(list(NORM_TYPES))
    p = float(norm_type)
    specs = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.12:
            shape = ()
        elif kind < 0.2 and p not in (INF, -INF):
            shape = rng.choice([(0,), (4, 0), (0, 3, 2)])
        elif kind < 0.45:
            shape = (rng.randint(C - 40, 3 * C + 40),)
        elif kind < 0.55:
            shape = (rng.randint(1, 3), rng.randint(C // 4, C))
        else:
            shape = tuple(rng.randint(1, 40) for _ in range(rng.randint(1, 3)))
        dtype = rng.choice(dtypes) if mixed else base_dtype
        scale = 10 ** rng.uniform(-3, 1)
        if dtype == torch.float16:
            scale = min(scale, _scale_for(dtype, p))
        specs.append(GradSpec(shape, dtype, scale=scale,
                              zero_frac=rng.choice([0, 0, 0.3, 0.9]),
                              has_grad=rng.random() > 0.15))
    if not any(s.has_grad for s in specs):
        specs[0] = GradSpec(specs[0].shape, specs[0].dtype, specs[0].scale)
    forms = ["list", "tuple", "generator"] + (["single"] if n == 1 and specs[0].has_grad else [])
    return dict(specs=specs, norm_type=norm_type, form=rng.choice(forms),
                foreach=rng.choice([None, None, True, False]),
                factor=rng.choice([0.05, 0.5, 0.99, 1.5, 20.0]))


@pytest.mark.parametrize("seed", range(60))
def test_random_configurations(seed):
    rng = random.Random(1000 + seed)
    cfg = random_config(rng)
    specs, norm_type = cfg["specs"], cfg["norm_type"]
    max_norm = max_norm_for(specs, seed, norm_type, cfg["factor"])
    check_clip(specs, seed, max_norm, norm_type, cfg["form"], cfg["foreach"])
    # get_total_norm on the same configuration
    pg, pt, gf, th = run_both(specs, seed, max_norm, norm_type, cfg["form"], cfg["foreach"],
                              fn="total")
    assert_norm_matches(gf, th, grads_of(pg), norm_type)
    assert_grads_identical(pg, pt)


_SHAPES = st.one_of(
    st.just(()),
    st.tuples(st.integers(0, 9)),
    st.tuples(st.integers(1, 5), st.integers(0, 7)),
    st.tuples(st.sampled_from([C - 1, C, C + 1, 2 * C + 5])),
)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    shapes=st.lists(_SHAPES, min_size=1, max_size=6),
    dtypes=st.lists(st.sampled_from(FLOAT_DTYPES), min_size=1, max_size=3),
    norm_type=st.sampled_from(NORM_TYPES),
    log_scale=st.floats(-4, 2),
    zero_frac=st.sampled_from([0.0, 0.5, 1.0]),
    factor=st.sampled_from([0.01, 0.7, 1.3, 100.0]),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_configurations(shapes, dtypes, norm_type, log_scale, zero_frac, factor,
                                   seed):
    p = float(norm_type)
    if p in (INF, -INF):
        shapes = [s for s in shapes if math.prod(s) > 0] or [(3,)]
    specs = []
    for i, shape in enumerate(shapes):
        dtype = dtypes[i % len(dtypes)]
        scale = 10 ** log_scale
        if dtype == torch.float16:
            scale = min(scale, _scale_for(dtype, p))
        specs.append(GradSpec(shape, dtype, scale=scale, zero_frac=zero_frac))
    max_norm = max_norm_for(specs, seed, norm_type, factor)
    check_clip(specs, seed, max_norm, norm_type)


# ------------------------------------------------------------- inputs forms and None grads


def test_none_grads_skipped_and_kept_none():
    specs = [GradSpec((5,), has_grad=False), GradSpec((C + 2,)), GradSpec((3,), has_grad=False),
             GradSpec((2, 2))]
    check_clip(specs, 1, 0.1)
    pg = build(specs, 1)
    gradfast.clip_grad_norm_(pg, 0.1)
    assert pg[0].grad is None and pg[2].grad is None


@pytest.mark.parametrize("form", ["list", "tuple", "generator"])
def test_input_forms(form):
    specs = [GradSpec((40,)), GradSpec((C + 9,)), GradSpec(())]
    check_clip(specs, 2, 0.5, 2.0, form=form)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_single_tensor(dtype):
    for shape in [(), (9,), (C + 1,)]:
        spec = [GradSpec(shape, dtype)]
        check_clip(spec, 4, 0.5, form="single")
        pg, pt, gf, th = run_both(spec, 4, 0.5, form="single", fn="total")
        assert_norm_matches(gf, th, grads_of(pg), 2.0)


def test_module_parameters_generator():
    torch.manual_seed(3)
    ma = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.ReLU(), torch.nn.Linear(20, 4))
    mb = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.ReLU(), torch.nn.Linear(20, 4))
    mb.load_state_dict(ma.state_dict())
    x = torch.randn(8, 30)
    ma(x).pow(2).sum().backward()
    mb(x).pow(2).sum().backward()
    gf = gradfast.clip_grad_norm_(ma.parameters(), 0.1)
    th = tnu.clip_grad_norm_(mb.parameters(), 0.1)
    assert_norm_matches(gf, th, [p.grad for p in mb.parameters()], 2.0)
    for a, b in zip(ma.parameters(), mb.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=2e-6, atol=1e-9)


def test_empty_generator_warns_like_torch():
    with warnings.catch_warnings(record=True) as wg:
        warnings.simplefilter("always")
        gf = gradfast.clip_grad_norm_((p for p in []), 1.0)
    with warnings.catch_warnings(record=True) as wt:
        warnings.simplefilter("always")
        th = tnu.clip_grad_norm_((p for p in []), 1.0)
    assert len(wg) == len(wt) == 1
    assert wg[0].category is wt[0].category
    assert str(wg[0].message) == str(wt[0].message)
    assert wg[0].filename == wt[0].filename == __file__  # attributed to the caller
    assert_tensors_identical(gf, th)


def test_empty_list_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gf = gradfast.clip_grad_norm_([], 1.0)
    assert_tensors_identical(gf, tnu.clip_grad_norm_([], 1.0))


@pytest.mark.parametrize("fn", ["clip", "total"])
def test_empty_input_returns_zero(fn):
    if fn == "clip":
        cases = [([], []), (build([GradSpec((3,), has_grad=False)], 0),
                            build([GradSpec((3,), has_grad=False)], 0))]
        for a, b in cases:
            assert_tensors_identical(gradfast.clip_grad_norm_(a, 1.0, 3.0),
                                     tnu.clip_grad_norm_(b, 1.0, 3.0))
    else:
        for norm_type in NORM_TYPES:
            assert_tensors_identical(gradfast.get_total_norm([], norm_type),
                                     tnu.get_total_norm([], norm_type))


def test_empty_input_follows_default_dtype():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert_tensors_identical(gradfast.clip_grad_norm_([], 1.0), tnu.clip_grad_norm_([], 1.0))
        assert_tensors_identical(gradfast.get_total_norm([]), tnu.get_total_norm([]))
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 0.0, 3.5, 0.5], ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_empty_tensors(dtype, norm_type):
    only_empty = [GradSpec((0,), dtype), GradSpec((2, 0), dtype)]
    pg, pt, gf, th = run_both(only_empty, 0, 1.0, norm_type)
    assert_tensors_identical(gf, th)
    mixed = only_empty + [GradSpec((5,), dtype), GradSpec((0, 3), torch.float32)]
    check_clip(mixed, 0, 0.1, norm_type)


@pytest.mark.parametrize("norm_type", [INF, -INF, "inf", "-inf"], ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_empty_tensors_with_infinity_norms_raise_like_torch(dtype, norm_type):
    for specs in ([GradSpec((0,), dtype)],
                  [GradSpec((4,), dtype), GradSpec((3, 0), dtype)],
                  [GradSpec((4,), torch.float32), GradSpec((0,), dtype)]):
        pg, pt = build(specs, 0), build(specs, 0)
        assert_same_error(lambda: gradfast.clip_grad_norm_(pg, 1.0, norm_type),
                          lambda: tnu.clip_grad_norm_(pt, 1.0, norm_type))
        assert_same_error(lambda: gradfast.get_total_norm(grads_of(pg), norm_type),
                          lambda: tnu.get_total_norm(grads_of(pt), norm_type))
        assert_grads_identical(pg, build(specs, 0), "grads after the error")


# ---------------------------------------------------------------------- norm_type spellings


@pytest.mark.parametrize("norm_type", [2, 1, "2", "1.0", "inf", "-inf", "Infinity", 3, 0,
                                       True], ids=repr)
def test_norm_type_spellings(norm_type):
    specs = [GradSpec((C + 11,), zero_frac=0.2), GradSpec((6, 6))]
    check_clip(specs, 6, 0.3, norm_type)


@pytest.mark.parametrize("norm_type", NEGATIVE_NORM_TYPES + (math.nan,), ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_negative_and_nan_norm_types_identical_to_torch(dtype, norm_type):
    # Delegated to torch's own algorithm: bitwise identical results, zeros included.
    specs = [GradSpec((C + 3,), dtype, zero_frac=0.0), GradSpec((5,), dtype),
             GradSpec((4, 3), dtype, zero_frac=0.5)]
    pg, pt, gf, th = run_both(specs, 2, 0.01, norm_type)
    assert_tensors_identical(gf, th, "total")
    assert_grads_identical(pg, pt)
    pg, pt, gf, th = run_both(specs, 2, 0.01, norm_type, fn="total")
    assert_tensors_identical(gf, th, "get_total_norm")


def test_invalid_norm_type_string():
    specs = [GradSpec((3,))]
    pg, pt = build(specs, 0), build(specs, 0)
    assert_same_error(lambda: gradfast.clip_grad_norm_(pg, 1.0, "fro"),
                      lambda: tnu.clip_grad_norm_(pt, 1.0, "fro"))
    assert_grads_identical(pg, pt)


# ------------------------------------------------------------------------ L0 (documented)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_l0_counts_nonzero_elements(dtype):
    """Documented difference: gradfast's norm_type=0 counts nonzero elements; torch 2.13
    counts the tensors holding any nonzero."""
    specs = [GradSpec((50,), dtype, zero_frac=0.5), GradSpec((3, 0), dtype),
             GradSpec((7,), dtype, zero_frac=1.0), GradSpec((), dtype),
             GradSpec((C + 100,), dtype, zero_frac=0.999)]
    grads = grads_of(build(specs, 9))
    count = sum(int(torch.count_nonzero(g)) for g in grads)
    gf = gradfast.get_total_norm(grads, 0)
    th = tnu.get_total_norm(grads, 0)
    assert gf.dtype == th.dtype == dtype
    assert 0 < count <= 256  # every integer up to 256 is exact in all four dtypes
    assert gf.item() == torch.tensor(float(count), dtype=dtype).item()
    # torch's value, which gradfast deliberately does not reproduce
    assert th.item() == sum(1 for g in grads if bool(g.ne(0).any()))
    # and clipping uses gradfast's count
    max_norm = 0.5 * count
    pg = build(specs, 9)
    total = gradfast.clip_grad_norm_(pg, max_norm, 0)
    assert_tensors_identical(total, gf)
    pr = build(specs, 9)
    tnu.clip_grads_with_norm_(pr, max_norm, gf)
    assert_grads_identical(pg, pr)


def test_l0_count_overflowing_fp16_is_inf():
    # The count is held in the grad dtype: above fp16's 65504 it is inf, and therefore
    # non-finite for error_if_nonfinite (torch's tensor count never overflows).
    grads = [torch.ones(C + 5, dtype=torch.float16)]
    assert gradfast.get_total_norm(grads, 0).item() == math.inf
    with pytest.raises(RuntimeError, match="non-finite"):
        gradfast.get_total_norm(grads, 0, error_if_nonfinite=True)


def test_l0_counts_nan_and_inf_as_nonzero():
    g = torch.tensor([0.0, math.nan, math.inf, -math.inf, 0.0, 1.0])
    assert gradfast.get_total_norm([g], 0).item() == 4.0


# ------------------------------------------------------------------------------ non-finite


def _nonfinite_specs(dtype, kind):
    values = {"nan": (math.nan,), "inf": (math.inf,), "-inf": (-math.inf,),
              "inf+nan": (math.inf, math.nan), "+-inf": (math.inf, -math.inf)}[kind]
    nf = tuple((v, C + 3 + 17 * i) for i, v in enumerate(values))
    return [GradSpec((2 * C + 10,), dtype, nonfinite=nf, zero_frac=0.1),
            GradSpec((9,), dtype), GradSpec((), dtype),
            GradSpec((4, 4), torch.float32, nonfinite=((values[0], 5),))]


@pytest.mark.parametrize("kind", ["nan", "inf", "-inf", "inf+nan", "+-inf"])
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_nonfinite_grads_without_error(dtype, norm_type, kind):
    specs = _nonfinite_specs(dtype, kind)
    pg, pt, gf, th = run_both(specs, 1, 1.0, norm_type)
    assert_norm_matches(gf, th, grads_of(build(specs, 1)), norm_type)
    if float(norm_type) != 0:
        assert_tensors_identical(gf.isnan(), th.isnan())
        assert_tensors_identical(gf.isinf(), th.isinf())
        for a, b in zip(pg, pt):
            assert_tensors_identical(a.grad.isnan(), b.grad.isnan(), "NaN pattern")
            assert_tensors_identical(a.grad.isinf(), b.grad.isinf(), "inf pattern")
            assert_tensors_identical(a.grad.signbit() | a.grad.isnan(),
                                     b.grad.signbit() | b.grad.isnan(), "signs")
        assert_grads_close_to_torch(pg, pt, gf, th)
    pr = build(specs, 1)
    tnu.clip_grads_with_norm_(pr, 1.0, gf)
    assert_grads_identical(pg, pr)


@pytest.mark.parametrize("kind", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, INF, 3.5, 0.5, "inf"], ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_nonfinite_grads_error(dtype, norm_type, kind):
    specs = _nonfinite_specs(dtype, kind)
    pg, pt = build(specs, 1), build(specs, 1)
    err = assert_same_error(
        lambda: gradfast.clip_grad_norm_(pg, 1.0, norm_type, error_if_nonfinite=True),
        lambda: tnu.clip_grad_norm_(pt, 1.0, norm_type, error_if_nonfinite=True))
    assert isinstance(err, RuntimeError)
    assert_grads_identical(pg, build(specs, 1), "grads must be untouched after the error")
    assert_same_error(
        lambda: gradfast.get_total_norm(grads_of(pg), norm_type, error_if_nonfinite=True),
        lambda: tnu.get_total_norm(grads_of(pt), norm_type, error_if_nonfinite=True))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_overflowing_norm(dtype):
    # Finite grads whose norm overflows the dtype: inf like torch, and an error on request.
    big = torch.finfo(dtype).max / 4
    specs = [GradSpec((64,), dtype, scale=big), GradSpec((3,), dtype)]
    for norm_type in (2.0, 1.0, 3.5):
        pg, pt, gf, th = run_both(specs, 0, 1.0, norm_type)
        assert_tensors_identical(gf, th)
        assert_grads_identical(pg, pt)
        pg, pt = build(specs, 0), build(specs, 0)
        assert_same_error(
            lambda: gradfast.clip_grad_norm_(pg, 1.0, norm_type, error_if_nonfinite=True),
            lambda: tnu.clip_grad_norm_(pt, 1.0, norm_type, error_if_nonfinite=True))


@pytest.mark.parametrize("norm_type", [2.0, 1.0, INF, 0.0, 3.5], ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_error_if_nonfinite_on_finite_grads(dtype, norm_type):
    # (for fp16 and L0 the zeros keep the count of nonzero elements below 65504)
    specs = [GradSpec((C + 5,), dtype, scale=_scale_for(dtype, norm_type), zero_frac=0.2),
             GradSpec((3,), dtype)]
    pg, pt = build(specs, 2), build(specs, 2)
    gf = gradfast.clip_grad_norm_(pg, 0.1, norm_type, error_if_nonfinite=True)
    th = tnu.clip_grad_norm_(pt, 0.1, norm_type, error_if_nonfinite=True)
    assert_norm_matches(gf, th, grads_of(build(specs, 2)), norm_type)


# ----------------------------------------------------------------- special clip thresholds


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_max_norm_edge_values(dtype):
    specs = [GradSpec((C + 1,), dtype, scale=0.1), GradSpec((5,), dtype)]
    for max_norm in (0.0, 0, 1, -1.0, 1e-7, 1e30, torch.tensor(0.5), INF):
        pg, pt, gf, th = run_both(specs, 3, max_norm)
        assert_norm_matches(gf, th, grads_of(build(specs, 3)), 2.0)
        assert_grads_close_to_torch(pg, pt, gf, th)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_tiny_norms(dtype):
    # Norms near and below 1e-6 (the epsilon of the coefficient), where the coefficient
    # computation's rounding in the grad dtype matters most.
    tiny = torch.finfo(dtype).tiny
    for scale, max_norm in [(1e-7, 1e-6), (5e-6, 1e-6), (1e-5, 1e-7), (tiny, 1e-9),
                            (1e-3, 1e-6), (0.0, 1.0)]:
        specs = [GradSpec((4,), dtype, scale=scale), GradSpec((C + 2,), dtype, scale=scale)]
        pg, pt, gf, th = run_both(specs, 5, max_norm)
        assert_norm_matches(gf, th, grads_of(build(specs, 5)), 2.0)
        pr = build(specs, 5)
        tnu.clip_grads_with_norm_(pr, max_norm, gf)
        assert_grads_identical(pg, pr, f"scale {scale} max_norm {max_norm}")
        assert_grads_close_to_torch(pg, pt, gf, th)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_coefficient_bitwise_like_torch_when_norms_agree(dtype):
    # With one small tensor the norm is the same bits on both sides, so the clip
    # coefficient (max_norm / (total + 1e-6), clamped to 1) and the clipped grads must be.
    checked = 0
    for seed in range(150):
        rng = random.Random(seed)
        specs = [GradSpec((rng.randint(1, 6),), dtype, scale=10 ** rng.uniform(-3, 2))]
        max_norm = 10 ** rng.uniform(-3, 2)
        pg, pt, gf, th = run_both(specs, seed, max_norm)
        if torch.equal(gf, th):
            checked += 1
            assert_grads_identical(pg, pt, f"seed {seed}, max_norm {max_norm}")
    assert checked >= 100


@pytest.mark.parametrize("others", [(torch.float64,), (torch.float16, torch.bfloat16),
                                    (torch.float32, torch.float64)],
                         ids=lambda o: "+".join(map(dtype_id, o)))
def test_scalar_grads_in_mixed_dtype_calls(others):
    # 0-d grads meet a 0-d coefficient of the promoted dtype: torch then multiplies in the
    # promoted dtype, not in the grad's (bitwise parity needs the same).
    specs = [GradSpec((), d, scale=3.0) for d in FLOAT_DTYPES for _ in range(40)]
    specs += [GradSpec((33,), d) for d in others]
    for seed in range(3):
        pg, pt, gf, th = run_both(specs, seed, 0.37)
        assert_norm_matches(gf, th, grads_of(build(specs, seed)), 2.0)
        pr = build(specs, seed)
        tnu.clip_grads_with_norm_(pr, 0.37, gf)
        assert_grads_identical(pg, pr)
        assert_grads_close_to_torch(pg, pt, gf, th)


# -------------------------------------------------------------------- clip_grads_with_norm_


@pytest.mark.parametrize("total_dtype", FLOAT_DTYPES, ids=dtype_id)
def test_clip_grads_with_norm_given_total(total_dtype):
    specs = [GradSpec((C + 3,), torch.float32), GradSpec((5,), torch.float16),
             GradSpec((), torch.bfloat16), GradSpec((7, 3), torch.float64),
             GradSpec((3,), has_grad=False), GradSpec((0,), torch.float16)]
    specs += [GradSpec((), d) for d in FLOAT_DTYPES for _ in range(10)]
    for value in (0.0, 1e-8, 0.3, 2.0, 1e4, math.inf, math.nan):
        for max_norm in (1.0, 3, 0.0):
            total = torch.tensor(value, dtype=total_dtype)
            pg, pt = build(specs, 4), build(specs, 4)
            assert gradfast.clip_grads_with_norm_(pg, max_norm, total) is None
            tnu.clip_grads_with_norm_(pt, max_norm, total)
            assert_grads_identical(pg, pt, f"total {value} max_norm {max_norm}")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_clip_grads_with_norm_from_get_total_norm(dtype):
    specs = [GradSpec((2 * C + 1,), dtype), GradSpec((3, 3), dtype)]
    for norm_type in NORM_TYPES:
        if float(norm_type) in (1.0, 0.5) and dtype == torch.float16:
            continue
        pg, pt = build(specs, 6), build(specs, 6)
        total = gradfast.get_total_norm(grads_of(pg), norm_type)
        gradfast.clip_grads_with_norm_(pg, 0.5, total)
        tnu.clip_grads_with_norm_(pt, 0.5, total)
        assert_grads_identical(pg, pt)
        # equivalent to clip_grad_norm_, as torch documents
        pc = build(specs, 6)
        assert_tensors_identical(gradfast.clip_grad_norm_(pc, 0.5, norm_type), total)
        assert_grads_identical(pc, pg, "clip_grad_norm_ == get_total_norm + clip_grads_with_norm_")


def test_clip_grads_with_norm_forms():
    specs = [GradSpec((6,))]
    total = torch.tensor(10.0)
    for form in ("single", "generator", "empty"):
        pg, pt = build(specs, 0), build(specs, 0)
        if form == "single":
            a, b = pg[0], pt[0]
        elif form == "generator":
            a, b = (p for p in pg), (p for p in pt)
        else:
            a, b = [], []
        assert gradfast.clip_grads_with_norm_(a, 1.0, total) is None
        tnu.clip_grads_with_norm_(b, 1.0, total)
        assert_grads_identical(pg, pt)


# ------------------------------------------------------------------------ clip_grad_value_


CLIP_VALUES = [0.5, 0.1, 1, 0, 1e-3, 3, 1e-30, 65504.0, INF, -1.0, -0.25, math.nan]


@pytest.mark.parametrize("clip_value", CLIP_VALUES, ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_clip_grad_value(dtype, clip_value):
    specs = [GradSpec((2 * C + 3,), dtype, zero_frac=0.1,
                      nonfinite=((math.nan, 3), (math.inf, C + 1), (-math.inf, 2 * C))),
             GradSpec((), dtype, scale=5.0), GradSpec((0,), dtype), GradSpec((4,), dtype,
                                                                             has_grad=False),
             GradSpec((3, 5), dtype, scale=100.0)]
    pg, pt = build(specs, 7), build(specs, 7)
    assert gradfast.clip_grad_value_(pg, clip_value) is None
    tnu.clip_grad_value_(pt, clip_value)
    assert_grads_identical(pg, pt, f"clip_value {clip_value}")


def test_clip_grad_value_mixed_dtypes_and_forms():
    specs = [GradSpec((C + 1,), d, scale=3.0) for d in FLOAT_DTYPES] + [GradSpec((3,),
                                                                            has_grad=False)]
    for form in ("list", "generator", "tuple"):
        pg, pt = build(specs, 8), build(specs, 8)
        wrap = {"list": list, "tuple": tuple, "generator": lambda ps: (p for p in ps)}[form]
        gradfast.clip_grad_value_(wrap(pg), 0.7)
        tnu.clip_grad_value_(wrap(pt), 0.7)
        assert_grads_identical(pg, pt)
    pg, pt = build(specs[:1], 8), build(specs[:1], 8)
    gradfast.clip_grad_value_(pg[0], 0.2)
    tnu.clip_grad_value_(pt[0], 0.2)
    assert_grads_identical(pg, pt)
    gradfast.clip_grad_value_([], 0.2)
    gradfast.clip_grad_value_((p for p in []), 0.2)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_clip_grad_value_out_of_dtype_range(dtype):
    # torch refuses a finite clip value the grad dtype cannot hold; gradfast must too.
    for value in (70000.0, 65510.0, 3.4e38, 1e39, 1e300):
        specs = [GradSpec((5,), dtype), GradSpec((C + 1,), dtype)]
        pg, pt = build(specs, 0), build(specs, 0)
        if torch_error(lambda: tnu.clip_grad_value_(pt, value)) is None:
            gradfast.clip_grad_value_(pg, value)
            assert_grads_identical(pg, pt)
        else:
            assert_same_error(lambda: gradfast.clip_grad_value_(pg, value),
                              lambda: tnu.clip_grad_value_(build(specs, 0), value))
            assert_grads_identical(pg, build(specs, 0), "grads after the error")


# --------------------------------------------------------------------------- deprecated


def test_deprecated_clip_grad_norm_warns():
    specs = [GradSpec((C + 4,)), GradSpec((3,))]
    pg, pt = build(specs, 1), build(specs, 1)
    with pytest.warns(FutureWarning) as wg:
        gf = gradfast.clip_grad_norm(pg, 0.3, 2.0)
    with pytest.warns(FutureWarning) as wt:
        th = tnu.clip_grad_norm(pt, 0.3, 2.0)
    assert [str(w.message) for w in wg] == [str(w.message) for w in wt]
    assert wg[0].filename == __file__
    assert_norm_matches(gf, th, grads_of(build(specs, 1)), 2.0)
    pc = build(specs, 1)
    assert_tensors_identical(gradfast.clip_grad_norm_(pc, 0.3, 2.0), gf)
    assert_grads_identical(pc, pg)


# ------------------------------------------------------------------ autograd bookkeeping


def test_inplace_writes_bump_version_counter():
    # torch's in-place ops tell autograd the grads changed; so must gradfast's kernels.
    for fn in (lambda ps: gradfast.clip_grad_norm_(ps, 1e-3),
               lambda ps: gradfast.clip_grads_with_norm_(ps, 1e-3, torch.tensor(5.0)),
               lambda ps: gradfast.clip_grad_value_(ps, 1e-3)):
        params = build([GradSpec((10,)), GradSpec((C + 1,), torch.float16)], 0)
        before = [p.grad._version for p in params]
        fn(params)
        after = [p.grad._version for p in params]
        assert all(a > b for a, b in zip(after, before)), (before, after)


def test_grads_modified_in_place():
    params = build([GradSpec((C + 8,)), GradSpec((4,), torch.float64)], 0)
    ptrs = [p.grad.data_ptr() for p in params]
    gradfast.clip_grad_norm_(params, 1e-3)
    gradfast.clip_grad_value_(params, 1e-4)
    assert [p.grad.data_ptr() for p in params] == ptrs


def test_result_outside_autograd():
    params = build([GradSpec((10,))], 0)
    params[0].grad.requires_grad_(False)
    with torch.enable_grad():
        total = gradfast.clip_grad_norm_(params, 1.0)
    assert not total.requires_grad
    assert total.grad_fn is None


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=dtype_id)
def test_low_precision_large_sums_rule(dtype):
    # Many elements: accumulation must be in fp32 (error within 2x torch's).
    specs = [GradSpec((5 * C + 3,), dtype, scale=1e-2), GradSpec((C,), dtype, scale=1e-2)]
    for norm_type in (2.0, 3.5):
        pg, pt, gf, th = run_both(specs, 12, 1.0, norm_type, fn="total")
        assert_norm_matches(gf, th, grads_of(pg), norm_type)
