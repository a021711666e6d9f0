"""The CPU kernels' threads: torch's OpenMP team or gradfast's own pool (csrc/cpu/thread_pool.h),
in the situations a training program puts them in: forked worker processes, several Python
threads calling at once, a thread count changed at run time."""
import multiprocessing as mp
import sys
import threading

import pytest
import torch

import gradfast
from gradfast._native import _C

BACKENDS = ["openmp", "pool"]
N = 600_000  # enough elements for several threads


@pytest.fixture(params=BACKENDS)
def backend(request):
    before = _C.cpu_backend()
    try:
        got = _C.set_cpu_backend(request.param)
    except ValueError:
        pytest.skip("no OpenMP runtime in this process")
    assert got == request.param
    yield request.param
    _C.set_cpu_backend(before)


def _grads(seed, n=3):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(N, generator=g)) for _ in range(n)]
    for p in params:
        p.grad = torch.randn(N, generator=g)
    return params


def _child(backend, q):
    # What DataLoader workers do (torch's own OpenMP ops hang in a forked child otherwise):
    torch.set_num_threads(1)
    _C.set_cpu_backend(backend)
    params = _grads(1)
    total = gradfast.clip_grad_norm_(params, 1.0)
    q.put(float(total))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork start method")
def test_forked_worker_with_one_thread_runs(backend):
    params = _grads(0)
    gradfast.clip_grad_norm_(params, 1.0)  # the parent's threads exist before the fork
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_child, args=(backend, q))
    proc.start()
    proc.join(60)
    if proc.is_alive():
        proc.kill()
        pytest.fail("the forked child hung")
    assert proc.exitcode == 0
    expected = torch.nn.utils.get_total_norm([p.grad for p in _grads(1)])
    assert q.get(timeout=5) == pytest.approx(float(expected), rel=1e-5)


def test_python_threads_calling_at_once(backend):
    torch.set_num_threads(2)
    lists = [_grads(10 + i) for i in range(4)]
    expected = [torch.nn.utils.get_total_norm([p.grad for p in ps]) for ps in lists]
    results = [None] * len(lists)
    errors = []

    def work(i):
        try:
            for _ in range(5):
                results[i] = gradfast.get_total_norm([p.grad for p in lists[i]])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(lists))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for got, exp in zip(results, expected):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=0)


def test_thread_count_changes_between_calls(backend):
    old = torch.get_num_threads()
    try:
        params = _grads(3)
        grads = [p.grad for p in params]
        ref = gradfast.get_total_norm(grads)
        for n in (1, 2, 1, 2):
            torch.set_num_threads(n)
            assert torch.equal(gradfast.get_total_norm(grads), ref)
    finally:
        torch.set_num_threads(old)
