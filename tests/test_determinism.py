"""Bitwise determinism of the CPU kernels: whatever the thread count, call after call.

The CPU norm computes chunk partials in parallel and folds them serially in chunk order,
so the thread count must not change a single bit. GRADFAST_CPU_ISA is read once, when the
kernels are first used, so the SIMD levels are compared in subprocesses.
"""
import json
import os
import subprocess
import tempfile
import sys

import pytest
import torch


import gradfast  # noqa: E402
from clip_helpers import (  # noqa: E402
    FLOAT_DTYPES,
    INF,
    GradSpec,
    assert_norm_matches,
    bits,
    build,
    dtype_id,
    grads_of,
)
import gradfast.optim  # noqa: E402
from gradfast._native import _C  # noqa: E402
from gradfast._native import CHUNK_ELEMS as C  # noqa: E402

NORMS = [2.0, 1.0, INF, -INF, 0.0, 3.5, 0.5]
THREADS = [1, 2, 3]


def assert_same_bits(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert torch.equal(bits(a), bits(b)), f"{what}: {a} vs {b}"


@pytest.fixture
def restore_threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def _specs(dtype, norm_type):
    scale = 1e-6 if dtype == torch.float16 and norm_type in (1.0, 0.5) else 1.0
    return [GradSpec((5 * C + 123,), dtype, scale=scale, zero_frac=0.01),
            GradSpec((3 * C,), dtype, scale=scale),
            GradSpec((C + 1,), dtype, scale=scale),
            GradSpec((17,), dtype), GradSpec((), dtype),
            GradSpec((2, C - 3), dtype, scale=scale, zero_frac=0.5)]


def _run(specs, seed, norm_type, threads):
    torch.set_num_threads(threads)
    total = gradfast.get_total_norm(grads_of(build(specs, seed)), norm_type)
    params = build(specs, seed)
    clipped_total = gradfast.clip_grad_norm_(params, 0.01, norm_type)
    return total, clipped_total, [p.grad for p in params]


@pytest.mark.parametrize("norm_type", NORMS, ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_thread_count_does_not_change_bits(dtype, norm_type, restore_threads):
    specs = _specs(dtype, norm_type)
    ref_total, ref_clip_total, ref_grads = _run(specs, 0, norm_type, 1)
    assert_same_bits(ref_total, ref_clip_total, "get_total_norm vs clip_grad_norm_")
    for threads in THREADS[1:]:
        total, clip_total, grads = _run(specs, 0, norm_type, threads)
        assert_same_bits(total, ref_total, f"total, {threads} threads")
        assert_same_bits(clip_total, ref_clip_total, f"clip total, {threads} threads")
        for i, (g, r) in enumerate(zip(grads, ref_grads)):
            assert_same_bits(g, r, f"grad {i}, {threads} threads")


@pytest.mark.parametrize("norm_type", [2.0, 1.0, INF, 0.0, 3.5], ids=repr)
def test_mixed_dtypes_thread_count_does_not_change_bits(norm_type, restore_threads):
    specs = [GradSpec((2 * C + 7,), d, scale=1e-6 if d == torch.float16 else 1.0)
             for d in FLOAT_DTYPES]
    specs += [GradSpec((9,), d) for d in FLOAT_DTYPES]
    ref_total, ref_clip_total, ref_grads = _run(specs, 1, norm_type, 1)
    for threads in THREADS[1:]:
        total, clip_total, grads = _run(specs, 1, norm_type, threads)
        assert_same_bits(total, ref_total, f"total, {threads} threads")
        assert_same_bits(clip_total, ref_clip_total, f"clip total, {threads} threads")
        for i, (g, r) in enumerate(zip(grads, ref_grads)):
            assert_same_bits(g, r, f"grad {i}, {threads} threads")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_many_small_tensors_thread_count(dtype, restore_threads):
    # Thousands of tensors (one chunk each) and a few multi-chunk ones between them.
    specs = [GradSpec((1 + (i * 37) % 300,), dtype) for i in range(1500)]
    specs[500] = GradSpec((3 * C + 1,), dtype)
    specs[1000] = GradSpec((0,), dtype)
    norms = (2.0, 1.0, 3.5, 0.0)
    results = []
    for threads in THREADS:
        torch.set_num_threads(threads)
        grads = grads_of(build(specs, 2))
        results.append([gradfast.get_total_norm(grads, p) for p in norms])
    for threads, res in zip(THREADS[1:], results[1:]):
        for p, a, b in zip(norms, res, results[0]):
            assert_same_bits(a, b, f"p={p}, {threads} threads")


@pytest.mark.parametrize("norm_type", NORMS, ids=repr)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_repeated_calls_identical(dtype, norm_type, restore_threads):
    torch.set_num_threads(2)
    grads = grads_of(build(_specs(dtype, norm_type), 3))
    first = gradfast.get_total_norm(grads, norm_type)
    for _ in range(4):
        assert_same_bits(gradfast.get_total_norm(grads, norm_type), first, "repeat")


def test_clip_grad_value_thread_count(restore_threads):
    specs = [GradSpec((3 * C + 5,), d, scale=2.0) for d in FLOAT_DTYPES]
    ref = None
    for threads in THREADS:
        torch.set_num_threads(threads)
        params = build(specs, 4)
        gradfast.clip_grad_value_(params, 0.5)
        got = [p.grad for p in params]
        if ref is None:
            ref = got
        for i, (g, r) in enumerate(zip(got, ref)):
            assert_same_bits(g, r, f"grad {i}, {threads} threads")


@pytest.fixture
def restore_backend():
    before = _C.cpu_backend()  # as GRADFAST_CPU_BACKEND (or the default) chose it
    yield
    _C.set_cpu_backend(before)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_openmp_team_and_own_pool_give_the_same_bits(dtype, restore_threads, restore_backend):
    # The CPU kernels run on torch's OpenMP team when one is loaded, else on gradfast's pool;
    # the chunks and their fold order are the same, so are the results.
    if _C.set_cpu_backend("auto") != "openmp":
        pytest.skip("no OpenMP runtime in this process")
    specs = _specs(dtype, 2.0)
    results = {}
    for backend in ("openmp", "pool"):
        _C.set_cpu_backend(backend)
        for threads in (1, 2, 3):
            total, clip_total, grads = _run(specs, 6, 2.0, threads)
            params = build(specs, 7)
            opt = gradfast.optim.Adam(params, lr=1e-2, max_grad_norm=0.5, weight_decay=0.1)
            for _ in range(3):
                opt.step()
            results[backend, threads] = [total, clip_total, *grads,
                                         *(p.detach() for p in params),
                                         *(opt.state[p]["exp_avg_sq"] for p in params)]
    ref = results["pool", 1]
    for key, got in results.items():
        for i, (a, b) in enumerate(zip(got, ref)):
            assert_same_bits(a, b, f"{key}, output {i}")


def test_gradfast_follows_torch_thread_setting(restore_threads):
    # show_config reports the thread count the kernels will use: torch's.
    for threads in (1, 2):
        torch.set_num_threads(threads)
        assert gradfast.show_config()["cpu_threads"] == threads


# ----------------------------------------------------------------- SIMD levels (subprocess)


_PROBE = r"""
import hashlib, json, math, sys, torch
import gradfast
from clip_helpers import FLOAT_DTYPES, GradSpec, build, grads_of
C = gradfast._native.CHUNK_ELEMS
out = {"isa": gradfast.show_config()["cpu_simd"], "norms": []}
for dtype in FLOAT_DTYPES:
    for p in (2.0, 1.0, float("inf"), float("-inf"), 0.0, 3.5, 0.5):
        scale = 1e-6 if dtype == torch.float16 and p in (1.0, 0.5) else 1.0
        specs = [GradSpec((3 * C + 11,), dtype, scale=scale, zero_frac=0.01),
                 GradSpec((777,), dtype, scale=scale), GradSpec((), dtype)]
        per_thread = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            params = build(specs, 5)
            total = gradfast.clip_grad_norm_(params, 0.01, p)
            raw = [g.reshape(-1).view(torch.uint8).numpy().tobytes() for g in grads_of(params)]
            per_thread.append([total.double().item(),
                               [math.fsum(g.double().reshape(-1).tolist())
                                for g in grads_of(params)],
                               hashlib.sha256(b"".join(raw)).hexdigest()])
        same = per_thread[0][0] == per_thread[1][0] and per_thread[0][2] == per_thread[1][2]
        out["norms"].append([str(dtype), p, per_thread[0][:2], same])
print(json.dumps(out))
"""


def _probe(isa):
    env = dict(os.environ)
    env.pop("GRADFAST_CPU_ISA", None)
    if isa is not None:
        env["GRADFAST_CPU_ISA"] = isa
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(gradfast.__file__)))
    tests_dir = os.path.dirname(os.path.abspath(__file__))  # clip_helpers
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, tests_dir]
                                        + [x for x in [env.get("PYTHONPATH")] if x])
    # cwd outside the source tree: `-c` puts the cwd first on sys.path, and the tests must
    # import the same gradfast as this process (the installed one in CI).
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env,
                          cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_simd_levels_agree():
    best = _probe(None)
    assert best["isa"] in ("generic", "avx2", "avx512")
    levels = {"generic": 0, "avx2": 1, "avx512": 2}
    generic = _probe("generic")
    assert generic["isa"] == "generic"
    probes = [generic]
    if levels[best["isa"]] >= 1:
        capped = _probe("avx2")
        assert capped["isa"] == "avx2"  # a cap, never an upgrade
        probes.append(capped)
    # Each level is bitwise deterministic across thread counts ...
    for probe in (best, *probes):
        for dtype, p, _, same in probe["norms"]:
            assert same, f"{probe['isa']}: {dtype} p={p} differs between 1 and 2 threads"
    # ... and the levels agree with each other within the tolerance of the parity tests.
    dtypes = {str(d): d for d in FLOAT_DTYPES}
    for probe in probes:
        for (dtype, p, (total, sums), _), (_, _, (btotal, bsums), _) in zip(
                probe["norms"], best["norms"]):
            d = dtypes[dtype]
            if d in (torch.float16, torch.bfloat16) or p in (INF, -INF, 0.0):
                # the total is rounded to the dtype: at most one ulp apart
                tol = torch.finfo(d).eps * abs(btotal)
            else:
                tol = (1e-5 if d == torch.float32 else 1e-12) * abs(btotal)
            assert total == btotal or abs(total - btotal) <= tol, (
                probe["isa"], dtype, p, total, btotal)
            for s, bs in zip(sums, bsums):
                assert abs(s - bs) <= 1e-3 * max(1.0, abs(bs)), (probe["isa"], dtype, p)


def test_generic_isa_matches_torch_in_subprocess():
    # The generic kernels get the same parity check as the best ones (in this process).
    probe = _probe("generic")
    for dtype_name, p, (total, _), _ in probe["norms"]:
        dtype = {str(d): d for d in FLOAT_DTYPES}[dtype_name]
        if p == 0:
            continue
        scale = 1e-6 if dtype == torch.float16 and p in (1.0, 0.5) else 1.0
        specs = [GradSpec((3 * C + 11,), dtype, scale=scale, zero_frac=0.01),
                 GradSpec((777,), dtype, scale=scale), GradSpec((), dtype)]
        grads = grads_of(build(specs, 5))
        th = torch.nn.utils.get_total_norm(grads, p)
        gf = torch.tensor(total, dtype=torch.float64).to(dtype)
        assert_norm_matches(gf, th, grads, p)
