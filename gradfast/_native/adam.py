"""The fused Adam/AdamW step of one (device, dtype) group (csrc/gradfast/adam_math.h).

One pass per group: one launch on CUDA, one multi-threaded pass on the CPU; with clipping,
the norm (norm.py) comes first and the step reads it from device memory. Nothing here
synchronises with the device.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch

from .group import DeviceTable, TensorGroup, bump_versions
from .op import NativeOp
from .step import STEP_SCHEMA, StepArgs, control, hyper_structs, ptr, step_structs


class AdamLists(NamedTuple):
    """The tensors of one group's step, index i for parameter i. Steps are fp32 0-d tensors;
    max_exp_avg_sqs is empty without amsgrad."""
    params: List[torch.Tensor]
    grads: List[torch.Tensor]
    exp_avgs: List[torch.Tensor]
    exp_avg_sqs: List[torch.Tensor]
    max_exp_avg_sqs: List[torch.Tensor]
    steps: List[torch.Tensor]

    def written(self, unscale: bool) -> List[torch.Tensor]:
        """What the kernel writes (GradScaler: the unscaled grads are written back)."""
        out = self.params + self.exp_avgs + self.exp_avg_sqs + self.max_exp_avg_sqs + self.steps
        return out + self.grads if unscale else out


class AdamHyper(NamedTuple):
    """One param group's hyperparameters for one step: the core's AdamHyper and AdamFlags."""
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    l1: float
    maximize: bool
    amsgrad: bool
    wd_mode: int  # the core's WeightDecayMode: 0 none, 1 L2 (Adam), 2 decoupled (AdamW)

    def structs(self, lib, unscale: bool):
        hyper = lib.AdamHyper(beta1=self.beta1, beta2=self.beta2, eps=self.eps,
                              weight_decay=self.weight_decay, l1=self.l1,
                              maximize=bool(self.maximize))
        flags = lib.AdamFlags(amsgrad=bool(self.amsgrad), wd=lib.WeightDecayMode(int(self.wd_mode)),
                              l1=self.l1 != 0.0, unscale=unscale)
        return hyper, flags


class AdamGroup(TensorGroup):
    """A TensorGroup of parameters with their grads and Adam state."""

    __slots__ = ("lists",)

    def __init__(self, lists: AdamLists, backend=None) -> None:
        super().__init__(lists.params, backend)
        self.lists = lists

    def adam_table(self) -> DeviceTable:
        """The device table of csrc/cuda/adam_cuda.h: rows of param, grad, exp_avg,
        exp_avg_sq, max_exp_avg_sq (0 when unused) and step pointers, the element counts,
        then n+1 first-tile offsets (every tensor owns at least one tile), cached."""
        lists = self.lists
        n = len(lists.params)
        rows = [[t.data_ptr() for t in lst] for lst in
                (lists.params, lists.grads, lists.exp_avgs, lists.exp_avg_sqs)]
        rows.append([t.data_ptr() for t in lists.max_exp_avg_sqs] or [0] * n)
        rows.append([t.data_ptr() for t in lists.steps])
        return self.tile_table("adam", rows, self.lib.ADAM_TILE_ELEMS)

    def adam_workspace(self, stream: int, n: int) -> torch.Tensor:
        return self.workspace("adam", stream, self.lib.cuda_adam_workspace_bytes(n), 1 << 12)


def adam_step(lists: AdamLists, hyper: AdamHyper, step: StepArgs,
              skipped: Optional[torch.Tensor], host: Optional[tuple] = None,
              norm: Optional[Tuple[int, float]] = None) -> Optional[torch.Tensor]:
    """One fused step of one group. skipped: the int64 counter the step increments when it
    skips (found_inf, or a non-finite norm with skip_nonfinite), or None.
    host: (param, exp_avg, exp_avg_sq, max_exp_avg_sq, step pointers, element counts) of a
    CPU group when the caller keeps them (gradfast.optim's step plans, which check the
    parameters' pointers every step); the grads' are always read.
    norm: (NormKind code, order) on the CPU, when the group holds every grad of the step:
    the same call first computes their global norm (step.total is ignored) and returns it,
    bitwise norm.group_total's; otherwise None is returned."""
    g = AdamGroup(lists)
    lib = g.lib
    h, f, c, total, kind, p, unscale = step_structs(g, hyper, step, norm, "adam_step")
    if g.cuda:
        table = g.adam_table()
        stream = g.stream()
        ws = g.adam_workspace(stream, table.counts[0])
        lib.cuda_adam_step(*table.args(), g.code, h, f, c, ptr(skipped), ws.data_ptr(), g.index,
                           stream)
    else:
        if host is None:
            host = ([t.data_ptr() for t in lists.params], [t.data_ptr() for t in lists.exp_avgs],
                    [t.data_ptr() for t in lists.exp_avg_sqs],
                    [t.data_ptr() for t in lists.max_exp_avg_sqs],
                    [t.data_ptr() for t in lists.steps], g.numels)
        p_ptrs, m_ptrs, v_ptrs, vmax_ptrs, step_ptrs, numels = host
        lib.cpu_adam_step(p_ptrs, [t.data_ptr() for t in lists.grads], m_ptrs, v_ptrs, vmax_ptrs,
                          step_ptrs, numels, g.code, h, f, c, ptr(skipped),
                          torch.get_num_threads(), kind, p)
    bump_versions(lists.written(unscale))
    return total


def clip_adam_step(lists: AdamLists, hyper: AdamHyper, step: StepArgs,
                   skipped: Optional[torch.Tensor], p: float, kind: int,
                   cooperative: bool = True) -> Tuple[torch.Tensor, int]:
    """The global norm of lists.grads and the step of one CUDA group holding every grad of
    the step, in one cooperative launch (opt-in, see gradfast.optim.adam): the norm is
    bitwise norm.group_norm's, the update bitwise adam_step's with that norm as the total
    (step.total is ignored).

    Returns (total, launches): the total norm (0-d, the grads' dtype) and the launches that
    ran: 1, or 2 when the device cannot launch cooperative kernels, the launch failed, or
    cooperative=False (the two-launch path then ran on the same outputs and workspaces)."""
    g = AdamGroup(lists)
    lib = g.lib
    unscale = step.grad_scale is not None
    h, f = hyper_structs(lib, hyper, unscale)
    c = control(lib, step._replace(total=None), total_code=g.code)
    total = g.new(())
    grads = TensorGroup(lists.grads, g.backend)
    norm_table = grads.chunk_table()
    table = g.adam_table()
    stream = g.stream()
    norm_ws = g.workspace("norm", stream,
                          lib.cuda_norm_workspace_bytes(*norm_table.counts, g.code), 1 << 16)
    adam_ws = g.adam_workspace(stream, table.counts[0])
    launches = lib.cuda_clip_adam_step(
        *norm_table.args(), *table.args(), g.code, kind, p, norm_ws.data_ptr(), total.data_ptr(),
        0, h, f, c, ptr(skipped), adam_ws.data_ptr(), cooperative, g.index, stream)
    bump_versions(lists.written(unscale))
    return total, launches


# ---- the op (torch.compile sees it; eager calls run adam_step directly) -----------------

def _adam_impl(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, skipped, hyper,
               step_tensors, step_scalars, step_switches) -> None:
    adam_step(AdamLists(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps),
              AdamHyper(*hyper), StepArgs.from_lists(step_tensors, step_scalars, step_switches),
              skipped[0] if skipped else None)


_adam_op = NativeOp(
    "adam_step_",
    "(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, "
    "Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] steps, "
    f"Tensor(g!)[] skipped, float[] hyper, {STEP_SCHEMA}) -> ()",
    _adam_impl, lambda *args: None)


def adam_step_op(lists: AdamLists, hyper: AdamHyper, step: StepArgs,
                 skipped: Optional[torch.Tensor], host: Optional[tuple] = None) -> None:
    """adam_step, through the custom op under torch.compile."""
    if not torch.compiler.is_compiling():
        return adam_step(lists, hyper, step, skipped, host)
    _adam_op(*lists, [skipped] if skipped is not None else [],
             [float(x) for x in hyper], step.tensors(), step.scalars(), step.switches())
