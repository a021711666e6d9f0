"""The clip family on CUDA: parity with torch on the GPU, mixed devices, CUDA graphs,
no host synchronisation, device hygiene and torch.compile.

Every test is marked `cuda` and skipped where no GPU and CUDA kernels are available
(tests/conftest.py). The reference is torch.nn.utils run on the same device with an
identical copy of the inputs, and an fp64 norm of the same values for accuracy.
"""
import math

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

pytestmark = pytest.mark.cuda

DEV = "cuda"
ZOO_SHAPES = [(), (0,), (1,), (7,), (3, 0, 4), (5, 13), (C - 1,), (C,), (C + 1,),
              (2, C // 2 + 3), (3, C + 7), (1 << 20,), ((1 << 20) + 3,)]


def _scale_for(dtype, p):
    if dtype == torch.float16 and float(p) == 0.5:
        return 1e-7
    if dtype == torch.float16 and float(p) == 1.0:
        return 1e-4
    return 1.0


def _specs(dtype, norm_type, zero_frac=0.1):
    p = float(norm_type)
    shapes = [s for s in ZOO_SHAPES if math.prod(s) > 0] if p in (INF, -INF) else ZOO_SHAPES
    return [GradSpec(s, dtype, scale=_scale_for(dtype, p),
                     zero_frac=zero_frac if i % 2 and p != -INF else 0.0)
            for i, s in enumerate(shapes)]


def _check_clip(specs, seed, max_norm, norm_type=2.0, device=DEV, devices=None,
                exact_scaling=True):
    pg = build(specs, seed, device, devices)
    pt = build(specs, seed, device, devices)
    gf = gradfast.clip_grad_norm_(pg, max_norm, norm_type)
    th = tnu.clip_grad_norm_(pt, max_norm, norm_type)
    originals = grads_of(build(specs, seed, device, devices))
    assert_norm_matches(gf, th, originals, norm_type)
    pr = build(specs, seed, device, devices)
    tnu.clip_grads_with_norm_(pr, max_norm, gf)
    if exact_scaling:
        assert_grads_identical(pg, pr, "scaling by gradfast's total, as torch does it")
    else:
        assert_scaled_like_torch(pg, pr, gf.dtype)
    if float(norm_type) != 0:
        assert_grads_close_to_torch(pg, pt, gf, th)
    return gf, th


def assert_scaled_like_torch(pg, pr, coef_dtype):
    """Grads scaled by one coefficient, gradfast's (pg) against torch's (pr).

    Bitwise where the coefficient has the grad's dtype. Otherwise within two ulps of the
    grad dtype: torch's CUDA multiply by a 0-d CUDA tensor of another dtype may round the
    coefficient to the grad dtype first (its CPU path does not), so the exact rounding
    there is torch's implementation detail rather than API.
    """
    for i, (a, b) in enumerate(zip(pg, pr)):
        if a.grad is None:
            assert b.grad is None
        elif a.grad.dtype == coef_dtype:
            assert_tensors_identical(a.grad, b.grad, f"grad[{i}]")
        else:
            fi = torch.finfo(a.grad.dtype)
            torch.testing.assert_close(a.grad, b.grad, rtol=2 * fi.eps, atol=fi.tiny,
                                       equal_nan=True, msg=lambda m: f"grad[{i}]: {m}")


def _max_norm(specs, seed, norm_type, factor, devices=None):
    total = gradfast.get_total_norm(grads_of(build(specs, seed, DEV, devices)), norm_type)
    value = total.double().item()
    return value * factor if math.isfinite(value) and value > 0 else factor


# ------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_cuda_total_norm_parity(dtype, norm_type):
    specs = _specs(dtype, norm_type)
    grads_g = grads_of(build(specs, 1, DEV))
    grads_t = grads_of(build(specs, 1, DEV))
    gf = gradfast.get_total_norm(grads_g, norm_type)
    th = tnu.get_total_norm(grads_t, norm_type)
    assert gf.device == th.device and gf.device.type == "cuda"
    assert_norm_matches(gf, th, grads_t, norm_type)


@pytest.mark.parametrize("factor", [0.25, 4.0], ids=["clipping", "not-clipping"])
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_cuda_clip_parity(dtype, norm_type, factor):
    specs = _specs(dtype, norm_type)
    _check_clip(specs, 2, _max_norm(specs, 2, norm_type, factor), norm_type)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, INF, -INF, 0.0, 3.5], ids=repr)
