"""CPU benchmark of gradfast.optim.Adam against torch's clip_grad_norm_ + Adam.

    python -m gradfast.bench.adam_cpu [--repeats 30] [--json out.json]

The model is the foundation issue's 14.5M-parameter LSTM language model (embedding
10000x512, two LSTM layers of width 512, decoder 512->10000: 11 fp32 tensors). Gradients
are random; caches are flushed (a 128 MiB buffer is rewritten) before every timed step.
Each variant times `clip_grad_norm_(max_norm=1.0)` + `step()` (gradfast: `step()` alone,
with max_grad_norm=1.0); variants are interleaved round by round, and the median
and minimum of the rounds are reported.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def make_model() -> torch.nn.Module:
    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10000, 512)
            self.lstm = torch.nn.LSTM(512, 512, num_layers=2)
            self.dec = torch.nn.Linear(512, 10000)

    return LM()


_FLUSH = None


def flush_caches() -> None:
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = torch.empty(32 << 20, dtype=torch.float32)  # 128 MiB
    _FLUSH.add_(1.0)


def run_interleaved(variants, repeats: int, warmup: int = 3):
    """Times every variant once per round, rounds interleaved, so that load changes on a
    shared machine hit all variants alike. variants: name -> (params, optimizer, clip)."""
    times = {name: [] for name in variants}
    for i in range(warmup + repeats):
        for name, (params, opt, clip) in variants.items():
            for p in params:
                p.grad.copy_(p.grad_src)
            flush_caches()
            t0 = time.perf_counter()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            t1 = time.perf_counter()
            if i >= warmup:
                times[name].append(t1 - t0)
    return [{"name": name, "median_ms": statistics.median(ts) * 1e3, "min_ms": min(ts) * 1e3}
            for name, ts in times.items()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", default=None, help="comma-separated variant names")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = make_model()
    params = list(model.parameters())
    for p in params:
        p.grad_src = torch.randn_like(p) * 1e-2
        p.grad = torch.empty_like(p)
    n = sum(p.numel() for p in params)

    variants = {
        "torch clip + Adam (default)": (lambda ps: torch.optim.Adam(ps, lr=1e-3), True),
        "torch clip + Adam (fused)": (lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True), True),
    }
    try:
        import gradfast.optim

        gradfast.optim.Adam  # noqa: B018 - present once the optimizer is built
        variants["gradfast Adam(max_grad_norm=1.0)"] = (
            lambda ps: gradfast.optim.Adam(ps, lr=1e-3, max_grad_norm=1.0), False)
    except (ImportError, AttributeError):
        pass
    only = set(args.only.split(",")) if args.only else None
    built = {}
    for name, (mk, clip) in variants.items():
        if only and name not in only:
            continue
        # Fresh copies of the parameters for each variant.
        ps = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for p, q in zip(ps, params):
            p.grad_src = q.grad_src
            p.grad = torch.empty_like(p)
        built[name] = (ps, mk(ps), clip)
    results = run_interleaved(built, args.repeats)
    print(f"params: {n} in {len(params)} tensors, threads: {torch.get_num_threads()}")
    for r in results:
        print(f"{r['name']:<36} median {r['median_ms']:8.2f} ms   min {r['min_ms']:8.2f} ms")
    by = {r["name"]: r["median_ms"] for r in results}
    g = by.get("gradfast Adam(max_grad_norm=1.0)")
    if g:
        for ref in ("torch clip + Adam (fused)", "torch clip + Adam (default)"):
            if ref in by:
                print(f"speedup vs {ref}: {by[ref] / g:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"params": n, "threads": torch.get_num_threads(), "results": results}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
