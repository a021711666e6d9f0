"""Unusual gradients: layouts, subclasses, sparse, aliasing, autograd state, bad input.

Inputs the native kernels do not take (sparse, not dense in memory, tensor subclasses)
go to torch's own algorithm and must give bitwise torch's results or torch's error. Dense
grads in another memory order (channels_last, transposed) are taken natively and must be
as correct as contiguous ones.
"""
import math
import warnings

import pytest
import torch
import torch.nn.utils as tnu


import gradfast  # noqa: E402
from clip_helpers import (  # noqa: E402
    FLOAT_DTYPES,
    INF,
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
)
from gradfast._native import CHUNK_ELEMS as C  # noqa: E402
from gradfast._native.support import native_supported  # noqa: E402

NONZERO_NORMS = [n for n in NORM_TYPES if float(n) != 0]


def _clip_both(specs, seed, max_norm, norm_type):
    pg, pt = build(specs, seed), build(specs, seed)
    gf = gradfast.clip_grad_norm_(pg, max_norm, norm_type)
    th = tnu.clip_grad_norm_(pt, max_norm, norm_type)
    return pg, pt, gf, th


# ------------------------------------------------------------------ dense, other orders


DENSE_LAYOUTS = [
    GradSpec((3, 8, 5, 7), layout="channels_last"),
    GradSpec((2, 40, 30, 31), layout="channels_last"),  # > one chunk
    GradSpec((61, 1111), layout="transposed"),  # > one chunk
    GradSpec((1, 9), layout="transposed"),
]


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_channels_last_and_transposed_grads(dtype, norm_type):
    scale = 1e-6 if dtype == torch.float16 and float(norm_type) in (1.0, 0.5) else 1.0
    specs = [GradSpec(s.shape, dtype, scale=scale, layout=s.layout, zero_frac=0.1)
             for s in DENSE_LAYOUTS] + [GradSpec((C + 1,), dtype, scale=scale)]
    grads = grads_of(build(specs, 0))
    assert not grads[0].is_contiguous() and not grads[2].is_contiguous()
    for g in grads:
        assert native_supported(g), "dense grads in any order are taken natively"
    pg, pt, gf, th = _clip_both(specs, 0, 0.5, norm_type)
    assert_norm_matches(gf, th, grads, norm_type)
    pr = build(specs, 0)
    tnu.clip_grads_with_norm_(pr, 0.5, gf)
    assert_grads_identical(pg, pr)
    if float(norm_type) != 0:
        assert_grads_close_to_torch(pg, pt, gf, th)
    # As the same values laid out contiguously: bitwise for the order-free norms, else as
    # close as two summation orders allow.
    contiguous = [GradSpec(s.shape, dtype, scale=scale, zero_frac=s.zero_frac) for s in specs]
    pc = build(contiguous, 0)
    total_c = gradfast.clip_grad_norm_(pc, 0.5, norm_type)
    if float(norm_type) in (INF, -INF, 0.0):
        assert_tensors_identical(total_c, gf)
        for a, b in zip(pg, pc):
            assert_tensors_identical(a.grad.contiguous(), b.grad)
    else:
        assert_norm_matches(gf, total_c, grads, norm_type)
    for a, b in zip(pg, build(specs, 0)):
        assert a.grad.stride() == b.grad.stride(), "memory order kept"


def test_dense_view_with_storage_offset():
    # A contiguous slice in the middle of a bigger buffer: native, and nothing outside it
    # may be touched.
    for dtype in FLOAT_DTYPES:
        base_g, base_t = (torch.randn(3 * C + 10, generator=torch.Generator().manual_seed(1))
                          .to(dtype) for _ in range(2))
        pg = torch.nn.Parameter(torch.zeros(C + 3, dtype=dtype))
        pt = torch.nn.Parameter(torch.zeros(C + 3, dtype=dtype))
        pg.grad, pt.grad = base_g[C - 5:2 * C - 2], base_t[C - 5:2 * C - 2]
        assert native_supported(pg.grad)
        original = base_t.clone()
        gf = gradfast.clip_grad_norm_([pg], 0.1)
        th = tnu.clip_grad_norm_([pt], 0.1)
        assert_norm_matches(gf, th, [original[C - 5:2 * C - 2]], 2.0)
        assert_grads_close_to_torch([pg], [pt], gf, th)
        gradfast.clip_grad_value_([pg], 1e-3)
        tnu.clip_grad_value_([pt], 1e-3)
        assert_grads_close_to_torch([pg], [pt], gf, th)
        assert_tensors_identical(base_g[:C - 5], original[:C - 5])
        assert_tensors_identical(base_g[2 * C - 2:], original[2 * C - 2:])