def test_cuda_mixed_dtypes(norm_type):
    specs = []
    for i, dtype in enumerate([torch.float16, torch.float32, torch.bfloat16, torch.float64] * 2):
        shape = [(C + 5,), (3, 7), (), (2, C // 2)][i % 4]
        specs.append(GradSpec(shape, dtype, scale=_scale_for(dtype, norm_type),
                              zero_frac=0.25 if norm_type != -INF else 0.0))
    for factor in (0.3, 3.0):
        gf, _ = _check_clip(specs, 3, _max_norm(specs, 3, norm_type, factor), norm_type,
                            exact_scaling=False)
        assert gf.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=dtype_id)
def test_cuda_many_small_tensors(dtype):
    # Thousands of tensors in one launch, a few multi-chunk ones among them.
    specs = [GradSpec((1 + (i * 37) % 300,), dtype, scale=1e-2) for i in range(5000)]
    specs[10] = GradSpec((3 * C + 1,), dtype, scale=1e-2)
    specs[2500] = GradSpec((0,), dtype)
    specs[4999] = GradSpec((), dtype)
    for norm_type in (2.0, 1.0, 3.5):
        _check_clip(specs, 4, _max_norm(specs, 4, norm_type, 0.5), norm_type)
    nonempty = [s for s in specs if math.prod(s.shape) > 0]
    _check_clip(nonempty, 4, _max_norm(nonempty, 4, INF, 0.5), INF)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=dtype_id)
def test_cuda_tensor_above_2_31_elements(dtype):
    n = (1 << 31) + 4099
    need = n * torch.finfo(dtype).bits // 8 * 2 + (2 << 30)
    free, _ = torch.cuda.mem_get_info()
    if free < max(need, 20e9):
        pytest.skip(f"needs {max(need, 20e9) / 1e9:.0f} GB of free GPU memory")
    g = torch.ones(n, dtype=dtype, device=DEV)
    g[-1] = 3.0  # beyond 2^31: only 64-bit indexing reaches it
    g[(1 << 31) + 7] = -2.0
    expected = {2.0: math.sqrt(n - 2 + 9 + 4), 1.0: float(n - 2 + 3 + 2), INF: 3.0,
                -INF: 1.0}
    rel = 2 * torch.finfo(dtype).eps if dtype == torch.float16 else 1e-5
    for norm_type, value in expected.items():
        if dtype == torch.float16 and norm_type == 1.0:
            continue  # the L1 norm overflows fp16
        gf = gradfast.get_total_norm([g], norm_type)
        assert gf.dtype == dtype and gf.device == g.device
        assert abs(gf.double().item() - value) <= rel * value, (norm_type, gf.item(), value)
        try:
            th = tnu.get_total_norm([g], norm_type).double().item()
        except RuntimeError:  # torch itself may not take it; the exact value is known
            continue
        assert abs(gf.double().item() - th) <= rel * value, (norm_type, gf.item(), th)
    # A zero-stride parameter of the same shape carries the grad without another copy.
    p = torch.nn.Parameter(torch.zeros(1, dtype=dtype, device=DEV).expand(n))
    p.grad = g
    max_norm = expected[INF] / 2
    total = gradfast.clip_grad_norm_(p, max_norm, INF)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    assert g[-1].item() == (torch.tensor(3.0, dtype=dtype, device=DEV) * coef).to(dtype).item()
    assert g[0].item() == (torch.tensor(1.0, dtype=dtype, device=DEV) * coef).to(dtype).item()
    assert g[(1 << 31) + 7].item() == (torch.tensor(-2.0, dtype=dtype, device=DEV)
                                       * coef).to(dtype).item()
    gradfast.clip_grad_value_(p, 0.25)
    assert g[-1].item() == 0.25 and g[(1 << 31) + 7].item() == -0.25
    del p, g
    torch.cuda.empty_cache()


