"""GPU self-check of the raw CUDA entry points of gradfast._C (needs a CUDA torch and a GPU).

Independent of the Python package: builds the device meta tables itself and compares every
CUDA result with the CPU back end of the same module (the reference semantics).

    python3 tests/native/cuda_selfcheck.py [--quick] [--big] [--bench]

--quick: small cases only; --sanitize: fewer still (for compute-sanitizer, with
PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that every tensor is its own allocation); --big: a tensor past 2^31 elements;
--bench: bandwidth and launch-overhead numbers. Prints 'N passed, N failed' last.
"""
import argparse
import sys
import time

import torch

try:
    import gradfast._C as C
except ImportError:  # run against a bare build directory holding _C.*.so
    import _C as C

CH = C.CHUNK_ELEMS
CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
KINDS = {"l2": (0, 2.0), "l1": (1, 1.0), "inf": (2, 0.0), "neginf": (3, 0.0), "l0": (4, 0.0),
         "lp3": (5, 3.0)}
RTOL = {torch.float32: 2e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
dev = torch.device("cuda", 0)
results = {"passed": 0, "failed": 0}


def report(ok, what):
    if ok:
        results["passed"] += 1
    else:
        results["failed"] += 1
        print("FAIL", what, flush=True)


def math_dtype(dt):
    return torch.float64 if dt == torch.float64 else torch.float32


def make_meta(ts):
    numels = [t.numel() for t in ts]
    first = [0]
    for k in numels:
        first.append(first[-1] + (k + CH - 1) // CH)
    meta = torch.tensor([t.data_ptr() for t in ts] + numels + first, dtype=torch.int64,
                        device=dev)
    return meta, len(ts), first[-1]


def stream():
    return torch.cuda.current_stream().cuda_stream


class Norm:
    """One tensor list + its zeroed workspace, as the Python package would cache them."""

    def __init__(self, ts):
        self.ts = ts
        self.dt = ts[0].dtype
        self.meta, self.n, self.nc = make_meta(ts)
        nbytes = C.cuda_norm_workspace_bytes(self.n, self.nc, CODES[self.dt])
        self.ws = torch.zeros(nbytes, dtype=torch.uint8, device=dev)

    def run(self, kind, p, max_norm=1.0, per=True, coef=True):
        md = math_dtype(self.dt)
        per_t = torch.full((self.n,), -7.0, dtype=md, device=dev)
        total = torch.full((), -7.0, dtype=self.dt, device=dev)
        coef_t = torch.full((), -7.0, dtype=md, device=dev)
        C.cuda_multi_norm(self.meta.data_ptr(), self.n, self.nc, CODES[self.dt], kind, p,
                          self.ws.data_ptr(), per_t.data_ptr() if per else 0, total.data_ptr(),
                          coef_t.data_ptr() if coef else 0, max_norm, 0, stream())
        return per_t, total, coef_t

    def launcher(self, kind, p, max_norm=1.0):
        """A closure launching the norm into preallocated outputs (for timing)."""
        md = math_dtype(self.dt)
        per_t = torch.empty(self.n, dtype=md, device=dev)
        total = torch.empty((), dtype=self.dt, device=dev)
        coef_t = torch.empty((), dtype=md, device=dev)
        args = (self.meta.data_ptr(), self.n, self.nc, CODES[self.dt], kind, p,
                self.ws.data_ptr(), per_t.data_ptr(), total.data_ptr(), coef_t.data_ptr(),
                max_norm, 0, stream())
        return lambda: C.cuda_multi_norm(*args)

    def workspace_zero(self):
        torch.cuda.synchronize()
        return bool((self.ws == 0).all())


def cpu_norm(ts, kind, p, max_norm=1.0):
    cs = [t.detach().cpu().contiguous() for t in ts]
    dt = cs[0].dtype
    md = math_dtype(dt)
    per = torch.empty(len(cs), dtype=md)
    total = torch.empty((), dtype=dt)
    coef = torch.empty((), dtype=md)
    C.cpu_multi_norm([c.data_ptr() for c in cs], [c.numel() for c in cs], CODES[dt], kind, p,
                     per.data_ptr(), total.data_ptr(), coef.data_ptr(), max_norm, 4)
    return per, total, coef


def bits(t):
    return t.detach().reshape(-1).cpu().view(torch.uint8)


def close(a, b, rtol, exact=False):
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    if exact:
        return bool(torch.equal(torch.nan_to_num(a, 1.5), torch.nan_to_num(b, 1.5)))
    return bool(torch.allclose(a, b, rtol=rtol, atol=0, equal_nan=True))


def tensor_lists(dt, quick):
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(n):
        return (torch.randn(n, generator=g) * 3).to(dt).to(dev)

    lists = {
        "one_small": [rnd(1000)],
        "one_chunk_exact": [rnd(CH)],
        "multi_chunk": [rnd(5 * CH + 17)],
        "mixed_with_empty": [rnd(0), rnd(3), rnd(2 * CH), rnd(0), rnd(CH + 1), rnd(0)],
        "all_empty": [rnd(0), rnd(0)],
        "misaligned_views": [rnd(3 * CH + 9)[1:], rnd(1001)[3:], rnd(CH + 5)[1:]],
        "many_tiny": [rnd(int(k)) for k in torch.randint(0, 300, (700,), generator=g)],
        "nan_inf": [rnd(2 * CH), torch.tensor([1.0, float("nan"), 2.0], dtype=dt, device=dev),
                    torch.tensor([float("inf"), -1.0], dtype=dt, device=dev)],
    }
    if not quick:
        lists["many_chunks"] = [rnd(700 * CH + 123), rnd(3 * CH)]
        lists["many_tensors"] = [rnd(int(k)) for k in torch.randint(1, 3 * CH, (1500,),
                                                                   generator=g)]
    return lists


def check_norms(quick, kinds=KINDS):
    for dt in CODES:
        for lname, ts in tensor_lists(dt, quick).items():
            nm = Norm(ts)
            for kname, (kind, p) in kinds.items():
                if kname == "lp3" and dt == torch.float16 and lname == "many_chunks":
                    continue  # fp16 total overflows to inf in both; nothing to compare
                tag = f"norm {dt} {lname} {kname}"
                per, total, coef = nm.run(kind, p, max_norm=1.0)
                rper, rtotal, rcoef = cpu_norm(ts, kind, p)
                # max/min are exact; L0 counts only below 2^24 (fp32 math), so not here.
                exact = kname in ("inf", "neginf")
                rtol = RTOL[dt] * (4 if kname == "lp3" else 1)
                report(close(per, rper, rtol, exact), tag + " per_tensor")
                report(close(total, rtotal, rtol, exact), tag + " total")
                report(close(coef, rcoef, rtol, exact), tag + " coef")
                # Determinism: bit-identical on repeat, also without per-tensor/coef outputs.
                per2, total2, coef2 = nm.run(kind, p, max_norm=1.0)
                _, total3, _ = nm.run(kind, p, max_norm=1.0, per=False, coef=False)
                same = (torch.equal(bits(per), bits(per2)) and torch.equal(bits(coef), bits(coef2))
                        and torch.equal(bits(total), bits(total2))
                        and torch.equal(bits(total), bits(total3)))
                report(same, tag + " bitwise repeatable")
                report(nm.workspace_zero(), tag + " workspace back to all zeros")


def check_shared_workspace():
    # One workspace serving lists of different shapes in turn, as the Python layer caches
    # one per stream: a list of few tensors with many chunks leaves partials where a list of
    # many tensors keeps its counters.
    g = torch.Generator(device="cpu").manual_seed(4)
    few = [torch.randn(k, generator=g).to(dev) for k in (40 * CH + 3, 9 * CH)]
    many = [torch.randn(k, generator=g).to(dev) for k in [3 * CH + 1] * 300]
    a, b = Norm(few), Norm(many)
    shared = torch.zeros(max(a.ws.numel(), b.ws.numel()), dtype=torch.uint8, device=dev)
    a.ws = b.ws = shared
    ok = True
    for _ in range(2):
        for nm, ts in ((a, few), (b, many)):
            for kind, p in ((0, 2.0), (1, 1.0)):
                for per in (True, False):
                    _, total, _ = nm.run(kind, p, per=per)
                    _, rtotal, _ = cpu_norm(ts, kind, p)
                    ok = ok and close(total, rtotal, 2e-5) and nm.workspace_zero()
    report(ok, "one workspace shared by lists of different shapes")


def check_torch_reference():
    # Against torch itself (clip_grad_norm_'s math), fp32 L2 and inf.
    g = torch.Generator(device="cpu").manual_seed(1)
    ts = [torch.randn(k, generator=g).to(dev) for k in (10, 3 * CH + 1, 77, CH)]
    nm = Norm(ts)
    for kind, p, order in ((0, 2.0, 2.0), (2, 0.0, float("inf"))):
        per, total, coef = nm.run(kind, p, max_norm=0.5)
        ref_per = torch.stack([torch.linalg.vector_norm(t, order) for t in ts])
        ref_total = torch.linalg.vector_norm(ref_per, order)
        ref_coef = torch.clamp(0.5 / (ref_total + 1e-6), max=1.0)
        report(close(per, ref_per, 1e-5) and close(total, ref_total, 1e-5)
               and close(coef, ref_coef, 1e-5), f"torch reference order={order}")


def check_scale_clamp():
    # Every fp16 and bf16 bit pattern, plus random fp32/fp64, aligned and misaligned.
    for dt in CODES:
        if dt in (torch.float16, torch.bfloat16):
            base = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dt)
            base = torch.cat([base, base[:1001]])
        else:
            g = torch.Generator(device="cpu").manual_seed(2)
            base = (torch.randn(3 * CH + 11, generator=g) * 100).to(dt)
            base[5] = float("nan")
            base[6] = float("inf")
            base[7] = -0.0
        for off in (0, 1, 3):
            host = [base[off:].clone(), base[: 1000].clone(), base[:0].clone()]
            for coef_v in (0.37, 1.0, 3.5e4):
                md = math_dtype(dt)
                gts = [h.to(dev, copy=True) for h in host]
                # Misaligned device views: slice a padded copy.
                gviews = []
                for h in host:
                    pad = torch.zeros(h.numel() + off, dtype=dt, device=dev)
                    pad[off:] = h.to(dev)
                    gviews.append(pad[off:])
                for gl, label in ((gts, "aligned"), (gviews, f"offset{off}")):
                    work = gl
                    meta, n, nc = make_meta(work)
                    coef = torch.tensor(coef_v, dtype=md, device=dev)
                    C.cuda_multi_scale(meta.data_ptr(), n, nc, CODES[dt], coef.data_ptr(), 0,
                                       stream())
                    cpu = [h.clone() for h in host]
                    ccoef = torch.tensor(coef_v, dtype=md)
                    C.cpu_multi_scale([c.data_ptr() for c in cpu], [c.numel() for c in cpu],
                                      CODES[dt], ccoef.data_ptr(), 1)
                    ok = all(close(a, b, 0, exact=True) for a, b in zip(work, cpu))
                    report(ok, f"scale {dt} {label} off={off} coef={coef_v}")
            for lo, hi in ((-1.5, 2.25), (-float("inf"), 0.0), (1e-3, 1e30)):
                gts = [h.to(dev, copy=True) for h in host]
                meta, n, nc = make_meta(gts)
                C.cuda_multi_clamp(meta.data_ptr(), n, nc, CODES[dt], lo, hi, 0, stream())
                cpu = [h.clone() for h in host]
                C.cpu_multi_clamp([c.data_ptr() for c in cpu], [c.numel() for c in cpu],
                                  CODES[dt], lo, hi, 1)
                ok = all(close(a, b, 0, exact=True) for a, b in zip(gts, cpu))
                # NaNs keep their exact bits on the GPU.
                src = host[0].to(dev, copy=True)
                nan_same = torch.equal(gts[0][torch.isnan(src)].view(torch.uint8),
                                       src[torch.isnan(src)].view(torch.uint8))
                report(ok and nan_same, f"clamp {dt} off={off} [{lo},{hi}]")


def check_graph():
    g = torch.Generator(device="cpu").manual_seed(3)
    # bf16 Lp: a kernel instantiation no earlier check launched, so its first launch (and
    # its occupancy query) happens inside the capture.
    ts = [torch.randn(k, generator=g).to(torch.bfloat16).to(dev) for k in (5, 2 * CH + 3, 0)]
    ref = [t.clone() for t in ts]
    nm = Norm(ts)
    md = torch.float32
    per = torch.zeros(3, dtype=md, device=dev)
    total = torch.zeros((), dtype=torch.bfloat16, device=dev)
    coef = torch.zeros((), dtype=md, device=dev)
    s = torch.cuda.Stream()
    graph = torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph, stream=s):
        sp = torch.cuda.current_stream().cuda_stream
        C.cuda_multi_norm(nm.meta.data_ptr(), nm.n, nm.nc, 3, 5, 2.5, nm.ws.data_ptr(),
                          per.data_ptr(), total.data_ptr(), coef.data_ptr(), 0.1, 0, sp)
        C.cuda_multi_scale(nm.meta.data_ptr(), nm.n, nm.nc, 3, coef.data_ptr(), 0, sp)
    outs = []
    for _ in range(3):
        for t, r in zip(ts, ref):
            t.copy_(r)
        graph.replay()
        torch.cuda.synchronize()
        outs.append((per.clone(), total.clone(), coef.clone(), [t.clone() for t in ts]))
    rper, rtotal, rcoef = cpu_norm(ref, 5, 2.5, 0.1)
    ok = close(outs[0][0], rper, 1e-2) and close(outs[0][1], rtotal, 1.6e-2)
    ok = ok and all(torch.equal(o[1].float(), outs[0][1].float()) and
                    torch.equal(o[0], outs[0][0]) for o in outs)
    scaled_ok = all(torch.equal(a, (r.float() * outs[0][2]).to(torch.bfloat16))
                    for a, r in zip(outs[-1][3], ref))
    report(ok, "graph replay norm repeatable")
    report(scaled_ok, "graph replay scale")
    report(nm.workspace_zero(), "graph replay leaves the workspace zeroed")


