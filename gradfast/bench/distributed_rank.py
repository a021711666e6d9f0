"""What each rank of `python -m gradfast.bench.distributed` runs: an FSDP2 model with a few
hundred parameters, and the gradfast/torch pairs timed side by side (interleaved repeats,
median), with the collectives and the bytes each one communicates per step.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.debug import CommDebugMode

# Far above any norm here: the coefficient is 1, so the timed steps leave the grads as they
# are (both sides still multiply every gradient, torch unconditionally, gradfast too).
NO_CLIP = 1e9


class CommBytes(CommDebugMode):
    """CommDebugMode that also sums the bytes of the tensors each collective sends."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        packet = getattr(func, "_overloadpacket", None)
        if out is not NotImplemented and packet is not None and (
                packet in self.comm_registry or packet in _c10d_ops()) and args:
            first = args[0]
            tensors = first if isinstance(first, (list, tuple)) else [first]
            self.bytes += sum(t.numel() * t.element_size() for t in tensors
                              if isinstance(t, torch.Tensor))
        return out


def _c10d_ops():
    from torch.distributed.tensor.debug._comm_mode import c10d_collective_ops
    return c10d_collective_ops


def make_model(n_params: int, width: int, device: torch.device) -> torch.nn.Module:
    """n_params // 2 Linear(width, width) layers (weight + bias), each its own FSDP2 unit."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(device.type, (dist.get_world_size(),), mesh_dim_names=("dp",))
    torch.manual_seed(0)
    layers = [torch.nn.Linear(width, width) for _ in range(n_params // 2)]
    model = torch.nn.Sequential(*layers).to(device)
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    torch.manual_seed(1 + dist.get_rank())
    model(torch.randn(4, width, device=device)).square().mean().backward()
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(sides: Dict[str, Callable[[], Any]], repeats: int, steps: int,
                     device: torch.device, warmup: int = 3
                     ) -> Tuple[Dict[str, List[float]], Dict[str, List[float]]]:
    """(wall seconds, this process's CPU seconds) per step of each side, `repeats` rounds,
    sides alternating within a round; every block starts from a barrier so the ranks time
    the same thing together. The CPU time leaves out the time a rank waits to be scheduled
    on a loaded machine (and for the other ranks), which the wall time includes."""
    for fn in sides.values():
        for _ in range(warmup):
            fn()
    wall: Dict[str, List[float]] = {name: [] for name in sides}
    cpu: Dict[str, List[float]] = {name: [] for name in sides}
    for r in range(repeats):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            _sync(device)
            dist.barrier()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                sides[name]()
            _sync(device)
            wall[name].append((time.perf_counter() - t0) / steps)
            cpu[name].append((time.process_time() - c0) / steps)
    return wall, cpu


def comm_of(fn: Callable[[], Any]) -> Tuple[int, int]:
    """(collectives, bytes sent by this rank) of one call of fn."""
    mode = CommBytes()
    with mode:
        fn()
    return mode.get_total_counts(), mode.bytes


def workloads(model: torch.nn.Module) -> Dict[str, Dict[str, Callable[[], Any]]]:
    import gradfast
    params = list(model.parameters())
    out = {
        "clip_grad_norm_": {
            "torch": lambda: torch.nn.utils.clip_grad_norm_(params, NO_CLIP),
            "gradfast": lambda: gradfast.clip_grad_norm_(params, NO_CLIP),
        },
        "clip_grad_norm_ inf": {
            "torch": lambda: _torch_inf_clip(params),
            "gradfast": lambda: gradfast.clip_grad_norm_(params, NO_CLIP, float("inf")),
        },
    }
    out.update(optimizer_workloads(params))
    return out


def _torch_inf_clip(params):
    # torch's inf norm of uneven FSDP2 shards raises on a rank with an empty shard; the
    # model here shards evenly, so it runs (and returns a Partial(max) DTensor).
    return torch.nn.utils.clip_grad_norm_(params, NO_CLIP, float("inf"))


def optimizer_workloads(params) -> Dict[str, Dict[str, Callable[[], Any]]]:
    """clip + AdamW steps, when gradfast.optim takes DTensor parameters."""
    import gradfast
    try:
        gf_opt = gradfast.optim.AdamW(params, lr=1e-9, max_grad_norm=NO_CLIP)
        gf_opt.step()
    except Exception:  # noqa: BLE001 - not supported by this gradfast build
        return {}
    th_opt = torch.optim.AdamW(params, lr=1e-9, fused=True)

    def torch_step():
        torch.nn.utils.clip_grad_norm_(params, NO_CLIP)
        th_opt.step()

    return {"clip + AdamW step": {"torch": torch_step, "gradfast": gf_opt.step}}


def run_rank(n_params: int, width: int, repeats: int, steps: int,
             device: torch.device) -> Dict[str, Any]:
    model = make_model(n_params, width, device)
    params = list(model.parameters())
    assert all(isinstance(p.grad, DTensor) for p in params)
    results: Dict[str, Any] = {}
    for name, sides in workloads(model).items():
        times, cpu = time_interleaved(sides, repeats, steps, device)
        rec: Dict[str, Any] = {}
        for side, fn in sides.items():
            n, nbytes = comm_of(fn)
            rec[side] = {"median_s": statistics.median(times[side]), "times_s": times[side],
                         "median_cpu_s": statistics.median(cpu[side]), "cpu_s": cpu[side],
                         "collectives_per_step": n, "bytes_per_step": nbytes}
        rec["speedup"] = rec["torch"]["median_s"] / rec["gradfast"]["median_s"]
        results[name] = rec
    return {"n_params": len(params),
            "elements": sum(p.numel() for p in params),
            "workloads": results}