# -------------------------------------------------------------- non-finite and errors


@pytest.mark.parametrize("kind", ["nan", "inf", "inf+nan"])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, INF, -INF, 3.5, 0.0], ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_cuda_nonfinite(dtype, norm_type, kind):
    values = {"nan": (math.nan,), "inf": (math.inf,), "inf+nan": (math.inf, math.nan)}[kind]
    nf = tuple((v, C + 3 + 17 * i) for i, v in enumerate(values))
    specs = [GradSpec((2 * C + 10,), dtype, nonfinite=nf), GradSpec((9,), dtype),
             GradSpec((), dtype)]
    pg, pt = build(specs, 1, DEV), build(specs, 1, DEV)
    gf = gradfast.clip_grad_norm_(pg, 1.0, norm_type)
    th = tnu.clip_grad_norm_(pt, 1.0, norm_type)
    assert_norm_matches(gf, th, grads_of(build(specs, 1, DEV)), norm_type)
    if float(norm_type) != 0:
        for a, b in zip(pg, pt):
            assert_tensors_identical(a.grad.isnan(), b.grad.isnan(), "NaN pattern")
            assert_tensors_identical(a.grad.isinf(), b.grad.isinf(), "inf pattern")
    if float(norm_type) in (2.0, 1.0, INF, 3.5):
        pg, pt = build(specs, 1, DEV), build(specs, 1, DEV)
        assert_same_error(
            lambda: gradfast.clip_grad_norm_(pg, 1.0, norm_type, error_if_nonfinite=True),
            lambda: tnu.clip_grad_norm_(pt, 1.0, norm_type, error_if_nonfinite=True))
        assert_grads_identical(pg, build(specs, 1, DEV), "grads after the error")


