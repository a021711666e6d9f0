"""Builders and comparison rules shared by the clip-family tests.

The reference is always stock torch.nn.utils run on an identical copy of the inputs, and,
for accuracy questions, an fp64 norm of the same (already rounded) gradient values.

A test case is described by a list of GradSpec and a seed; `build` turns it into fresh
Parameters with identical gradients every time it is called, so gradfast and torch each
get their own copy (the functions under test modify gradients in place).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
LOW_PRECISION = (torch.float16, torch.bfloat16)
INF = math.inf

# Every spelling of norm_type the API accepts, as the issue lists them.
NORM_TYPES = (2.0, 1.0, INF, -INF, 0.0, 3.5, 0.5, 2, "inf")
# gradfast delegates these to torch's own implementation.
NEGATIVE_NORM_TYPES = (-1.0, -2.0, -0.5)


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class GradSpec:
    """One parameter and the gradient it carries.

    layout: contiguous | channels_last (4-d) | transposed (2-d) | strided (a gap every other
    element: not dense) | expanded (stride 0: overlapping) | sparse (sparse_coo).
    nonfinite: (value, flat index) pairs written into the gradient before the layout is made.
    """

    shape: tuple
    dtype: torch.dtype = torch.float32
    scale: float = 1.0
    zero_frac: float = 0.0
    layout: str = "contiguous"
    nonfinite: tuple = ()
    has_grad: bool = True


def _values(spec: GradSpec, gen: torch.Generator) -> torch.Tensor:
    v = torch.randn(spec.shape, generator=gen, dtype=torch.float64) * spec.scale
    if spec.zero_frac > 0 and v.numel() > 0:
        keep = torch.rand(spec.shape, generator=gen, dtype=torch.float64) >= spec.zero_frac
        v = v * keep
    flat = v.view(-1)
    for value, index in spec.nonfinite:
        if flat.numel() > 0:
            flat[index % flat.numel()] = value
    return v


@functools.lru_cache(maxsize=8)
def _all_values(specs: tuple, seed: int) -> tuple:
    # Tests build the same case several times (one copy per implementation): draw once.
    gen = torch.Generator().manual_seed(seed)
    return tuple(_values(spec, gen) for spec in specs)


def make_grad(spec: GradSpec, values: torch.Tensor, device="cpu") -> torch.Tensor:
    v = values.to(spec.dtype, copy=True)  # never a view of the cached values
    layout = spec.layout
    if layout == "contiguous":
        g = v.clone()
    elif layout == "channels_last":
        g = v.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        g = v.t().contiguous().t()
    elif layout == "strided":
        base = torch.zeros(*spec.shape[:-1], 2 * spec.shape[-1], dtype=spec.dtype)
        base[..., ::2] = v
        g = base[..., ::2]
    elif layout == "expanded":
        g = v[:1].expand(spec.shape)
    elif layout == "sparse":
        g = v.to_sparse()
    else:
        raise ValueError(layout)
    if device != "cpu":
        if layout in ("strided", "expanded"):
            # .to(device) would make them contiguous: rebuild the view on the device.
            if layout == "strided":
                base = base.to(device)
                g = base[..., ::2]
            else:
                g = v.to(device)[:1].expand(spec.shape)
        elif layout in ("channels_last", "transposed"):
            g = g.to(device, memory_format=torch.preserve_format)
        else:
            g = g.to(device)
    return g


def build(specs: Sequence[GradSpec], seed: int, device="cpu",
          devices: Optional[Sequence] = None) -> List[torch.nn.Parameter]:
    """Fresh Parameters with gradients; identical on every call with the same arguments.

    devices, when given, holds one device per spec (for mixed-device cases).
    """
    values = _all_values(tuple(specs), seed)
    params = []
    for i, spec in enumerate(specs):
        dev = devices[i] if devices is not None else device
        g = make_grad(spec, values[i], dev)
        p = torch.nn.Parameter(torch.zeros(spec.shape, dtype=spec.dtype, device=dev))
        if spec.has_grad:
            p.grad = g
        params.append(p)
    return params


def grads_of(params) -> List[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


# --------------------------------------------------------------------------- references


def ref_norm64(tensors: Sequence[torch.Tensor], p: float) -> float:
    """The exact (fp64) p-norm of all elements of tensors, as one vector."""
    flat = [t.detach().to("cpu", torch.float64).to_dense().reshape(-1) for t in tensors]
    x = torch.cat(flat) if flat else torch.zeros(0, dtype=torch.float64)
    if p == 0:
        return float(torch.count_nonzero(x))
    return torch.linalg.vector_norm(x, p).item()


def l0_reference(tensors: Sequence[torch.Tensor], out_dtype: torch.dtype) -> float:
    """gradfast's documented L0 result: the count of nonzero elements, each tensor's count
    held in its own dtype (as every per-tensor norm is), summed in the result dtype."""
    total = 0.0
    for t in tensors:
        count = int(torch.count_nonzero(t.detach().to_dense()))
        total += torch.tensor(float(count), dtype=t.dtype).double().item()
    return torch.tensor(total, dtype=torch.float64).to(out_dtype).double().item()


_INT_OF = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of t, for exact comparison (NaN payloads and signed zeros included)."""
    return t.detach().contiguous().view(_INT_OF[t.element_size()]).clone()


def least_precise(dtypes) -> torch.dtype:
    return max(dtypes, key=lambda d: torch.finfo(d).eps)