def test_size_one_dims_with_odd_strides():
    # Size-1 dimensions may carry any stride; such tensors are still dense.
    g = torch.randn(4, 1, 6)
    odd = torch.as_strided(g, (4, 1, 6), (6, 1000, 1))
    p, q = torch.nn.Parameter(torch.zeros(4, 1, 6)), torch.nn.Parameter(torch.zeros(4, 1, 6))
    p.grad, q.grad = odd.clone().as_strided((4, 1, 6), (6, 1000, 1)), odd.clone()
    assert native_supported(p.grad)
    gf = gradfast.clip_grad_norm_([p], 0.1)
    th = tnu.clip_grad_norm_([q], 0.1)
    assert_norm_matches(gf, th, [q.grad], 2.0)
    torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)


# --------------------------------------------------------------- torch's own path: views


NON_DENSE = [
    GradSpec((2 * C + 3,), layout="strided"),
    GradSpec((5, 7), layout="strided"),
    GradSpec((3, 4, 9), layout="strided"),
]


@pytest.mark.parametrize("norm_type", NONZERO_NORMS + [-1.0, -0.5], ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_non_dense_grads_identical_to_torch(dtype, norm_type):
    specs = [GradSpec(s.shape, dtype, layout=s.layout) for s in NON_DENSE]
    specs += [GradSpec((C + 1,), dtype), GradSpec((), dtype)]  # dense ones in the same call
    grads = grads_of(build(specs, 3))
    assert not native_supported(grads[0])
    pg, pt, gf, th = _clip_both(specs, 3, 0.5, norm_type)
    assert_tensors_identical(gf, th, "total")
    assert_grads_identical(pg, pt)
    for a, b in zip(pg, build(specs, 3)):
        assert a.grad.stride() == b.grad.stride()
    # get_total_norm and clip_grad_value_ as well
    assert_tensors_identical(gradfast.get_total_norm(grads_of(pg), norm_type),
                             tnu.get_total_norm(grads_of(pt), norm_type))
    gradfast.clip_grad_value_(pg, 0.05)
    tnu.clip_grad_value_(pt, 0.05)
    assert_grads_identical(pg, pt)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_non_dense_grads_keep_documented_l0(dtype):
    # norm_type=0 counts nonzero elements whatever the memory layout of the grads.
    specs = [GradSpec((3 * C,), dtype, layout="strided", zero_frac=0.999),
             GradSpec((6, 5), dtype, zero_frac=0.5)]
    dense = [GradSpec(s.shape, dtype, zero_frac=s.zero_frac) for s in specs]
    grads = grads_of(build(specs, 1))
    assert not native_supported(grads[0])
    gf = gradfast.get_total_norm(grads, 0)
    assert_tensors_identical(gf, gradfast.get_total_norm(grads_of(build(dense, 1)), 0))
    assert gf.item() == sum(int(torch.count_nonzero(g)) for g in grads)
    pg = build(specs, 1)
    assert_tensors_identical(gradfast.clip_grad_norm_(pg, 3.0, 0), gf)
    pr = build(specs, 1)
    tnu.clip_grads_with_norm_(pr, 3.0, gf)
    assert_grads_identical(pg, pr)


def test_expanded_grads():
    # Overlapping memory (stride 0): norms as torch; in-place scaling fails as in torch.
    specs = [GradSpec((4, 6), layout="expanded"), GradSpec((5,))]
    grads_g, grads_t = grads_of(build(specs, 0)), grads_of(build(specs, 0))
    assert not native_supported(grads_g[0])
    for norm_type in NORM_TYPES:
        if float(norm_type) == 0:
            continue
        assert_tensors_identical(gradfast.get_total_norm(grads_g, norm_type),
                                 tnu.get_total_norm(grads_t, norm_type))
    pg, pt = build(specs, 0), build(specs, 0)
    assert_same_error(lambda: gradfast.clip_grad_norm_(pg, 1e-3),
                      lambda: tnu.clip_grad_norm_(pt, 1e-3))
    assert_same_error(lambda: gradfast.clip_grad_value_(pg, 1e-3),
                      lambda: tnu.clip_grad_value_(pt, 1e-3))


# ----------------------------------------------------------------------- sparse grads


@pytest.mark.parametrize("norm_type", NORM_TYPES + (-1.0,), ids=repr)
def test_sparse_grads_norm_raise_like_torch(norm_type):
    specs = [GradSpec((20, 30), layout="sparse", zero_frac=0.9), GradSpec((7,))]
    pg, pt = build(specs, 0), build(specs, 0)
    assert pg[0].grad.layout == torch.sparse_coo and not native_supported(pg[0].grad)
    assert_same_error(lambda: gradfast.clip_grad_norm_(pg, 0.1, norm_type),
                      lambda: tnu.clip_grad_norm_(pt, 0.1, norm_type))
    assert_same_error(lambda: gradfast.get_total_norm(grads_of(pg), norm_type),
                      lambda: tnu.get_total_norm(grads_of(pt), norm_type))
    assert_grads_identical(pg, build(specs, 0), "grads after the error")


def test_sparse_grads_clip_value_raise_like_torch():
    specs = [GradSpec((7,)), GradSpec((20, 30), layout="sparse", zero_frac=0.9)]
    pg, pt = build(specs, 0), build(specs, 0)
    assert_same_error(lambda: gradfast.clip_grad_value_(pg, 0.1),
                      lambda: tnu.clip_grad_value_(pt, 0.1))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_sparse_grads_clip_with_given_norm(dtype):
    specs = [GradSpec((20, 30), dtype, layout="sparse", zero_frac=0.8),
             GradSpec((C + 2,), dtype), GradSpec((4, 4), dtype, layout="sparse")]
    for total in (torch.tensor(3.0), torch.tensor(0.25, dtype=torch.float64)):
        pg, pt = build(specs, 1), build(specs, 1)
        err = assert_same_error if _raises(lambda: tnu.clip_grads_with_norm_(
            build(specs, 1), 1.0, total)) else None
        if err:
            err(lambda: gradfast.clip_grads_with_norm_(pg, 1.0, total),
                lambda: tnu.clip_grads_with_norm_(pt, 1.0, total))
        else:
            gradfast.clip_grads_with_norm_(pg, 1.0, total)
            tnu.clip_grads_with_norm_(pt, 1.0, total)
            assert_grads_identical(pg, pt)


def _raises(fn):
    try:
        fn()
    except Exception:  # noqa: BLE001
        return True
    return False


# -------------------------------------------------------------------- tensor subclasses


class _Sub(torch.Tensor):
    """A plain subclass: torch keeps it through every op (default __torch_function__)."""


@pytest.mark.parametrize("norm_type", NONZERO_NORMS + [-2.0], ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=dtype_id)
def test_subclass_grads_identical_to_torch(dtype, norm_type):
    specs = [GradSpec((C + 9,), dtype), GradSpec((3, 5), dtype)]

    def make():
        params = build(specs, 2)
        params[0].grad = params[0].grad.as_subclass(_Sub)
        return params

    pg, pt = make(), make()
    assert type(pg[0].grad) is _Sub and not native_supported(pg[0].grad)
    gf = gradfast.clip_grad_norm_(pg, 0.2, norm_type)
    th = tnu.clip_grad_norm_(pt, 0.2, norm_type)
    assert_tensors_identical(gf, th, "total (type included)")
    assert_grads_identical(pg, pt)
    assert_tensors_identical(gradfast.get_total_norm(grads_of(pg), norm_type),
                             tnu.get_total_norm(grads_of(pt), norm_type))
    pg, pt = make(), make()
    gradfast.clip_grad_value_(pg, 0.3)
    tnu.clip_grad_value_(pt, 0.3)
    assert_grads_identical(pg, pt)


def test_subclass_grads_keep_documented_l0():
    specs = [GradSpec((C + 9,), zero_frac=0.999), GradSpec((3, 5), zero_frac=0.5)]
    grads = grads_of(build(specs, 2))
    expected = gradfast.get_total_norm(grads, 0)
    sub = [grads[0].as_subclass(_Sub), grads[1]]
    total = gradfast.get_total_norm(sub, 0)
    assert total.item() == expected.item() == sum(int(torch.count_nonzero(g)) for g in grads)


def test_parameter_subclass_is_native():
    # A torch.nn.Parameter used as the gradient itself is a plain tensor to gradfast.
    g = torch.nn.Parameter(torch.randn(C + 1), requires_grad=False)
    assert native_supported(g)
    gf = gradfast.get_total_norm([g])
    th = tnu.get_total_norm([g.detach().clone()])
    assert_norm_matches(gf, th, [g], 2.0)


# ------------------------------------------------------------------------------ aliasing


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_parameter_listed_twice(dtype):
    # torch counts a repeated parameter in the norm once per occurrence and scales its
    # grad once per occurrence. With several threads the scaling must not race (a racy
    # kernel got about one call in four wrong here, hence the repetitions).
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for n_chunks, rep in [(1, r) for r in range(12 if threads > 1 else 1)] + [(3, 0)]:
                specs = [GradSpec((n_chunks * C,), dtype), GradSpec((11,), dtype)]
                pg, pt = build(specs, 4 + rep), build(specs, 4 + rep)
                lg = [pg[0]] * 15 + [pg[1], pg[0]]
                lt = [pt[0]] * 15 + [pt[1], pt[0]]
                gf = gradfast.clip_grad_norm_(lg, 1.0)
                th = tnu.clip_grad_norm_(lt, 1.0)
                orig = build(specs, 4 + rep)
                assert_norm_matches(gf, th, [orig[0].grad] * 16 + [orig[1].grad], 2.0)
                pr = build(specs, 4 + rep)
                tnu.clip_grads_with_norm_([pr[0]] * 15 + [pr[1], pr[0]], 1.0, gf)
                assert_grads_identical(pg, pr, f"threads={threads}")
                # clamping twice is clamping once
                pg, pt = build(specs, 4 + rep), build(specs, 4 + rep)
                gradfast.clip_grad_value_([pg[0]] * 4 + [pg[1]], 0.5)
                tnu.clip_grad_value_([pt[0]] * 4 + [pt[1]], 0.5)
                assert_grads_identical(pg, pt)
    finally:
        torch.set_num_threads(old)


def test_grads_sharing_storage_without_overlap():
    # Two grads that are disjoint slices of one flat buffer (as flattened-parameter
    # schemes make them) are independent tensors.
    for dtype in FLOAT_DTYPES:
        flat_g = torch.randn(3 * C, generator=torch.Generator().manual_seed(0)).to(dtype)
        flat_t = flat_g.clone()
        pg = [torch.nn.Parameter(torch.zeros(C, dtype=dtype)),
              torch.nn.Parameter(torch.zeros(2 * C, dtype=dtype))]
        pt = [torch.nn.Parameter(torch.zeros(C, dtype=dtype)),
              torch.nn.Parameter(torch.zeros(2 * C, dtype=dtype))]
        pg[0].grad, pg[1].grad = flat_g[:C], flat_g[C:]
        pt[0].grad, pt[1].grad = flat_t[:C], flat_t[C:]
        gf = gradfast.clip_grad_norm_(pg, 0.5)
        th = tnu.clip_grad_norm_(pt, 0.5)
        assert_norm_matches(gf, th, [flat_t], 2.0)
        assert_grads_close_to_torch(pg, pt, gf, th)


# ------------------------------------------------------------------------ autograd state


def test_create_graph_grads_report_inplace_modification():
    # Grads built with create_graph=True and saved for a second backward: torch's in-place
    # clipping makes that backward fail loudly; gradfast's must as well.
    results = []
    for mod in (gradfast, tnu):
        x = torch.nn.Parameter(torch.arange(1.0, 6.0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # create_graph's reference-cycle warning
            (x ** 3).sum().backward(create_graph=True)
        y = (x.grad * x.grad).sum()
        mod.clip_grad_norm_([x], 0.1)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.backward()
        results.append(x.grad.detach().clone())
        x.grad = None  # break the reference cycle create_graph makes
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=0)


def test_inference_mode():
    specs = [GradSpec((C + 3,)), GradSpec((4,), torch.float16)]
    with torch.inference_mode():
        pg, pt = build(specs, 0), build(specs, 0)
        gf = gradfast.clip_grad_norm_(pg, 0.1)
        th = tnu.clip_grad_norm_(pt, 0.1)
        assert_norm_matches(gf, th, grads_of(build(specs, 0)), 2.0)
        assert_grads_close_to_torch(pg, pt, gf, th)
    # Inference tensors may not be updated in place outside inference mode.
    assert_same_error(lambda: gradfast.clip_grad_norm_(pg, 0.01),
                      lambda: tnu.clip_grad_norm_(pt, 0.01))
    assert_same_error(lambda: gradfast.clip_grad_value_(pg, 0.01),
                      lambda: tnu.clip_grad_value_(pt, 0.01))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int8, torch.uint8,
                                   torch.bool], ids=dtype_id)
