"""Multi-process test harness: one spawn of N gloo ranks on 127.0.0.1 per test module.

A module defines `check*` functions (run, in definition order, inside every rank, with
torch.distributed initialised) and a module-scoped fixture calling run_checks(); each
pytest test then reads one check's per-rank outcome. A rank that fails a check records
the traceback and goes on; a collective that another rank never reaches times out (gloo
timeout) instead of hanging the suite.
"""
from __future__ import annotations

import datetime
import importlib
import json
import math
import os
import socket
import tempfile
import traceback
from typing import Callable, Dict, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

GLOO_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def list_checks(module_globals: dict, prefix: str = "check") -> List[str]:
    return [n for n, f in module_globals.items() if n.startswith(prefix) and callable(f)]


def _worker(rank: int, world: int, port: int, module: str, outdir: str, prefix: str,
            backend: str) -> None:
    torch.set_num_threads(1)  # N ranks share this box's 2 cores
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world,
                            timeout=datetime.timedelta(seconds=GLOO_TIMEOUT_S))
    mod = importlib.import_module(module)
    results: Dict[str, str] = {}
    for name in list_checks(vars(mod), prefix):
        torch.manual_seed(1234)
        try:
            getattr(mod, name)()
            results[name] = "ok"
        except BaseException:  # noqa: BLE001 - recorded, reported by the pytest test
            results[name] = traceback.format_exc()
        with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


def run_checks(module: str, world: int, timeout_s: float = 300.0,
               prefix: str = "check", backend: str = "gloo") -> List[Dict[str, str]]:
    """Spawn `world` ranks running module's checks (functions named prefix*);
    [per-rank {check: "ok" | traceback}]."""
    with tempfile.TemporaryDirectory() as outdir:
        ctx = mp.start_processes(_worker, args=(world, free_port(), module, outdir, prefix, backend),
                                 nprocs=world, join=False, start_method="spawn")
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout_s)
        error = None
        try:
            while not ctx.join(timeout=5):
                if datetime.datetime.now() > deadline:
                    error = f"ranks still running after {timeout_s} s"
                    break
        except Exception as exc:  # a rank died: report what the others recorded
            error = repr(exc)
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        out = []
        for r in range(world):
            path = os.path.join(outdir, f"rank{r}.json")
            res = json.load(open(path)) if os.path.exists(path) else {}
            if error:
                res["__spawn__"] = error
            out.append(res)
        return out


def assert_check(results: List[Dict[str, str]], name: str) -> None:
    failures = []
    for rank, res in enumerate(results):
        outcome = res.get(name)
        if outcome != "ok":
            failures.append(f"rank {rank}: {outcome or 'not run'} {res.get('__spawn__', '')}")
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------ oracles, inside ranks

def full64(tensors) -> List[torch.Tensor]:
    """fp64 copies of the full (unsharded) tensors; DTensors gathered with full_tensor()."""
    from torch.distributed.tensor import DTensor
    return [(t.full_tensor() if isinstance(t, DTensor) else t).detach().double().clone()
            for t in tensors]


def ref_norm(full: List[torch.Tensor], p: float) -> float:
    x = torch.cat([t.reshape(-1) for t in full]) if full else torch.zeros(0, dtype=torch.float64)
    if p == 0:
        return float(torch.count_nonzero(x))
    return torch.linalg.vector_norm(x, p).item()


def local_value(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor
    return t._local_tensor if isinstance(t, DTensor) else t


def assert_bitwise_same_on_all_ranks(t: torch.Tensor, group=None) -> None:
    """all_gather of the raw bits: every rank holds exactly the same value."""
    x = local_value(t).detach().reshape(-1).contiguous()
    ints = {8: torch.int64, 4: torch.int32, 2: torch.int16}[x.element_size()]
    bits = x.view(ints).to(torch.int64)
    gathered = [torch.empty_like(bits) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, bits, group=group)
    for r, g in enumerate(gathered):
        assert torch.equal(g, bits), f"rank {r} holds {g.tolist()}, this rank {bits.tolist()}"


def collectives(fn: Callable):
    """(fn's result, number of collectives it issued), counted by CommDebugMode."""
    from torch.distributed.tensor.debug import CommDebugMode
    with CommDebugMode() as mode:
        out = fn()
    return out, mode.get_total_counts()


def assert_close_norm(got: float, ref: float, rtol: float, what: str = "") -> None:
    if math.isnan(ref) or math.isinf(ref):
        assert (math.isnan(got) and math.isnan(ref)) or got == ref, f"{what}: {got} vs {ref}"
        return
    assert abs(got - ref) <= rtol * abs(ref) + 1e-30, f"{what}: {got} vs fp64 {ref}"


def ulp(x: float, dtype: torch.dtype) -> float:
    fi = torch.finfo(dtype)
    if x == 0 or not math.isfinite(x):
        return fi.smallest_normal * fi.eps
    _, e = math.frexp(abs(x))
    return math.ldexp(fi.eps, e - 1)
