"""The native SGD step of one group (gradfast._native.sgd.sgd_step, below gradfast.optim.SGD)
called on a plain state, on the real back end (the CPU kernel) or, inside
SimDevice.run, on a simulated GPU (the CUDA kernel, through the same device table,
workspace and structs a GPU gets).

A state is [params, grads, momentum_buffers, first_flags]; a first flag is an int32 0-d
tensor, nonzero while the tensor has no momentum history.
"""
from __future__ import annotations

from typing import List

import torch

from gradfast._native import sgd as native_sgd
from gradfast._native.step import StepArgs


def sgd_args(momentum=0.0, dampening=0.0, weight_decay=0.0, l1=0.0, nesterov=False,
             maximize=False, lr=1e-2, lr_t=None, grad_scale=None, found_inf=None, total=None,
             clip=False, max_norm=0.0, max_norm_t=None, skip_nonfinite=False):
    """(SgdHyper, StepArgs) from flat keywords."""
    hyper = native_sgd.SgdHyper(momentum, dampening, weight_decay, l1, nesterov, maximize)
    step = StepArgs(lr, lr_t, grad_scale, found_inf, total, clip, max_norm, max_norm_t,
                    skip_nonfinite)
    return hyper, step


def step_state(state, hyper: dict, ctl: dict, skipped=None) -> None:
    """One native SGD step on state (on whatever back end is current)."""
    h, step = sgd_args(**hyper, **ctl)
    lists = native_sgd.SgdLists(*[list(lst) for lst in state])
    if h.momentum == 0:
        lists = lists._replace(momentum_buffers=[], first_flags=[])
    native_sgd.sgd_step(lists, h, step, skipped)


def cpu_step(state, hyper: dict, ctl: dict, skipped=None, threads=1) -> None:
    """step_state on the CPU kernel with `threads` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        step_state(state, hyper, ctl, skipped)
    finally:
        torch.set_num_threads(before)


def make_state(shapes, dtype, seed=0, momentum=True, device="cpu", first=True) -> List:
    gen = torch.Generator().manual_seed(seed)

    def rnd(s, scale=1.0):
        return (torch.randn(s, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)

    params = [rnd(s) for s in shapes]
    grads = [rnd(s, 0.1) for s in shapes]
    bufs = [torch.zeros_like(p) for p in params] if momentum else []
    firsts = [torch.tensor(1 if first else 0, dtype=torch.int32, device=device)
              for _ in params] if momentum else []
    return [params, grads, bufs, firsts]