def test_non_float_grads(dtype):
    def make():
        t = torch.zeros(6, dtype=dtype)
        t.grad = torch.arange(6).to(dtype)
        return [t]

    for norm_type in (2.0, 1.0, INF, 0.0):
        pg, pt = make(), make()
        assert_same_error(lambda: gradfast.clip_grad_norm_(pg, 1.0, norm_type),
                          lambda: tnu.clip_grad_norm_(pt, 1.0, norm_type))
        assert_same_error(lambda: gradfast.get_total_norm(grads_of(pg), norm_type),
                          lambda: tnu.get_total_norm(grads_of(pt), norm_type))
        assert_grads_identical(pg, make())
    pg, pt = make(), make()
    g_err, t_err = _outcome(lambda: gradfast.clip_grad_value_(pg, 2)), _outcome(
        lambda: tnu.clip_grad_value_(pt, 2))
    assert g_err == t_err
    assert_grads_identical(pg, pt)


def test_int_grads_mixed_with_float_grads():
    def make():
        a = torch.nn.Parameter(torch.zeros(5))
        a.grad = torch.randn(5, generator=torch.Generator().manual_seed(0))
        b = torch.zeros(4, dtype=torch.int64)
        b.grad = torch.arange(4)
        return [a, b]

    pg, pt = make(), make()
    assert_same_error(lambda: gradfast.clip_grad_norm_(pg, 0.1),
                      lambda: tnu.clip_grad_norm_(pt, 0.1))
    assert_grads_identical(pg, pt)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=dtype_id)