def ulp(x: float, dtype: torch.dtype) -> float:
    """The spacing of dtype's numbers at |x| (subnormal spacing near zero)."""
    fi = torch.finfo(dtype)
    sub = fi.smallest_normal * fi.eps
    if x == 0 or not math.isfinite(x):
        return sub
    _, e = math.frexp(abs(x))  # |x| = m * 2**e, 0.5 <= m < 1
    return max(math.ldexp(fi.eps, e - 1), sub)


def _same_nonfinite(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b


def assert_norm_matches(gf: torch.Tensor, th: torch.Tensor, tensors, p) -> None:
    """gradfast's total norm `gf` against torch's `th` for the same inputs.

    Same dtype, device and shape. Non-finite results: the same NaN/inf. fp32/fp64 inputs of
    one precision: within rtol 1e-5 / 1e-12 of torch, or closer to the fp64 reference than
    torch is. Otherwise (fp16/bf16 or mixed precisions): gradfast's error against the fp64
    reference is at most twice torch's, plus one ulp of the least precise dtype involved.
    """
    p = float(p)
    assert isinstance(gf, torch.Tensor), type(gf)
    assert gf.dtype == th.dtype, (gf.dtype, th.dtype)
    assert gf.device == th.device, (gf.device, th.device)
    assert gf.shape == th.shape == torch.Size([]), (gf.shape, th.shape)
    assert not gf.requires_grad and gf.grad_fn is None
    tensors = list(tensors)
    g64, t64 = gf.double().item(), th.double().item()
    in_dtypes = {t.dtype for t in tensors}
    low = least_precise(in_dtypes | {gf.dtype})
    if p == 0:
        expect = l0_reference(tensors, gf.dtype)
        count = sum(int(torch.count_nonzero(t.detach().to_dense())) for t in tensors)
        if not math.isfinite(expect):
            assert g64 == expect, (g64, expect)
        else:
            tol = torch.finfo(low).eps * count
            assert abs(g64 - expect) <= tol, f"L0: gradfast {g64}, expected count {expect}"
        return
    if not (math.isfinite(g64) and math.isfinite(t64)):
        assert _same_nonfinite(g64, t64), f"gradfast {g64} vs torch {t64} (p={p})"
        return
    ref = ref_norm64(tensors, p)
    err_gf, err_th = abs(g64 - ref), abs(t64 - ref)
    msg = (f"p={p} dtypes={sorted(map(dtype_id, in_dtypes))}: gradfast {g64!r} torch {t64!r} "
           f"fp64 reference {ref!r}")
    if len(in_dtypes) == 1 and low in (torch.float32, torch.float64):
        rtol = 1e-5 if low == torch.float32 else 1e-12
        if abs(g64 - t64) <= rtol * abs(t64):
            return
        assert err_gf <= err_th, msg  # farther from torch, but only by being more accurate
        return
    assert err_gf <= 2 * err_th + ulp(ref, low), msg


def assert_tensors_identical(a: torch.Tensor, b: torch.Tensor, what="") -> None:
    """Same dtype, shape, device and values, NaN for NaN and inf for inf."""
    assert type(a) is type(b), (type(a), type(b), what)
    assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device, what
    assert a.layout == b.layout, what
    if a.layout != torch.strided:
        a, b = a.coalesce().to_dense(), b.coalesce().to_dense()
    a, b = a.as_subclass(torch.Tensor), b.as_subclass(torch.Tensor)
    if torch.equal(a, b):  # fast path; NaNs need the full comparison below
        return
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


def assert_grads_identical(pa, pb, what="grads") -> None:
    assert len(pa) == len(pb)
    for i, (a, b) in enumerate(zip(pa, pb)):
        if a.grad is None or b.grad is None:
            assert a.grad is None and b.grad is None, f"{what}[{i}]: None vs tensor"
            continue
        assert a.grad.stride() == b.grad.stride() or a.grad.layout != torch.strided
        assert_tensors_identical(a.grad, b.grad, f"{what}[{i}]")


def assert_grads_close_to_torch(pg, pt, gf_total, th_total) -> None:
    """gradfast's clipped grads against torch's: identical when the totals are identical;
    otherwise within the relative difference of the totals plus two ulps of the grad."""
    same_total = torch.equal(gf_total, th_total) or (
        gf_total.isnan().item() and th_total.isnan().item())
    g64, t64 = gf_total.double().item(), th_total.double().item()
    rel = 0.0 if same_total or not math.isfinite(t64) or t64 == 0 else abs(g64 - t64) / abs(t64)
    for i, (a, b) in enumerate(zip(pg, pt)):
        if a.grad is None:
            assert b.grad is None
            continue
        if same_total:
            assert_tensors_identical(a.grad, b.grad, f"clipped grad[{i}]")
            continue
        eps = torch.finfo(a.grad.dtype).eps
        tiny = torch.finfo(a.grad.dtype).smallest_normal
        torch.testing.assert_close(a.grad, b.grad, rtol=1.01 * rel + 2 * eps, atol=tiny,
                                   equal_nan=True, msg=lambda m: f"clipped grad[{i}]: {m}")


def torch_error(fn: Callable) -> Optional[BaseException]:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - we compare whatever torch raises
        return e
    return None


def assert_same_error(gf_fn: Callable, th_fn: Callable) -> BaseException:
    """Both raise; the same exception type and the same message."""
    th = torch_error(th_fn)
    assert th is not None, "torch did not raise: the test's premise is wrong"
    gf = torch_error(gf_fn)
    assert gf is not None, f"gradfast did not raise; torch raised {type(th).__name__}: {th}"
    assert type(gf) is type(th), (type(gf), type(th), str(gf), str(th))
    assert str(gf).splitlines()[0] == str(th).splitlines()[0], (str(gf), str(th))
    return gf