@pytest.mark.parametrize("norm_type", [INF, -INF], ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_cuda_empty_tensor_infinity_norm_raises_like_torch(dtype, norm_type):
    specs = [GradSpec((4,), dtype), GradSpec((0,), dtype)]
    pg, pt = build(specs, 0, DEV), build(specs, 0, DEV)
    assert_same_error(lambda: gradfast.clip_grad_norm_(pg, 1.0, norm_type),
                      lambda: tnu.clip_grad_norm_(pt, 1.0, norm_type))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_cuda_empty_tensors_other_norms(dtype):
    specs = [GradSpec((0,), dtype), GradSpec((2, 0), dtype)]
    for norm_type in (2.0, 1.0, 0.0, 3.5):
        pg, pt = build(specs, 0, DEV), build(specs, 0, DEV)
        assert_tensors_identical(gradfast.clip_grad_norm_(pg, 1.0, norm_type),
                                 tnu.clip_grad_norm_(pt, 1.0, norm_type))


# ------------------------------------------------------------------ the other functions


@pytest.mark.parametrize("clip_value", [0.5, 0.1, 0, 3, INF, -0.25, math.nan], ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_cuda_clip_grad_value(dtype, clip_value):
    specs = [GradSpec((2 * C + 3,), dtype, scale=2.0,
                      nonfinite=((math.nan, 3), (math.inf, C + 1), (-math.inf, 2 * C))),
             GradSpec((), dtype, scale=5.0), GradSpec((0,), dtype), GradSpec((3, 5), dtype)]
    pg, pt = build(specs, 7, DEV), build(specs, 7, DEV)
    gradfast.clip_grad_value_(pg, clip_value)
    tnu.clip_grad_value_(pt, clip_value)
    assert_grads_identical(pg, pt, f"clip_value {clip_value}")


@pytest.mark.parametrize("total_device", ["cuda", "cpu"])
@pytest.mark.parametrize("total_dtype", FLOAT_DTYPES, ids=dtype_id)
def test_cuda_clip_grads_with_norm(total_dtype, total_device):
    for dtype in FLOAT_DTYPES:
        specs = [GradSpec((C + 3,), dtype), GradSpec((5,), dtype), GradSpec((), dtype)]
        for value in (1e-8, 0.3, 1e4, math.inf, math.nan):
            total = torch.tensor(value, dtype=total_dtype, device=total_device)
            pg, pt = build(specs, 4, DEV), build(specs, 4, DEV)
            gradfast.clip_grads_with_norm_(pg, 1.0, total)
            tnu.clip_grads_with_norm_(pt, 1.0, total)
            assert_scaled_like_torch(pg, pt, total_dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_cuda_dense_layouts_and_views(dtype):
    specs = [GradSpec((2, 40, 30, 31), dtype, layout="channels_last"),
             GradSpec((61, 1111), dtype, layout="transposed"),
             GradSpec((C + 1,), dtype)]
    _check_clip(specs, 5, 0.5)
    strided = [GradSpec((2 * C + 3,), dtype, layout="strided"), GradSpec((7,), dtype)]
    pg, pt = build(strided, 5, DEV), build(strided, 5, DEV)
    assert not pg[0].grad.is_contiguous()
    assert_tensors_identical(gradfast.clip_grad_norm_(pg, 0.5), tnu.clip_grad_norm_(pt, 0.5))
    assert_grads_identical(pg, pt)


def test_cuda_parameter_listed_twice():
    specs = [GradSpec((3 * C,)), GradSpec((11,))]
    pg, pt = build(specs, 4, DEV), build(specs, 4, DEV)
    gf = gradfast.clip_grad_norm_([pg[0]] * 8 + [pg[1], pg[0]], 1.0)
    th = tnu.clip_grad_norm_([pt[0]] * 8 + [pt[1], pt[0]], 1.0)
    orig = build(specs, 4, DEV)
    assert_norm_matches(gf, th, [orig[0].grad] * 9 + [orig[1].grad], 2.0)
    pr = build(specs, 4, DEV)
    tnu.clip_grads_with_norm_([pr[0]] * 8 + [pr[1], pr[0]], 1.0, gf)
    assert_grads_identical(pg, pr)


def test_cuda_repeated_calls_bitwise_identical():
    # No floating-point atomics: the same inputs give the same bits every time.
    for dtype in FLOAT_DTYPES:
        grads = grads_of(build([GradSpec((7 * C + 5,), dtype, scale=1e-3),
                                GradSpec((300,), dtype)] * 20, 6, DEV))
        for norm_type in (2.0, 1.0, 3.5):
            first = gradfast.get_total_norm(grads, norm_type)
            for _ in range(5):
                assert torch.equal(gradfast.get_total_norm(grads, norm_type), first)


def test_cuda_side_stream():
    specs = [GradSpec((3 * C + 1,)), GradSpec((77,), torch.bfloat16)]
    pg, pt = build(specs, 8, DEV), build(specs, 8, DEV)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        gf = gradfast.clip_grad_norm_(pg, 0.2)
        gradfast.clip_grad_value_(pg, 1e-3)
    torch.cuda.current_stream().wait_stream(side)
    th = tnu.clip_grad_norm_(pt, 0.2)
    tnu.clip_grad_value_(pt, 1e-3)
    assert_norm_matches(gf, th, grads_of(build(specs, 8, DEV)), 2.0)
    assert_grads_close_to_torch(pg, pt, gf, th)


# ---------------------------------------------------------------------- mixed devices


@pytest.mark.parametrize("first", ["cpu", "cuda"])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, INF, 0.0, 3.5], ids=repr)
def test_cuda_mixed_devices(first, norm_type):
    other = "cuda" if first == "cpu" else "cpu"
    specs = [GradSpec((C + 9,)), GradSpec((40,)), GradSpec((2 * C,), torch.float16,
                                                          scale=_scale_for(torch.float16,
                                                                           norm_type)),
             GradSpec((5, 5), torch.float64), GradSpec(())]
    devices = [first, other, other, first, other]
    max_norm = _max_norm(specs, 9, norm_type, 0.4, devices)
    gf, th = _check_clip(specs, 9, max_norm, norm_type, devices=devices, exact_scaling=False)
    assert gf.device.type == first == th.device.type
    assert gf.dtype == torch.float64
    grads = grads_of(build(specs, 9, devices=devices))
    total = gradfast.get_total_norm(grads, norm_type)
    assert total.device.type == first
    # clip_grad_value_ over both devices
    pg, pt = build(specs, 9, devices=devices), build(specs, 9, devices=devices)
    gradfast.clip_grad_value_(pg, 0.3)
    tnu.clip_grad_value_(pt, 0.3)
    assert_grads_identical(pg, pt)


# ------------------------------------------------------------------------- CUDA graphs


def _capture(fn, warmup=3):
    """Warm fn up on a side stream, then capture it (PyTorch's documented recipe)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


@pytest.mark.parametrize("dtypes", [(torch.float32,), (torch.bfloat16,), (torch.float16,),
                                    (torch.float32, torch.float16, torch.float64)],
                         ids=lambda ds: "+".join(map(dtype_id, ds)))
@pytest.mark.parametrize("norm_type", [2.0, INF, 1.0], ids=repr)
def test_cuda_graph_capture_and_replay(dtypes, norm_type):
    specs = [GradSpec((2 * C + 3,), dtypes[i % len(dtypes)], scale=1e-3) for i in range(3)]
    specs += [GradSpec((17,), dtypes[-1]), GradSpec((), dtypes[0])]
    static = build(specs, 0, DEV)
    max_norm = 0.05
    graph, total = _capture(lambda: gradfast.clip_grad_norm_(static, max_norm, norm_type))
    for seed in (11, 12, 13):
        # New gradient values in the captured buffers, then replay.
        for p, q in zip(static, build(specs, seed, DEV)):
            p.grad.copy_(q.grad)
        graph.replay()
        torch.cuda.synchronize()
        pt = build(specs, seed, DEV)
        th = tnu.clip_grad_norm_(pt, max_norm, norm_type)
        assert_norm_matches(total, th, grads_of(build(specs, seed, DEV)), norm_type)
        pr = build(specs, seed, DEV)
        tnu.clip_grads_with_norm_(pr, max_norm, total)
        assert_scaled_like_torch(static, pr, total.dtype)
        assert_grads_close_to_torch(static, pt, total, th)
    # Values that need no clipping replay correctly too.
    for p, q in zip(static, build(specs, 20, DEV)):
        p.grad.copy_(q.grad * 1e-6)
    before = [p.grad.clone() for p in static]
    graph.replay()
    torch.cuda.synchronize()
    for p, b in zip(static, before):
        assert torch.equal(p.grad, b)


def test_cuda_graph_capture_clip_value_and_with_norm():
    specs = [GradSpec((C + 3,)), GradSpec((9,), torch.bfloat16)]
    static = build(specs, 0, DEV)
    total_in = torch.tensor(4.0, device=DEV)

    def step():
        gradfast.clip_grads_with_norm_(static, 1.0, total_in)
        gradfast.clip_grad_value_(static, 0.1)
        return gradfast.get_total_norm(grads_of(static))

    graph, total = _capture(step)
    for seed in (1, 2):
        for p, q in zip(static, build(specs, seed, DEV)):
            p.grad.copy_(q.grad)
        total_in.fill_(2.0 + seed)
        graph.replay()
        torch.cuda.synchronize()
        pt = build(specs, seed, DEV)
        tnu.clip_grads_with_norm_(pt, 1.0, torch.tensor(2.0 + seed, device=DEV))
        tnu.clip_grad_value_(pt, 0.1)
        assert_scaled_like_torch(static, pt, torch.float32)
        assert_norm_matches(total, tnu.get_total_norm(grads_of(pt)), grads_of(pt), 2.0)


# ------------------------------------------------------------------------- no host sync


@pytest.mark.parametrize("dtypes", [(torch.float32,), (torch.float16, torch.float32)],
                         ids=lambda ds: "+".join(map(dtype_id, ds)))
def test_cuda_no_host_sync(dtypes):
    specs = [GradSpec((C + 3,), dtypes[i % len(dtypes)]) for i in range(4)]
    params = build(specs, 0, DEV)
    grads = grads_of(params)
    for norm_type in (2.0, INF, 3.5, 0.0):  # warm-up: caches built outside the check
        gradfast.clip_grad_norm_(params, 1.0, norm_type)
    gradfast.clip_grad_value_(params, 1.0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        # The check is live: a synchronising call does raise.
        with pytest.raises(RuntimeError):
            torch.ones(1, device=DEV).item()
        for norm_type in (2.0, INF, 3.5, 0.0):
            total = gradfast.clip_grad_norm_(params, 1.0, norm_type)
        gradfast.get_total_norm(grads, 1.0)
        gradfast.clip_grads_with_norm_(params, 1.0, total)
        gradfast.clip_grad_value_(params, 0.5)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


# -------------------------------------------------------------------------- devices


@pytest.mark.skipif("torch.cuda.device_count() < 2", reason="needs two GPUs")
def test_cuda_current_device_unchanged():
    specs = [GradSpec((C + 1,)), GradSpec((5,), torch.float16)]
    for current, other in ((0, 1), (1, 0)):
        torch.cuda.set_device(current)
        pg = build(specs, 0, f"cuda:{other}")
        pt = build(specs, 0, f"cuda:{other}")
        gf = gradfast.clip_grad_norm_(pg, 0.1)
        gradfast.clip_grad_value_(pg, 0.01)
        gradfast.get_total_norm(grads_of(pg), INF)
        assert torch.cuda.current_device() == current
        assert gf.device == torch.device(f"cuda:{other}")
        th = tnu.clip_grad_norm_(pt, 0.1)
        tnu.clip_grad_value_(pt, 0.01)
        assert_norm_matches(gf, th, grads_of(build(specs, 0, f"cuda:{other}")), 2.0)
        assert_grads_close_to_torch(pg, pt, gf, th)
        torch.cuda.synchronize(other)
    torch.cuda.set_device(0)


def test_cuda_current_device_unchanged_single_gpu():
    # With one GPU: calls from a CPU-only context do not leave a different device current.
    before = torch.cuda.current_device()
    params = build([GradSpec((C + 1,))], 0, DEV)
    gradfast.clip_grad_norm_(params, 0.1)
    assert torch.cuda.current_device() == before


# --------------------------------------------------------------------------- compile


def test_cuda_torch_compile():
    torch._dynamo.reset()
    specs = [GradSpec((C + 5,)), GradSpec((3, 4)), GradSpec((70,), torch.bfloat16)]

    def step(params, max_norm):
        total = gradfast.clip_grad_norm_(params, max_norm)
        return total * 1.0

    compiled = torch.compile(step, fullgraph=False)
    try:
        for seed in range(3):
            pg, pt = build(specs, seed, DEV), build(specs, seed, DEV)
            gf = compiled(pg, 0.3)
            th = tnu.clip_grad_norm_(pt, 0.3)
            assert_norm_matches(gf, th, grads_of(build(specs, seed, DEV)), 2.0)
            assert_grads_close_to_torch(pg, pt, gf, th)
    finally:
        torch._dynamo.reset()


def test_current_stream_is_torchs_current_stream():
    # gradfast launches on the raw handle of torch's current stream (a cheaper call than
    # torch.cuda.current_stream): it must be the same stream, on a side stream too.
    from gradfast._native.backend import REAL

    current_stream = REAL.stream
    dev = torch.device("cuda", torch.cuda.current_device())
    assert current_stream(dev) == torch.cuda.current_stream(dev).cuda_stream
    side = torch.cuda.Stream(dev)
    with torch.cuda.stream(side):
        assert current_stream(dev) == side.cuda_stream
    assert current_stream(dev) == torch.cuda.current_stream(dev).cuda_stream
