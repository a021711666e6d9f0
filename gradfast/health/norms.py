"""Per-tensor gradient norms and the global norm, from one pass of the native kernels.

``grad_norms`` is the norm pass of ``gradfast.clip_grad_norm_`` with its per-tensor norms
kept instead of thrown away. The total is bit-for-bit ``gradfast.get_total_norm`` (which
matches ``torch.nn.utils.get_total_norm``); the per-tensor norms are the values the kernels
fold into that total, so they match ``torch.linalg.vector_norm`` of each gradient.
"""
from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch

from .. import _torch_fallback
from .._native.norm import total_norm
from .._native.norm_kind import check_empty, norm_kind, parse_norm_type
from .._native.support import all_native_supported

__all__ = ["grad_norms", "norms_of", "aligned_per_tensor"]

_Params = Union[torch.Tensor, Iterable[torch.Tensor]]


def _promoted(dtypes: Iterable[torch.dtype]) -> torch.dtype:
    out = None
    for d in dtypes:
        out = d if out is None else torch.promote_types(out, d)
    return out


def norms_of(
    tensors: List[torch.Tensor], p: float
) -> Tuple[torch.Tensor, List[Tuple[List[int], torch.Tensor]]]:
    """(total, [(indices into tensors, 1-D norms of those tensors)]) for a non-empty list.

    One native pass per (device, dtype) group when the kernels take every tensor (the same
    pass and the same results as gradfast.get_total_norm); otherwise torch's own per-tensor
    norms. Never synchronises with a device.
    """
    kind = norm_kind(p)
    if kind is not None and all_native_supported(tensors):
        check_empty(tensors, p)
        total, _, groups = total_norm(tensors, p, kind, 1.0)
        return total, groups
    total, per_tensor = _torch_fallback.norms(tensors, p)
    device = tensors[0].device
    dtype = _promoted(n.dtype for n in per_tensor)
    stacked = torch.stack([n.to(device=device, dtype=dtype) for n in per_tensor])
    return total, [(list(range(len(tensors))), stacked)]


def aligned_per_tensor(
    n: int,
    groups: Sequence[Tuple[Sequence[int], torch.Tensor]],
    device: torch.device,
    dtype: torch.dtype,
    positions: Optional[Sequence[int]] = None,
    missing: float = math.nan,
) -> torch.Tensor:
    """Assemble per-group norm vectors into one 1-D tensor of length n, without a sync.

    groups: [(indices, norms)] as returned by norms_of / gradfast.clip._norms, where
    indices point into the list of tensors that was normed. positions (optional) maps those
    indices to slots of the output (e.g. the parameter each gradient belongs to); slots no
    group fills get ``missing``. Built from slices of the group vectors in one torch.cat,
    so nothing goes through the host.
    """
    if positions is None and len(groups) == 1:
        idx, vals = groups[0]
        if len(idx) == n and all(i == k for k, i in enumerate(idx)):
            return vals.to(device=device, dtype=dtype)
    # slot -> (group number, offset inside that group's vector)
    owner: List[Optional[Tuple[int, int]]] = [None] * n
    for g, (idx, _) in enumerate(groups):
        for off, i in enumerate(idx):
            owner[i if positions is None else positions[i]] = (g, off)
    cast = [vals.to(device=device, dtype=dtype) for _, vals in groups]
    pieces: List[torch.Tensor] = []
    slot = 0
    while slot < n:
        o = owner[slot]
        end = slot + 1
        if o is None:
            while end < n and owner[end] is None:
                end += 1
            pieces.append(torch.full((end - slot,), missing, dtype=dtype, device=device))
        else:
            g, off = o
            while end < n and owner[end] == (g, off + end - slot):
                end += 1
            pieces.append(cast[g][off:off + end - slot])
        slot = end
    if not pieces:
        return torch.empty(0, dtype=dtype, device=device)
    if len(pieces) == 1:
        return pieces[0]
    return torch.cat(pieces)


@torch.no_grad()
def grad_norms(
    parameters: _Params, norm_type: float = 2.0, *, missing: float = math.nan
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The global gradient norm and every parameter's gradient norm, in one pass.

    Args:
        parameters: a tensor or an iterable of tensors (typically ``model.parameters()``).
        norm_type: the order of the norms (as in ``clip_grad_norm_``; ``'inf'`` accepted).
        missing: the value placed at parameters whose ``.grad`` is None (default NaN).

    Returns:
        ``(total, per_tensor)``. ``total`` is a 0-d tensor, identical to
        ``gradfast.get_total_norm`` / ``torch.nn.utils.get_total_norm`` of the gradients
        that exist (parameters without a gradient are ignored, as torch does).
        ``per_tensor`` is a 1-D tensor aligned with ``parameters``: entry i is
        ``torch.linalg.vector_norm(parameters[i].grad, norm_type)``, or ``missing`` when
        parameter i has no gradient. Its dtype is the promoted dtype of all the gradients
        (the dtype torch gives each norm, e.g. float32 for fp32 grads, bfloat16 for bf16
        grads, float32 for a mix of bf16 and fp32), and it lives on the device of the first
        gradient. With no gradient at all, total is ``torch.tensor(0.0)`` and per_tensor is
        float32 filled with ``missing`` on the first parameter's device (CPU when empty).

    Nothing synchronises with the device: on CUDA one kernel launch per (device, dtype)
    group computes every norm, and the results stay on the device. For ``norm_type=0`` the
    total counts nonzero elements (gradfast's documented difference from torch 2.13).
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    else:
        parameters = list(parameters)
    p = parse_norm_type(norm_type)
    positions = [i for i, q in enumerate(parameters) if q.grad is not None]
    grads = [parameters[i].grad for i in positions]
    n = len(parameters)
    if not grads:
        device = parameters[0].device if parameters else torch.device("cpu")
        return torch.tensor(0.0), torch.full((n,), missing, dtype=torch.float32, device=device)
    total, groups = norms_of(grads, p)
    dtype = _promoted(g.dtype for g in grads)
    pos = None if len(positions) == n else positions
    per_tensor = aligned_per_tensor(n, groups, grads[0].device, dtype, pos, missing)
    return total, per_tensor
