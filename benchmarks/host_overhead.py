"""Host overhead of a steady-state step: microseconds per tensor, gradfast against torch.

Many tiny CPU tensors, so that the kernels' work is negligible and what is timed is the
Python and dispatch work per step (what a GPU step would also pay on the host). Prints one
JSON line: per-tensor microseconds (median of interleaved repeats) of

  clip      gradfast.clip_grad_norm_        vs torch.nn.utils.clip_grad_norm_
  adam      gradfast Adam(max_grad_norm=1)  vs torch clip_grad_norm_ + Adam(fused=True)
  sgd       gradfast SGD(momentum, max_grad_norm=1) vs torch clip + SGD(momentum, fused=True)
            (when gradfast.optim.SGD exists)

    python benchmarks/host_overhead.py [--tensors 256] [--repeats 15]

Used to compare two builds of gradfast (run it once per build, alternating, and compare
medians) as well as gradfast against torch.
"""
import argparse
import json
import statistics
import time

import torch

import gradfast


def _per_tensor_us(step, n_tensors, inner=20):
    step()  # warm-up: state, plans
    t0 = time.perf_counter()
    for _ in range(inner):
        step()
    return (time.perf_counter() - t0) / inner / n_tensors * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tensors", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    def params():
        ps = [torch.nn.Parameter(torch.randn(16)) for _ in range(args.tensors)]
        for p in ps:
            p.grad = torch.randn(16) * 1e-3
        return ps

    cases = {}
    pa, pb = params(), params()
    cases["clip"] = (lambda: gradfast.clip_grad_norm_(pa, 1.0),
                     lambda: torch.nn.utils.clip_grad_norm_(pb, 1.0))
    qa, qb = params(), params()
    ga = gradfast.optim.Adam(qa, lr=1e-3, max_grad_norm=1.0)
    tb = torch.optim.Adam(qb, lr=1e-3, fused=True)
    cases["adam"] = (ga.step, lambda: (torch.nn.utils.clip_grad_norm_(qb, 1.0), tb.step()))
    if hasattr(gradfast.optim, "SGD"):
        ra, rb = params(), params()
        sa = gradfast.optim.SGD(ra, lr=1e-3, momentum=0.9, max_grad_norm=1.0)
        sb = torch.optim.SGD(rb, lr=1e-3, momentum=0.9, fused=True)
        cases["sgd"] = (sa.step, lambda: (torch.nn.utils.clip_grad_norm_(rb, 1.0), sb.step()))
    out = {"gradfast_file": gradfast.__file__, "tensors": args.tensors}
    for name, (ours, theirs) in cases.items():
        a, b = [], []
        for _ in range(args.repeats):  # interleaved
            a.append(_per_tensor_us(ours, args.tensors))
            b.append(_per_tensor_us(theirs, args.tensors))
        out[name] = {"gradfast_us_per_tensor": statistics.median(a),
                     "torch_us_per_tensor": statistics.median(b)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