def test_complex_grads_identical_to_torch(dtype):
    def make():
        p = torch.nn.Parameter(torch.zeros(7, dtype=dtype))
        p.grad = torch.randn(7, dtype=dtype, generator=torch.Generator().manual_seed(1))
        q = torch.nn.Parameter(torch.zeros(3))
        q.grad = torch.randn(3, generator=torch.Generator().manual_seed(2))
        return [p, q]

    for norm_type in (2.0, 1.0, INF, 3.0):
        pg, pt = make(), make()
        assert_tensors_identical(gradfast.clip_grad_norm_(pg, 0.1, norm_type),
                                 tnu.clip_grad_norm_(pt, 0.1, norm_type))
        assert_grads_identical(pg, pt)


def _outcome(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return type(e), str(e)
    return None


@pytest.mark.parametrize("case", ["none", "ints", "max_norm_str", "norm_type_none",
                                  "clip_value_str", "tensor_list_of_lists"])
def test_bad_arguments_like_torch(case):
    specs = [GradSpec((5,))]
    pg, pt = build(specs, 0), build(specs, 0)
    calls = {
        "none": (lambda m, p: m.clip_grad_norm_(None, 1.0)),
        "ints": (lambda m, p: m.clip_grad_norm_([1, 2], 1.0)),
        "max_norm_str": (lambda m, p: m.clip_grad_norm_(p, "big")),
        "norm_type_none": (lambda m, p: m.clip_grad_norm_(p, 1.0, None)),
        "clip_value_str": (lambda m, p: m.clip_grad_value_(p, "x")),
        "tensor_list_of_lists": (lambda m, p: m.get_total_norm([[p[0].grad]])),
    }
    fn = calls[case]
    assert _outcome(lambda: fn(gradfast, pg)) == _outcome(lambda: fn(tnu, pt))
    assert_grads_identical(pg, pt)


# ------------------------------------------------------------------------- torch.compile


def test_torch_compile_traces_custom_ops_on_cpu():
    # The aot_eager backend runs dynamo + AOTAutograd over the custom ops without code
    # generation: cheap enough for the CPU suite.
    torch._dynamo.reset()
    specs = [GradSpec((C + 5,)), GradSpec((3, 4)), GradSpec((7,), torch.float64)]

    def step(params, max_norm):
        return gradfast.clip_grad_norm_(params, max_norm)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=False)
    for seed in range(2):
        pg, pt = build(specs, seed), build(specs, seed)
        gf = compiled(pg, 0.3)
        th = tnu.clip_grad_norm_(pt, 0.3)
        assert_norm_matches(gf, th, grads_of(build(specs, seed)), 2.0)
        assert_grads_close_to_torch(pg, pt, gf, th)
    torch._dynamo.reset()


