"""The memory roofline: a bytes-per-element model of each pipeline and the machine's copy
bandwidth, measured in the same run.

Clipping and Adam are memory-bound: an fp32 element costs one or two flops per byte moved.
The fastest a pipeline can run is (bytes it must move) / (bandwidth of the memory), so the
bench reports, for each timed step, the bandwidth it achieved by the bytes model below and
that figure as a percentage of the copy bandwidth of this machine (a large tensor copy_,
counting the bytes read plus the bytes written, as STREAM does).

Bytes per fp32 element (halved for bf16/fp16 data and state, doubled for fp64):
  clip_grad_norm_                    12  read grads for the norm (4), read + write to scale (8)
  gradfast clip + Adam, fused        32  read grads for the norm (4); one pass: read grad,
                                         param, exp_avg, exp_avg_sq (16), write the 3 (12)
  torch clip + Adam(fused=True)      40  clip (12) + fused step (28)
  torch clip + Adam(foreach)         84  clip (12) + _foreach_lerp_ m (12), _foreach_mul_ v (8),
                                         _foreach_addcmul_ v (12), sqrt (8), div_ (8), add_ (8),
                                         addcdiv_ p (16)
  torch clip + AdamW(foreach)        92  as Adam, plus the decoupled decay p *= 1 - lr*wd (8)
  gradfast clip + SGD(momentum)      24  read grads for the norm (4); one pass: read grad,
                                         param, momentum_buffer (12), write param, buffer (8)
  torch clip + SGD(fused=True)       32  clip (12) + fused step (20)
  torch clip + SGD(foreach)          44  clip (12) + _foreach_mul_ buf (8), _foreach_add_ buf
                                         (12), _foreach_add_ p (12)
The default (for-loop) Adam moves at least as much as the foreach one; the model uses 84/92
(and 44 for the for-loop SGD).
These are the bytes a pipeline needs, not cache-line traffic. A figure over 100% of the copy
bandwidth is possible: a CPU copy also reads its destination into the cache before writing
it (write-allocate), which a read-mostly step (the norm pass) or an in-place update does not
pay, and part of a small model's data may still sit in a cache.
"""
from __future__ import annotations

import statistics
import time
from typing import Dict, List

import torch

# Bytes per fp32 element of each pipeline side (keys are used by pipelines.py).
BYTES_PER_FP32_ELEM: Dict[str, float] = {
    "clip": 12.0,
    "fused_clip_adam": 32.0,
    "clip+fused_adam": 40.0,
    "clip+foreach_adam": 84.0,
    "clip+foreach_adamw": 92.0,
    "fused_clip_sgd": 24.0,
    "clip+fused_sgd": 32.0,
    "clip+foreach_sgd": 44.0,
}


def bytes_moved(model: str, n_elems: int, dtype: torch.dtype) -> float:
    """Bytes the model says a step moves for n_elems elements of dtype."""
    elem = torch.empty((), dtype=dtype).element_size()
    return BYTES_PER_FP32_ELEM[model] * elem / 4.0 * n_elems


def gbps(n_bytes: float, ms: float) -> float:
    return n_bytes / (ms * 1e-3) / 1e9 if ms > 0 else float("nan")


def _copy_size_bytes(device: torch.device, llc_bytes: int) -> int:
    if device.type == "cuda":
        return 1 << 30  # 1 GiB each way: far above any L2
    # 8x the last-level cache, at least 256 MiB: DRAM, not cache.
    return max(256 << 20, 8 * llc_bytes)


@torch.no_grad()
def measure_copy_bandwidth(device: torch.device, repeats: int, llc_bytes: int) -> Dict[str, object]:
    """Median bandwidth of dst.copy_(src) on a large fp32 tensor, in GB/s (read + write)."""
    size = _copy_size_bytes(device, llc_bytes)
    n = size // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch of the pages, outside the timing
    samples: List[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(repeats)]
        for start, end in events:
            start.record()
            dst.copy_(src)
            end.record()
        torch.cuda.synchronize(device)
        samples = [start.elapsed_time(end) for start, end in events]
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            dst.copy_(src)
            samples.append((time.perf_counter() - t0) * 1e3)
    del src, dst
    med = statistics.median(samples)
    return {
        "bytes_per_copy": 2 * size,
        "tensor_bytes": size,
        "samples_ms": samples,
        "median_ms": med,
        "GBps": gbps(2 * size, med),
    }


def combine(measurements: List[Dict[str, object]]) -> Dict[str, object]:
    """One copy bandwidth from several measurements of a run: the median of all samples."""
    samples = [s for m in measurements for s in m["samples_ms"]]
    bytes_per_copy = measurements[0]["bytes_per_copy"]
    med = statistics.median(samples)
    return {
        "GBps": gbps(bytes_per_copy, med),
        "median_ms": med,
        "bytes_per_copy": bytes_per_copy,
        "per_measurement_GBps": [m["GBps"] for m in measurements],
        "measurements": measurements,
    }
