"""pytest glue for tools/cudasim: each simulated GPU as a back end of gradfast's native layer.

A SimDevice runs gradfast._native's own calls (the device tables, workspaces, structs and
launch arguments a GPU gets) with a Backend whose CUDA kernels take CPU tensors, and counts
the kernels each call starts. Nothing here re-implements a calling convention.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Dict, List, Optional

import torch

from gradfast._native import adam as native_adam
from gradfast._native import agc as native_agc
from gradfast._native import norm as native_norm
from gradfast._native.backend import Backend, use
from gradfast._native.group import TensorGroup
from gradfast._native.step import StepArgs

TOOLS = Path(__file__).resolve().parents[1] / "tools" / "cudasim"


def load_tool(name: str):
    """tools/cudasim/<name>.py as a module (loaded by path: no sys.path edit)."""
    spec = importlib.util.spec_from_file_location(f"cudasim_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def adam_args(amsgrad: bool, total: Optional[torch.Tensor] = None, lr=1e-3, lr_t=None,
              beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, wd_mode=0, l1=0.0,
              maximize=False, grad_scale=None, found_inf=None, clip=False, max_norm=0.0,
              skip_nonfinite=False, max_norm_t=None):
    """(AdamHyper, StepArgs) from the flat keywords the Adam tests use."""
    hyper = native_adam.AdamHyper(beta1, beta2, eps, weight_decay, l1, maximize, amsgrad,
                                  wd_mode)
    step = StepArgs(lr, lr_t, grad_scale, found_inf, total, clip, max_norm, max_norm_t,
                    skip_nonfinite)
    return hyper, step


def adam_lists(lists) -> "native_adam.AdamLists":
    return native_adam.AdamLists(*[list(lst) for lst in lists])


class SimDevice:
    """One simulated GPU (cudasim's device `index`) and gradfast's workspaces on it."""

    def __init__(self, sim, index: int) -> None:
        self.sim, self.index = sim, index
        self.backend = Backend(sim, simulated=index)
        self.launches = 0  # kernels the last call launched

    @property
    def workspaces(self) -> Dict[str, torch.Tensor]:
        return {kind: ws for (kind, _, _), ws in self.backend.workspaces.items()}

    def run(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) with the native layer on this device; counts its launches."""
        before = self.sim.launches()
        with use(self.backend):
            out = fn(*args, **kwargs)
        self.launches = self.sim.launches() - before
        return out

    def group(self, tensors: List[torch.Tensor]) -> TensorGroup:
        return TensorGroup(tensors, self.backend)

    # ---- clipping ----------------------------------------------------------------------
    def norm(self, tensors, kind: int, p: float, max_norm: float = 1.0, per_tensor: bool = True):
        """(total, per-tensor norms or None, clip coefficient), as native_norm.group_norm.
        per_tensor=False passes a null per-tensor output (the kernel's other branch)."""
        if per_tensor:
            return self.run(lambda: native_norm.group_norm(self.group(tensors), kind, p, max_norm))
        g = self.group(tensors)
        table = g.chunk_table()
        ws = g.workspace("norm", 0, self.sim.cuda_norm_workspace_bytes(*table.counts, g.code),
                         1 << 16)
        total, coef = g.new(()), g.new((), g.math_dtype)
        self.run(self.sim.cuda_multi_norm, *table.args(), g.code, kind, p, ws.data_ptr(), 0,
                 total.data_ptr(), coef.data_ptr(), max_norm, self.index, 0)
        return total, None, coef

    def scale_(self, tensors, coef: torch.Tensor) -> None:
        self.run(lambda: native_norm.group_scale_(self.group(tensors), coef))

    def clamp_(self, tensors, lo: float, hi: float) -> None:
        self.run(lambda: native_norm.group_clamp_(self.group(tensors), lo, hi))

    # ---- Adam --------------------------------------------------------------------------
    def adam(self, lists, amsgrad: bool, skipped=None, total=None, **hyper) -> None:
        h, step = adam_args(amsgrad, total, **hyper)
        self.run(native_adam.adam_step, adam_lists(lists), h, step, skipped)

    def clip_adam(self, lists, amsgrad: bool, kind: int, p: float, cooperative: bool = True,
                  skipped=None, **hyper):
        """clip_adam_step: (total, launches that ran)."""
        h, step = adam_args(amsgrad, None, **hyper)
        return self.run(native_adam.clip_adam_step, adam_lists(lists), h, step, skipped, p,
                        kind, cooperative)

    # ---- adaptive gradient clipping ----------------------------------------------------
    def agc_(self, params, grads, units, kind: int, p: float, clip_factor: float,
             eps: float) -> int:
        """native_agc.group_agc: the number of clipped units."""
        clipped = self.run(native_agc.group_agc, list(params), list(grads), list(units), kind,
                           p, clip_factor, eps)
        return int(clipped)