def check_empty_list():
    ws = torch.zeros(C.cuda_norm_workspace_bytes(0, 0, 0), dtype=torch.uint8, device=dev)
    total = torch.full((), -1.0, device=dev)
    coef = torch.full((), -1.0, device=dev)
    C.cuda_multi_norm(0, 0, 0, 0, 0, 2.0, ws.data_ptr(), 0, total.data_ptr(), coef.data_ptr(),
                      1.0, 0, stream())
    C.cuda_multi_scale(0, 0, 0, 0, coef.data_ptr(), 0, stream())
    torch.cuda.synchronize()
    report(total.item() == 0.0 and coef.item() == 1.0, "empty list (n=0)")


def check_big():
    # One fp16 tensor past 2^31 elements: 64-bit element indexing and chunk math.
    n = (1 << 31) + 3 * CH + 5
    x = torch.zeros(n, dtype=torch.float16, device=dev)
    idx = torch.tensor([0, (1 << 31) - 1, 1 << 31, (1 << 31) + 1, n - 1], device=dev)
    x[idx] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float16, device=dev)
    nm = Norm([x])
    per, total, coef = nm.run(0, 2.0, max_norm=1.0)
    expect = (1 + 4 + 9 + 16 + 25) ** 0.5
    report(abs(total.float().item() - expect) < 1e-2 and nm.workspace_zero(), "big norm")
    per, total, coef = nm.run(2, 0.0, max_norm=1.0)
    report(total.float().item() == 5.0, "big inf norm")
    two = torch.tensor(2.0, device=dev)
    C.cuda_multi_scale(nm.meta.data_ptr(), 1, nm.nc, 2, two.data_ptr(), 0, stream())
    got = x[idx].float().cpu().tolist()
    report(got == [2.0, 4.0, 6.0, 8.0, 10.0], f"big scale {got}")
    del x
    torch.cuda.empty_cache()


