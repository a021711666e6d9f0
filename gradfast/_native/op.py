"""Each native operation is defined once as a torch.library op, with its fake.

The schema is the single definition of an operation's arguments. The fake gives
torch.compile the outputs' shapes; the kernel, registered for CPU and CUDA tensors, is the
native layer's own implementation, which picks the back end's CPU or CUDA entry point
(bitsandbytes' _ops.py pattern: ops defined once, back ends register).

Eager calls go straight to the implementation: the dispatcher round trip of a custom op
costs tens of microseconds, most of a small model's step. Under torch.compile the
registered op is what the graph calls, so compiled graphs (and CUDA graphs) run the same
kernels.
"""
from __future__ import annotations

from typing import Callable

import torch

_DEVICES = ("cpu", "cuda")

# The names of every op defined, in order (tests opcheck each one).
DEFINED = []


class NativeOp:
    __slots__ = ("impl", "_name")

    def __init__(self, name: str, schema: str, impl: Callable, fake: Callable) -> None:
        qualname = f"gradfast::{name}"
        torch.library.define(qualname, schema)
        torch.library.register_fake(qualname)(fake)
        torch.library.register_kernel(qualname, _DEVICES)(impl)
        self.impl = impl
        self._name = name
        DEFINED.append(name)

    @property
    def op(self) -> "torch._ops.OpOverloadPacket":
        return getattr(torch.ops.gradfast, self._name)

    def __call__(self, *args):
        if torch.compiler.is_compiling():
            return self.op(*args)
        return self.impl(*args)


def compiling() -> bool:
    return torch.compiler.is_compiling()
