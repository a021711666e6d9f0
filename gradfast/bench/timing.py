"""Timing: interleaved repeats with caches flushed, CUDA events, host time, kernel launches.

Method, for one pair (gradfast side A, torch side B):
- Repeats are interleaved A B A B ..., so a drift of the machine (another process, clock
  changes) hits both sides alike; the median and the spread (quartiles, min, max) are kept.
- Before each timed step, outside the timed region: the step's inputs are restored (the
  gradients, which torch's clipping scales in place), then the caches are flushed by writing
  a buffer larger than the last-level cache (CPU) or the L2 (GPU), as the backward pass
  that produces the gradients would.
- CPU: the time of the step by the wall clock (all of it is host work).
- GPU: the device time between two CUDA events recorded around the step (after a
  synchronisation, so the step starts on an idle device), and separately the host time the
  call takes to return (Python and C++ dispatch, launches; no synchronisation inside).
- GPU: kernel launches per step counted with torch.profiler (GPU kernels, memcpys, memsets
  seen by CUPTI), with the sum of the kernels' device durations.
"""
from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

Step = Callable[[], object]


def llc_bytes() -> int:
    """Size of the CPU's last-level cache from sysfs (32 MiB when it cannot be read)."""
    best_level, best_size = -1, 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            if not entry.startswith("index"):
                continue
            with open(os.path.join(base, entry, "level")) as f:
                level = int(f.read())
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            size = int(text.rstrip("KMG")) * mult
            if level > best_level or (level == best_level and size > best_size):
                best_level, best_size = level, size
    except (OSError, ValueError):
        pass
    return best_size or (32 << 20)


class CacheFlusher:
    """Evicts the caches by writing a buffer larger than them (2x the LLC / L2, >= 64 MiB)."""

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.device = device
        self.enabled = enabled
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            cache = int(getattr(props, "L2_cache_size", 0) or (50 << 20))
        else:
            cache = llc_bytes()
        self.cache_bytes = cache
        self.buffer_bytes = max(64 << 20, 2 * cache)
        self.buf = (torch.zeros(self.buffer_bytes // 4, dtype=torch.float32, device=device)
                    if enabled else None)

    def flush(self) -> None:
        if self.buf is not None:
            # Read-modify-write: every line is brought into the cache hierarchy and dirtied.
            self.buf.add_(1.0)

    def describe(self) -> Dict[str, object]:
        return dict(enabled=self.enabled, cache_bytes=self.cache_bytes,
                    buffer_bytes=self.buffer_bytes if self.enabled else 0)


def stats(samples: List[float]) -> Dict[str, float]:
    """Median, quartiles, min and max of a list of samples (ms)."""
    if not samples:
        return {}
    qs = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else [
        samples[0]] * 3
    return dict(median=statistics.median(samples), p25=qs[0], p75=qs[2], min=min(samples),
                max=max(samples), n=len(samples))


@dataclass
class SideTimes:
    """Raw samples of one side of a pair (ms): time (wall on CPU, CUDA events on GPU), host."""

    time_ms: List[float] = field(default_factory=list)
    host_ms: List[float] = field(default_factory=list)

    def summary(self) -> Dict[str, object]:
        return dict(time=stats(self.time_ms), host=stats(self.host_ms),
                    time_samples_ms=self.time_ms, host_samples_ms=self.host_ms)


class _Timer:
    def __init__(self, device: torch.device, flusher: CacheFlusher) -> None:
        self.device = device
        self.flusher = flusher
        self.cuda = device.type == "cuda"

    def once(self, step: Step, prepare: Step, out: SideTimes) -> None:
        prepare()
        self.flusher.flush()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            h0 = time.perf_counter()
            start.record()
            step()
            end.record()
            h1 = time.perf_counter()
            end.synchronize()
            out.time_ms.append(start.elapsed_time(end))
            out.host_ms.append((h1 - h0) * 1e3)
        else:
            t0 = time.perf_counter()
            step()
            t1 = time.perf_counter()
            out.time_ms.append((t1 - t0) * 1e3)
            out.host_ms.append((t1 - t0) * 1e3)


def time_pair(a: Step, prepare_a: Step, b: Step, prepare_b: Step, *, repeats: int,
              warmup: int, device: torch.device, flusher: CacheFlusher,
              budget_s: Optional[float] = None, min_repeats: int = 1,
              progress: Optional[Callable[[], None]] = None) -> Dict[str, SideTimes]:
    """Time steps a and b interleaved (A B A B ...), after `warmup` runs of each.

    prepare_* restore the inputs of the step before each run (outside the timed region).
    With budget_s, the number of repeats is lowered (not below min_repeats) so that the
    repeats take about budget_s by the warm-up's pace: slow steps get fewer samples and
    the run a bounded duration; the sample counts are in the results.
    Garbage collection is off while timing.
    """
    timer = _Timer(device, flusher)
    scratch = SideTimes()
    t0 = time.perf_counter()
    for _ in range(warmup):
        timer.once(a, prepare_a, scratch)
        timer.once(b, prepare_b, scratch)
    if budget_s is not None and warmup > 0:
        per_pair = (time.perf_counter() - t0) / warmup
        repeats = max(min(repeats, int(budget_s / max(per_pair, 1e-9))), min(min_repeats,
                                                                             repeats))
    out = {"gradfast": SideTimes(), "torch": SideTimes()}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            timer.once(a, prepare_a, out["gradfast"])
            timer.once(b, prepare_b, out["torch"])
            if progress is not None:
                progress()
    finally:
        if gc_was_enabled:
            gc.enable()
    return out


def count_launches(step: Step, prepare: Step, device: torch.device,
                   steps: int = 3) -> Optional[Dict[str, object]]:
    """GPU work items per step seen by torch.profiler (CUPTI): kernels, memcpys, memsets.

    Each step is profiled on its own, its inputs restored outside the profiled region; the
    median over `steps` steps is reported. None on CPU.
    """
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    per_step = []
    for _ in range(steps):
        prepare()
        torch.cuda.synchronize(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize(device)
        kernels = memcpy = memset = 0
        kernel_ns = 0
        names: Dict[str, int] = {}
        kinds: Dict[str, int] = {}
        for ev in prof.profiler.kineto_results.events():
            if ev.device_type() != torch.autograd.DeviceType.CUDA:
                continue
            name = ev.name()
            # libkineto's activity names: kernel, gpu_memcpy, gpu_memset,
            # gpu_user_annotation (record_function ranges: not work), ...
            kind = str(ev.activity_type()) if hasattr(ev, "activity_type") else ""
            kinds[kind] = kinds.get(kind, 0) + 1
            if kind == "gpu_memcpy" or (not kind and name.startswith("Memcpy")):
                memcpy += 1
            elif kind == "gpu_memset" or (not kind and name.startswith("Memset")):
                memset += 1
            elif kind == "kernel" or (not kind and not ev.is_user_annotation()):
                kernels += 1
                kernel_ns += ev.duration_ns()
                short = name if len(name) <= 80 else name[:77] + "..."
                names[short] = names.get(short, 0) + 1
        per_step.append(dict(kernels=kernels, memcpy=memcpy, memset=memset,
                             launches=kernels + memcpy + memset,
                             kernel_ms=kernel_ns / 1e6, kernel_names=names,
                             device_events_by_activity=kinds))
    per_step.sort(key=lambda d: d["launches"])
    chosen = per_step[len(per_step) // 2]
    chosen = dict(chosen)
    chosen["launches_per_profiled_step"] = [d["launches"] for d in per_step]
    return chosen