def test_nan_norm_type_and_non_finite_max_norm():
    specs = [GradSpec((9,)), GradSpec((C + 1,))]
    for max_norm in (math.nan, -math.inf):
        pg, pt = build(specs, 0), build(specs, 0)
        gf = gradfast.clip_grad_norm_(pg, max_norm)
        th = tnu.clip_grad_norm_(pt, max_norm)
        assert_norm_matches(gf, th, grads_of(build(specs, 0)), 2.0)
        pr = build(specs, 0)
        tnu.clip_grads_with_norm_(pr, max_norm, gf)
        assert_grads_identical(pg, pr)


@pytest.mark.slow
def test_cpu_tensor_above_2_31_elements():
    """64-bit indexing in the CPU kernels: the elements beyond 2^31 are read and written
    (fp16, 4.3 GB; the values are known exactly, so no torch copy of it is needed)."""
    n = (1 << 31) + 4099
    g = torch.ones(n, dtype=torch.float16)
    g[-1] = 3.0  # beyond 2^31: only 64-bit indexing reaches it
    g[(1 << 31) + 7] = -2.0
    expected = {2.0: math.sqrt(n - 2 + 9 + 4), math.inf: 3.0, -math.inf: 1.0}
    for norm_type, value in expected.items():
        gf = gradfast.get_total_norm([g], norm_type)
        assert gf.dtype == torch.float16
        assert abs(gf.double().item() - value) <= 2 * torch.finfo(torch.float16).eps * value
    # A zero-stride parameter of the same shape carries the grad without another copy.
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float16).expand(n))
    p.grad = g
    total = gradfast.clip_grad_norm_(p, 1.5, math.inf)
    coef = torch.clamp(1.5 / (total + 1e-6), max=1.0)
    for i, v in ((-1, 3.0), (0, 1.0), ((1 << 31) + 7, -2.0)):
        assert g[i].item() == (torch.tensor(v, dtype=torch.float16) * coef).item()
    gradfast.clip_grad_value_(p, 0.25)
    assert g[-1].item() == 0.25 and g[(1 << 31) + 7].item() == -0.25
