"""`python -m gradfast.bench.distributed --ranks N`: gradfast against torch on an FSDP2 model
spawned on N ranks (gloo on CPU by default; --backend nccl --device cuda on GPUs).

Times clip_grad_norm_ (and clip + AdamW when gradfast.optim takes DTensor parameters) side
by side in one run, median of interleaved repeats, and records the collectives per step
(CommDebugMode) and the bytes each rank sends. Writes a table (stdout and Markdown), JSON
and, with matplotlib, a PNG.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m gradfast.bench.distributed",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--backend", default="gloo")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--params", type=int, default=400, help="parameters (weights + biases)")
    ap.add_argument("--width", type=int, default=32, help="features of each Linear layer")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--steps", type=int, default=5, help="calls per timed block")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--out", default=None, help="results folder (default "
                    "benchmarks/results/distributed-<device>-<date>)")
    return ap.parse_args(argv)


def _rank_main(rank: int, args: argparse.Namespace, port: int, out_path: str) -> None:
    from .distributed_rank import run_rank
    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(args.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=args.ranks)
    device = torch.device(args.device, rank) if args.device == "cuda" else torch.device("cpu")
    try:
        result = run_rank(args.params, args.width, args.repeats, args.steps, device)
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(result, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def table(doc: Dict[str, Any]) -> str:
    head = ["workload", "torch ms/step", "gradfast ms/step", "speedup",
            "torch CPU ms", "gradfast CPU ms", "CPU ratio",
            "collectives torch", "collectives gradfast", "bytes torch", "bytes gradfast"]
    rows = []
    for name, rec in doc["result"]["workloads"].items():
        t, g = rec["torch"], rec["gradfast"]
        rows.append([name, f"{t['median_s'] * 1e3:.3f}", f"{g['median_s'] * 1e3:.3f}",
                     f"{rec['speedup']:.2f}x", f"{t['median_cpu_s'] * 1e3:.3f}",
                     f"{g['median_cpu_s'] * 1e3:.3f}",
                     f"{t['median_cpu_s'] / g['median_cpu_s']:.2f}x",
                     str(t["collectives_per_step"]),
                     str(g["collectives_per_step"]), str(t["bytes_per_step"]),
                     str(g["bytes_per_step"])])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plot(doc: Dict[str, Any], path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(doc["result"]["workloads"])
    recs = [doc["result"]["workloads"][n] for n in names]
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(1.8 + 2.2 * len(names), 3.6))
    ax.bar([i - 0.2 for i in x], [r["torch"]["median_s"] * 1e3 for r in recs], 0.4,
           label="torch")
    ax.bar([i + 0.2 for i in x], [r["gradfast"]["median_s"] * 1e3 for r in recs], 0.4,
           label="gradfast")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("ms per step (median)")
    cfg = doc["config"]
    ax.set_title(f"FSDP2, {doc['result']['n_params']} params, {cfg['ranks']} "
                 f"{cfg['backend']} ranks")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from .environment import describe
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out = args.out or os.path.join("benchmarks", "results", f"distributed-{args.device}-{date}")
    os.makedirs(out, exist_ok=True)
    raw = os.path.join(out, "rank0.json")
    mp.start_processes(_rank_main, args=(args, _free_port(), raw), nprocs=args.ranks,
                       start_method="spawn")
    with open(raw) as f:
        result = json.load(f)
    os.remove(raw)
    env = describe(torch.device(args.device))
    env["command"] = " ".join(["python", "-m", "gradfast.bench.distributed"] + sys.argv[1:])
    doc = {"config": vars(args), "environment": env, "result": result}
    with open(os.path.join(out, "distributed.json"), "w") as f:
        json.dump(doc, f, indent=1)
    text = table(doc)
    meta = (f"{args.ranks} {args.backend} ranks on {args.device}, {result['n_params']} "
            f"params ({result['elements']} elements), torch {torch.__version__}, commit "
            f"{env['git'].get('commit')}{' (dirty)' if env['git'].get('dirty') else ''}, "
            f"{env['machine']['cpu_model']}, median of {args.repeats} interleaved repeats "
            f"of {args.steps} steps")
    with open(os.path.join(out, "distributed.md"), "w") as f:
        f.write(meta + "\n\nwall: median ms per step on rank 0; CPU: rank 0's process CPU "
                "time per step (leaves out waiting to be scheduled on a loaded machine)\n\n"
                + text + "\n")
    png = plot(doc, os.path.join(out, "distributed.png"))
    print(meta)
    print("wall: median ms per step on rank 0; CPU: rank 0's process CPU time per step "
          "(leaves out waiting to be scheduled on a loaded machine)")
    print(text)
    print(f"written to {out}/ (distributed.json, distributed.md{', distributed.png' if png else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
