"""python -m gradfast.bench: gradfast against stock PyTorch, with a roofline, a table and a plot.

For each workload (gradient shapes of real models), dtype and pipeline (clip_grad_norm_;
clip + Adam; clip + AdamW, each against torch's default, foreach and fused Adam), the bench
1. runs gradfast and torch once from the same inputs and checks that they agree,
2. times them interleaved (A B A B ...), caches flushed before every step,
3. relates the times to the bytes each step must move and to this machine's copy bandwidth,
and writes a JSON file with every raw figure, a Markdown table and a PNG plot.
See benchmarks/README.md for the method and how to read the numbers.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import sys
import time
from typing import Any, Dict, List, Optional

import torch

from . import checks, environment, pipelines, report, roofline, timing, workloads

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
          "fp64": torch.float64}

# Repeats per side: (default, quick); workloads under SMALL_ELEMS get SMALL_FACTOR times as
# many (they take about a millisecond, and are the noisiest).
REPEATS = {"cpu": (9, 4), "cuda": (30, 10)}
SMALL_ELEMS = 2_000_000
SMALL_FACTOR = 3
# Unless --repeats is given, a pair whose steps are slow gets fewer repeats (not below
# MIN_REPEATS), about PAIR_BUDGET_S seconds of them: this bounds the run's duration
# (default under 2 minutes on a 2-core CPU) whatever the machine.
PAIR_BUDGET_S = {("cpu", False): 1.2, ("cpu", True): 0.4, ("cuda", False): 3.0,
                 ("cuda", True): 1.0}
MIN_REPEATS = {False: 5, True: 3}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m gradfast.bench",
        description="Benchmark gradfast against stock PyTorch (clip_grad_norm_, clip + "
                    "Adam/AdamW) with correctness checks, a memory roofline, a table, JSON, "
                    "Markdown and a PNG plot.")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda when gradfast can use a CUDA device, else cpu")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="fewer workloads and repeats (about 20 s on a 2-core CPU)")
    mode.add_argument("--full", action="store_true",
                      help="more sizes (GPT-2 small on CPU, GPT-2 medium on CUDA)")
    p.add_argument("--dtype", default="fp32,bf16",
                   help="comma-separated dtypes among fp32, bf16, fp16, fp64 (default fp32,bf16)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per side (default: cpu 9, cuda 30; quick 4 / 10; "
                        f"x{SMALL_FACTOR} for workloads under {SMALL_ELEMS // 10**6}M elements)")
    p.add_argument("--out", default="gradfast-bench-results",
                   help="output directory (default ./gradfast-bench-results)")
    p.add_argument("--workloads", default=None,
                   help="advanced: comma-separated workloads instead of the default set ("
                        + ", ".join(workloads.WORKLOADS) + ")")
    p.add_argument("--pipelines", default=None,
                   help="advanced: comma-separated pipelines or families (clip, adam, adamw, sgd, "
                        "adam/fused, ...); default all")
    p.add_argument("--no-flush", action="store_true",
                   help="advanced: do not flush the caches between repeats")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def gradfast_cuda_usable() -> bool:
    import gradfast

    try:
        return bool(gradfast.show_config().get("cuda_device_usable"))
    except Exception:
        return False


def _device(args: argparse.Namespace) -> torch.device:
    if args.device is None:
        return torch.device("cuda") if gradfast_cuda_usable() else torch.device("cpu")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device")
        if not gradfast_cuda_usable():
            raise SystemExit("--device cuda: gradfast cannot use a CUDA device (built without "
                             "its CUDA kernels? see `python -m gradfast info`)")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _Progress:
    """A tqdm bar when tqdm is installed, else plain lines."""

    def __init__(self, total: int) -> None:
        self.bar = None
        if not sys.stderr.isatty():
            return  # logs: the per-pipeline lines are the progress
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<"
                                       "{remaining}] {postfix}")
        except ImportError:
            self.bar = None

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def _run_pipeline(*args: Any) -> Dict[str, Any]:
    """Check, time and count one pipeline on one workload and dtype: its result record."""
    sides: Dict[str, pipelines.Side] = {}
    try:
        return _check_and_time(sides, *args)
    finally:
        for side in sides.values():
            side.close()


def _check_and_time(sides: Dict[str, pipelines.Side], pipe: pipelines.Pipeline,
                    wl: workloads.Workload, dtype_name: str, params0: List[torch.Tensor],
                    grads0: List[torch.Tensor], device: torch.device,
                    flusher: timing.CacheFlusher, repeats: int,
                    budget: Optional[Dict[str, Any]], buffers: pipelines.Buffers,
                    progress: _Progress) -> Dict[str, Any]:
    dtype = DTYPES[dtype_name]
    t_start = time.perf_counter()
    record: Dict[str, Any] = dict(
        workload=wl.name, dtype=dtype_name, n_tensors=wl.n_tensors, n_elems=wl.n_elems,
        pipeline=pipe.key, label=pipe.label, torch_side=pipe.torch_desc, status=None,
        reason=None, check=None, gradfast=None, torch=None, speedup=None)
    reason = pipe.unavailable_reason()
    if reason is not None:
        record.update(status="skipped", reason=reason)
        progress.advance(repeats + 1)
        return record
    if pipe.family != "clip":
        impl = pipe.variant if pipe.variant != "default" else pipelines.torch_default_impl(
            pipe.family, params0)
        record["torch_impl"] = impl
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # 1. Correctness: each side once from the same inputs, compared.
    for name in ("gradfast", "torch"):
        try:
            sides[name] = pipe.build(name, params0, grads0, buffers)
            sides[name].restore_grads()
            sides[name].step()
        except Exception as exc:  # a side that cannot run this configuration
            record.update(status="error", reason=f"{name} side raised {type(exc).__name__}: "
                                                 f"{exc}")
            progress.write(f"ERROR {wl.name} {dtype_name} {pipe.label}: {record['reason']}")
            progress.advance(repeats + 1)
            return record
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result = pipe.check(sides["gradfast"], sides["torch"], dtype)
    record["check"] = result.as_dict()
    progress.advance(1)
    if not result.passed:
        record.update(status="check_failed", reason=result.summary())
        progress.write(f"check {wl.name} {dtype_name} {pipe.label}: FAILED, not timed; "
                       f"{result.summary()}")
        progress.advance(repeats)
        return record
    progress.write(f"check {wl.name} {dtype_name} {pipe.label}: pass; {result.summary()}")
    # 2. Timing, interleaved, caches flushed; 3. launches on GPU.
    gf, tv = sides["gradfast"], sides["torch"]
    times = timing.time_pair(gf.step, gf.restore_grads, tv.step, tv.restore_grads,
                             repeats=repeats, warmup=1, device=device, flusher=flusher,
                             progress=progress.advance, **(budget or {}))
    progress.advance(repeats - len(times["gradfast"].time_ms))
    record["gradfast"] = times["gradfast"].summary()
    record["torch"] = times["torch"].summary()
    for name, side in (("gradfast", gf), ("torch", tv)):
        record[name]["launches"] = timing.count_launches(side.step, side.restore_grads, device)
    ratios = [t / g for g, t in zip(times["gradfast"].time_ms, times["torch"].time_ms) if g > 0]
    record["speedup_paired"] = timing.stats(ratios)
    record["speedup"] = (record["torch"]["time"]["median"] / record["gradfast"]["time"]["median"])
    record["status"] = "ok"
    record["wall_s"] = time.perf_counter() - t_start
    if device.type == "cuda":
        # Both sides' parameters, gradients and optimizer state, the inputs and the check.
        record["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    return record


def _add_roofline(record: Dict[str, Any], pipe: pipelines.Pipeline, copy_gbps: float) -> None:
    if record["status"] != "ok":
        return
    dtype = DTYPES[record["dtype"]]
    for side, model in (("gradfast", pipe.gf_bytes), ("torch", pipe.torch_bytes)):
        n_bytes = roofline.bytes_moved(model, record["n_elems"], dtype)
        achieved = roofline.gbps(n_bytes, record[side]["time"]["median"])
        record[side]["bytes_model"] = model
        record[side]["bytes_per_step"] = n_bytes
        record[f"{side}_GBps"] = achieved
        record[f"{side}_pct_copy"] = 100.0 * achieved / copy_gbps
        record[f"{side}_roofline_ms"] = n_bytes / (copy_gbps * 1e9) * 1e3


def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    device = _device(args)
    mode = "quick" if args.quick else "full" if args.full else "default"
    dtype_names = [d.strip() for d in args.dtype.split(",") if d.strip()]
    bad = [d for d in dtype_names if d not in DTYPES]
    if bad or not dtype_names:
        raise SystemExit(f"--dtype: unknown {bad}; choose among {list(DTYPES)}")
    wls = workloads.select(device.type, mode,
                           args.workloads.split(",") if args.workloads else None)
    pipes = pipelines.select(args.pipelines.split(",") if args.pipelines else None)
    base, quick = REPEATS[device.type]
    repeats = args.repeats or (quick if args.quick else base)
    repeats_small = args.repeats or repeats * SMALL_FACTOR
    budget = None if args.repeats else dict(
        budget_s=PAIR_BUDGET_S[(device.type, bool(args.quick))],
        min_repeats=MIN_REPEATS[bool(args.quick)])
    torch.manual_seed(args.seed)

    env = environment.describe(device)
    flusher = timing.CacheFlusher(device, enabled=not args.no_flush)
    llc = timing.llc_bytes()
    copy_reps = 25 if device.type == "cuda" else (5 if args.quick else 9)

    def reps_for(wl: workloads.Workload) -> int:
        return repeats_small if wl.n_elems < SMALL_ELEMS else repeats

    total = sum((reps_for(w) + 1) * len(pipes) * len(dtype_names) for w in wls) + 2
    progress = _Progress(total)
    skipped_reasons: Dict[str, bool] = {}
    for pipe in pipes:
        why = pipe.unavailable_reason()
        if why is not None and why not in skipped_reasons:
            skipped_reasons[why] = True
            names = ", ".join(p.key for p in pipes if p.unavailable_reason() == why)
            progress.write(f"skipping {names}: {why}")

    other_load = environment.OtherLoad()
    busy = environment.cpu_busy_fraction(1.0) if device.type == "cpu" else None
    env["machine"]["cpu_busy_before_run"] = busy
    if busy is not None and busy > 0.25:
        warning = (f"the machine is busy (other processes used {100 * busy:.0f}% of the CPUs "
                   f"just before the run): CPU timings will be noisy; rerun when it is idle")
        env["warnings"] = [warning]
        progress.write(f"warning: {warning}")
    progress.describe("copy bandwidth")
    copies = [roofline.measure_copy_bandwidth(device, copy_reps, llc)]
    progress.advance()
    results: List[Dict[str, Any]] = []
    try:
        for wl in wls:
            for dtype_name in dtype_names:
                progress.describe(f"{wl.name} {dtype_name}: generating")
                params0, grads0 = workloads.make_tensors(wl, DTYPES[dtype_name], device,
                                                         seed=args.seed)
                buffers = pipelines.Buffers(params0)
                for pipe in pipes:
                    progress.describe(f"{wl.name} {dtype_name} {pipe.label}")
                    results.append(_run_pipeline(pipe, wl, dtype_name, params0, grads0, device,
                                                 flusher, reps_for(wl), budget, buffers,
                                                 progress))
                    _empty_cache(device)
                del params0, grads0, buffers
                _empty_cache(device)
        progress.describe("copy bandwidth")
        copies.append(roofline.measure_copy_bandwidth(device, copy_reps, llc))
        progress.advance()
    finally:
        progress.close()
    copy_bw = roofline.combine(copies)
    for r in results:
        _add_roofline(r, pipelines.PIPELINES[r["pipeline"]], copy_bw["GBps"])

    env["machine"]["load_average_at_end"] = environment.load_average()
    env["machine"]["cpu_used_by_other_processes_during_run"] = other_load.fraction()
    n_failed = sum(r["status"] in ("check_failed", "error") for r in results)
    doc: Dict[str, Any] = {
        "schema": 1,
        "environment": env,
        "settings": dict(device=device.type, device_index=device.index, mode=mode,
                         dtypes=dtype_names, workloads=[w.name for w in wls],
                         pipelines=[p.key for p in pipes], repeats=repeats,
                         repeats_small=repeats_small, small_elems=SMALL_ELEMS, warmup=1,
                         repeat_budget=budget,
                         max_norm=pipelines.MAX_NORM, lr=pipelines.LR,
                         grad_norm_of_inputs=workloads.GRAD_NORM, seed=args.seed,
                         tolerances={str(k).replace("torch.", ""): v
                                     for k, v in checks.TOLERANCES.items()}),
        "workloads": {w.name: dict(description=w.description, n_tensors=w.n_tensors,
                                   n_elems=w.n_elems, shapes=[list(s) for s in w.shapes])
                      for w in wls},
        "bytes_per_fp32_elem": roofline.BYTES_PER_FP32_ELEM,
        "copy_bandwidth": copy_bw,
        "flush": flusher.describe(),
        "check_summary": dict(
            passed=sum(r["status"] == "ok" for r in results), failed=n_failed,
            skipped=sum(r["status"] == "skipped" for r in results)),
        "results": results,
    }
    doc["runtime_s"] = time.perf_counter() - t_start

    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    paths = report.output_paths(args.out, device.type, stamp)
    png_problem = report.write_png(paths["png"], doc)
    report.write_markdown(paths["md"], doc,
                          os.path.basename(paths["png"]) if png_problem is None else None)
    report.write_json(paths["json"], doc)

    print(report.terminal_table(doc))
    print()
    print(f"finished in {doc['runtime_s']:.0f} s; outputs:")
    print(f"  JSON (every raw figure): {paths['json']}")
    print(f"  Markdown table:          {paths['md']}")
    if png_problem is None:
        print(f"  PNG plot:                {paths['png']}")
    else:
        print(f"  PNG plot: not written: {png_problem}")
    if n_failed:
        print(f"{n_failed} pipeline(s) failed their correctness check or raised: see above",
              file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