def timeit(fn, iters=50):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(iters):
        fn()
    e1.record()
    torch.cuda.synchronize()
    return e0.elapsed_time(e1) / iters * 1e-3


def bench():
    print(torch.cuda.get_device_name(), flush=True)
    numel = 256 << 20
    src = torch.randn(numel, device=dev)
    dst = torch.empty_like(src)
    t_copy = timeit(lambda: dst.copy_(src))
    copy_bw = 2 * src.numel() * 4 / t_copy
    print(f"copy fp32 {numel/1e6:.0f}M: {t_copy*1e3:.3f} ms, {copy_bw/1e9:.0f} GB/s (r+w)")
    for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        for shape in ("one", "list"):
            n_el = numel if dt != torch.float64 else numel // 2
            x = src[:n_el].to(dt)
            ts = [x] if shape == "one" else list(torch.split(x, n_el // 200))
            nm = Norm(ts)
            nbytes = sum(t.numel() for t in ts) * x.element_size()
            t = timeit(nm.launcher(0, 2.0))
            print(f"norm {str(dt):15s} {shape:4s} {nbytes/1e9:.2f} GB: {t*1e3:.3f} ms "
                  f"{nbytes/t/1e9:.0f} GB/s = {nbytes/t/copy_bw*100:.1f}% of copy bw")
            if dt in (torch.float32, torch.bfloat16):
                coef = torch.tensor(0.5, device=dev)
                code = CODES[dt]
                t_s = timeit(lambda: C.cuda_multi_scale(nm.meta.data_ptr(), nm.n, nm.nc, code,
                                                        coef.data_ptr(), 0, stream()))
                t_c = timeit(lambda: C.cuda_multi_clamp(nm.meta.data_ptr(), nm.n, nm.nc, code,
                                                        -1.0, 1.0, 0, stream()))
                tf = timeit(lambda: torch._foreach_mul_(ts, coef))
                print(f"  scale {t_s*1e3:.3f} ms = {2*nbytes/t_s/copy_bw*100:.1f}% of copy bw, "
                      f"clamp {t_c*1e3:.3f} ms = {2*nbytes/t_c/copy_bw*100:.1f}%, "
                      f"torch _foreach_mul_ {tf*1e3:.3f} ms")
            if dt == torch.float32 and shape == "list":
                tt = timeit(lambda: torch.linalg.vector_norm(
                    torch.stack(torch._foreach_norm(ts, 2.0)), 2.0))
                print(f"  torch _foreach_norm+vector_norm: {tt*1e3:.3f} ms")
            if shape == "list":
                # The same list, each piece at a 16-byte boundary (separate allocations).
                al = [t.clone() for t in ts]
                nma = Norm(al)
                ta = timeit(nma.launcher(0, 2.0))
                coef = torch.tensor(0.5, dtype=math_dtype(dt), device=dev)
                code = CODES[dt]
                tsa = timeit(lambda: C.cuda_multi_scale(nma.meta.data_ptr(), nma.n, nma.nc, code,
                                                        coef.data_ptr(), 0, stream()))
                print(f"  aligned list: norm {ta*1e3:.3f} ms = {nbytes/ta/copy_bw*100:.1f}% of "
                      f"copy bw, scale {tsa*1e3:.3f} ms = {2*nbytes/tsa/copy_bw*100:.1f}%")
                del al, nma
            del nm, ts, x
    # Tiny model: launch overhead on the host and end-to-end time.
    ts = [torch.randn(k, device=dev) for k in torch.randint(10, 5000, (60,)).tolist()]
    nm = Norm(ts)
    md = torch.float32
    per = torch.empty(len(ts), dtype=md, device=dev)
    total = torch.empty((), device=dev)
    coef = torch.empty((), device=dev)
    sp = stream()
    args = (nm.meta.data_ptr(), nm.n, nm.nc, 0, 0, 2.0, nm.ws.data_ptr(), per.data_ptr(),
            total.data_ptr(), coef.data_ptr(), 1.0, 0, sp)
    for _ in range(100):
        C.cuda_multi_norm(*args)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(2000):
        C.cuda_multi_norm(*args)
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    print(f"tiny model (60 tensors, {sum(t.numel() for t in ts)} elems): host "
          f"{(t1-t0)/2000*1e6:.2f} us/call, end-to-end {(t2-t0)/2000*1e6:.2f} us/call")
    t_gpu = timeit(lambda: C.cuda_multi_norm(*args), iters=500)
    print(f"  GPU time per norm: {t_gpu*1e6:.2f} us")
    t_torch = timeit(lambda: torch.nn.utils.get_total_norm(ts) if hasattr(
        torch.nn.utils, "get_total_norm") else torch.linalg.vector_norm(
        torch.stack(torch._foreach_norm(ts, 2.0))), iters=500)
    print(f"  torch total norm: {t_torch*1e6:.2f} us")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--sanitize", action="store_true",
                    help="few, small launches (under compute-sanitizer)")
    a = ap.parse_args()
    print(C.CUDA_COMPILED, C.cuda_archs(), C.cuda_device_count(), torch.__version__, flush=True)
    checks = [check_empty_list, lambda: check_norms(a.quick), check_shared_workspace,
              check_torch_reference, check_scale_clamp, check_graph]
    if a.sanitize:
        checks = [check_empty_list,
                  lambda: check_norms(True, {k: KINDS[k] for k in ("l2", "inf")}),
                  check_shared_workspace, check_scale_clamp]
    if a.big:
        checks.append(check_big)
    for chk in checks:
        try:
            chk()
        except Exception as e:  # keep going: one run should report everything
            report(False, f"{getattr(chk, '__name__', chk)} raised {type(e).__name__}: {e}")
        torch.cuda.synchronize()
    if a.bench:
        bench()
    print(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
