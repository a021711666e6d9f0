"""The fused SGD step of one (device, dtype) group (csrc/gradfast/sgd_math.h).

One pass per group: one launch on CUDA, one multi-threaded pass on the CPU; with clipping,
the norm (norm.py) comes first and the step reads it from device memory. Nothing here
synchronises with the device.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch

from .group import DeviceTable, TensorGroup, bump_versions
from .op import NativeOp
from .step import STEP_SCHEMA, StepArgs, ptr, step_structs


class SgdLists(NamedTuple):
    """The tensors of one group's step, index i for parameter i. Without momentum the last
    two lists are empty. first_flags[i] is an int32 0-d tensor on the group's device,
    nonzero while parameter i has no momentum history (torch's `momentum_buffer is None`):
    its next step that is not skipped initialises the buffer and zeroes the flag, on the
    device (csrc/cpu/sgd_cpu.h, csrc/cuda/sgd_cuda.h)."""
    params: List[torch.Tensor]
    grads: List[torch.Tensor]
    momentum_buffers: List[torch.Tensor]
    first_flags: List[torch.Tensor]

    def written(self, unscale: bool) -> List[torch.Tensor]:
        """What the kernel writes (GradScaler: the unscaled grads are written back)."""
        out = self.params + self.momentum_buffers + self.first_flags
        return out + self.grads if unscale else out


class SgdHyper(NamedTuple):
    """One param group's hyperparameters for one step: the core's SgdHyper and SgdFlags."""
    momentum: float
    dampening: float
    weight_decay: float
    l1: float
    nesterov: bool
    maximize: bool

    def structs(self, lib, unscale: bool):
        hyper = lib.SgdHyper(momentum=self.momentum, dampening=self.dampening,
                             weight_decay=self.weight_decay, l1=self.l1,
                             nesterov=bool(self.nesterov), maximize=bool(self.maximize))
        flags = lib.SgdFlags(momentum=self.momentum != 0.0, nesterov=bool(self.nesterov),
                             wd=self.weight_decay != 0.0, l1=self.l1 != 0.0, unscale=unscale)
        return hyper, flags


class SgdGroup(TensorGroup):
    """A TensorGroup of parameters with their grads and SGD state."""

    __slots__ = ("lists",)

    def __init__(self, lists: SgdLists, backend=None) -> None:
        super().__init__(lists.params, backend)
        self.lists = lists

    def sgd_table(self) -> DeviceTable:
        """The device table of csrc/cuda/sgd_cuda.h: rows of param, grad, momentum buffer and
        first-flag pointers (0 when unused), the element counts, then n+1 first-tile offsets
        (every tensor owns at least one tile), cached."""
        lists = self.lists
        n = len(lists.params)
        rows = [[t.data_ptr() for t in lst] for lst in (lists.params, lists.grads)]
        rows.append([t.data_ptr() for t in lists.momentum_buffers] or [0] * n)
        rows.append([t.data_ptr() for t in lists.first_flags] or [0] * n)
        return self.tile_table("sgd", rows, self.lib.SGD_TILE_ELEMS)

    def sgd_workspace(self, stream: int, n: int) -> torch.Tensor:
        return self.workspace("sgd", stream, self.lib.cuda_sgd_workspace_bytes(n), 1 << 12)


def sgd_step(lists: SgdLists, hyper: SgdHyper, step: StepArgs,
             skipped: Optional[torch.Tensor], host: Optional[tuple] = None,
             norm: Optional[Tuple[int, float]] = None) -> Optional[torch.Tensor]:
    """One fused step of one group. skipped: the int64 counter the step increments when it
    skips (found_inf, or a non-finite norm with skip_nonfinite), or None.
    host: (param, momentum buffer, first flag pointers, element counts) of a CPU group when
    the caller keeps them (gradfast.optim's step plans); the grads' are always read.
    norm: as adam.adam_step's (CPU only): the global norm of the grads first, returned."""
    g = SgdGroup(lists)
    lib = g.lib
    h, f, c, total, kind, p, unscale = step_structs(g, hyper, step, norm, "sgd_step")
    if g.cuda:
        table = g.sgd_table()
        stream = g.stream()
        ws = g.sgd_workspace(stream, table.counts[0])
        lib.cuda_sgd_step(*table.args(), g.code, h, f, c, ptr(skipped), ws.data_ptr(), g.index,
                          stream)
    else:
        if host is None:
            host = ([t.data_ptr() for t in lists.params],
                    [t.data_ptr() for t in lists.momentum_buffers],
                    [t.data_ptr() for t in lists.first_flags], g.numels)
        p_ptrs, buf_ptrs, flag_ptrs, numels = host
        lib.cpu_sgd_step(p_ptrs, [t.data_ptr() for t in lists.grads], buf_ptrs, flag_ptrs,
                         numels, g.code, h, f, c, ptr(skipped), torch.get_num_threads(), kind,
                         p)
    bump_versions(lists.written(unscale))
    return total


# ---- the op (torch.compile sees it; eager calls run sgd_step directly) ------------------

def _sgd_impl(params, grads, momentum_buffers, first_flags, skipped, hyper, step_tensors,
              step_scalars, step_switches) -> None:
    sgd_step(SgdLists(params, grads, momentum_buffers, first_flags), SgdHyper(*hyper),
             StepArgs.from_lists(step_tensors, step_scalars, step_switches),
             skipped[0] if skipped else None)


_sgd_op = NativeOp(
    "sgd_step_",
    "(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers, "
    f"Tensor(d!)[] first_flags, Tensor(e!)[] skipped, float[] hyper, {STEP_SCHEMA}) -> ()",
    _sgd_impl, lambda *args: None)


def sgd_step_op(lists: SgdLists, hyper: SgdHyper, step: StepArgs,
                skipped: Optional[torch.Tensor], host: Optional[tuple] = None) -> None:
    """sgd_step, through the custom op under torch.compile."""
    if not torch.compiler.is_compiling():
        return sgd_step(lists, hyper, step, skipped, host)
    _sgd_op(*lists, [skipped] if skipped is not None else [],
            [float(x) for x in hyper], step.tensors(), step.scalars(), step.switches())
