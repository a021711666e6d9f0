"""CUDA benchmark of gradfast.optim.Adam against torch's clip_grad_norm_ + Adam.

    python -m gradfast.bench.adam_cuda [--json out.json]

Two models, fp32: "large" (8 tensors of 2^24 elements, 134M parameters, far beyond L2) and
"lstm" (torch.nn.LSTM(224, 224): 4 tensors, 0.4M parameters). For each variant, N
back-to-back steps (each clip_grad_norm_(max_norm=1.0) + step(); gradfast: step() with
max_grad_norm=1.0) are timed with CUDA events, wall clock included, after warm-up; the
median over rounds is reported. gradfast runs twice: with its default clip + Adam (two
launches: the norm kernel, then the update kernel) and with GRADFAST_ADAM_LAUNCHES=1 (the
opt-in cooperative kernel doing both in one launch; "launches" in the JSON says which ran:
1, or 2 where it fell back). The roofline is 32 bytes per parameter (grads read twice,
param/exp_avg/exp_avg_sq read and written) at the bandwidth a device-to-device copy
reaches on the same GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics

import torch


def copy_bandwidth(n=1 << 28) -> float:
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(20):
        b.copy_(a)
    e.record()
    torch.cuda.synchronize()
    return 2 * n * 20 / (s.elapsed_time(e) / 1e3)


def make(kind):
    torch.manual_seed(0)
    if kind == "large":
        params = [torch.nn.Parameter(torch.randn(1 << 24, device="cuda")) for _ in range(8)]
    else:
        params = list(torch.nn.LSTM(224, 224).cuda().parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    return params


@contextlib.contextmanager
def env_var(name, value):
    """Environment variable `name` set to `value` (removed when None) for the block."""
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def time_steps(fn, steps, rounds=7):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(rounds):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(steps):
            fn()
        e.record()
        torch.cuda.synchronize()
        out.append(s.elapsed_time(e) / steps)
    return statistics.median(out)


def main(argv=None) -> int:
    import gradfast.optim
    from gradfast.optim.adam import LAUNCHES_ENV

    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    bw = copy_bandwidth()
    results = {"device": torch.cuda.get_device_name(), "copy_bandwidth_GBps": bw / 1e9,
               "torch": torch.__version__, "models": {}}
    for kind, steps in (("large", 10), ("lstm", 200)):
        params = make(kind)
        n = sum(p.numel() for p in params)
        rows = {}
        launches = {}
        gf = lambda ps: gradfast.optim.Adam(ps, lr=1e-4, max_grad_norm=1.0)  # noqa: E731
        for name, mk, clip, env in (
            ("torch clip + Adam (foreach)", lambda ps: torch.optim.Adam(ps, lr=1e-4), True, None),
            ("torch clip + Adam (fused)", lambda ps: torch.optim.Adam(ps, lr=1e-4, fused=True), True, None),
            ("gradfast Adam(max_grad_norm)", gf, False, None),
            ("gradfast Adam(max_grad_norm), 1 launch", gf, False, "1"),
        ):
            opt = mk(params)

            def step(opt=opt, clip=clip, params=params):
                if clip:
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()

            with env_var(LAUNCHES_ENV, env):
                rows[name] = time_steps(step, steps)
            if env is not None:
                launches[name] = getattr(opt, "_gf_launches", None)
            del opt
            torch.cuda.empty_cache()
        roof_ms = 32 * n / bw * 1e3
        results["models"][kind] = {"params": n, "tensors": len(params), "ms": rows,
                                   "roofline_ms": roof_ms, "launches": launches}
        print(f"== {kind}: {n} params in {len(params)} tensors; 32 B/param roofline "
              f"{roof_ms:.3f} ms at {bw / 1e9:.0f} GB/s")
        g = rows["gradfast Adam(max_grad_norm)"]
        for name, ms in rows.items():
            note = f"   (launches: {launches[name]})" if name in launches else ""
            print(f"  {name:<40} {ms:9.4f} ms/step   x{ms / g:5.2f} of gradfast's time{note}")
        print(f"  gradfast at {roof_ms / g * 100:.1f}% of the roofline")
        del params
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
