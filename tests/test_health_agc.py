"""gradfast.adaptive_clip_grad_ against a plain-torch reference (the formula of
timm.utils.adaptive_clip_grad), on the parameters of real layers."""
import math

import pytest
import torch
from torch import nn

import gradfast
from devices import GPU, allocator_aligned


def reference_agc_(params, clip_factor=0.01, eps=1e-3, norm_type=2.0):
    """Plain torch: unit = dim 0 for ndim > 1, the whole tensor otherwise. Returns the
    number of clipped units."""
    clipped = 0
    for p in params:
        if p.grad is None:
            continue
        w, g = p.detach(), p.grad.detach()
        if w.ndim <= 1:
            wn, gn = w.norm(norm_type), g.norm(norm_type)
        else:
            dims = tuple(range(1, w.ndim))
            wn, gn = w.norm(norm_type, dim=dims, keepdim=True), g.norm(norm_type, dim=dims, keepdim=True)
        max_norm = wn.clamp(min=eps).mul(clip_factor)
        scaled = g * (max_norm / gn.clamp(min=1e-6))
        clipped += int((gn >= max_norm).sum()) + int(torch.isnan(gn).sum())
        p.grad.detach().copy_(torch.where(gn < max_norm, g, scaled))
    return clipped


def layer_params(dtype):
    """Parameters of Linear, Conv2d, LSTM, Embedding, LayerNorm layers and a scalar, with
    gradients of mixed magnitudes so that some units are clipped and others are not."""
    layers = [nn.Linear(40, 24), nn.Conv2d(3, 8, 3), nn.Conv1d(4, 6, 5), nn.LSTM(10, 16),
              nn.Embedding(50, 12), nn.LayerNorm(24), nn.Linear(300, 300, bias=False)]
    params = [p for layer in layers for p in layer.parameters()]
    params.append(nn.Parameter(torch.tensor(0.5)))
    params.append(nn.Parameter(torch.zeros(7)))  # all-zero weight: the eps floor applies
    out = []
    for p in params:
        q = nn.Parameter(p.detach().to(dtype))
        g = torch.randn(p.shape, dtype=torch.float64)
        if q.dim() >= 2:  # per-row magnitudes from tiny to large
            g *= torch.logspace(-5, 0, q.shape[0], dtype=torch.float64).view(-1, *[1] * (q.dim() - 1))
        else:
            g *= 10 ** torch.empty(()).uniform_(-5, 0).item()
        q.grad = g.to(dtype)
        out.append(q)
    return out


def clone_params(params, dtype=None):
    out = []
    for p in params:
        q = nn.Parameter(p.detach().clone().to(dtype or p.dtype))
        q.grad = p.grad.clone().to(dtype or p.dtype)
        out.append(q)
    return out


@pytest.mark.parametrize("clip_factor", [0.01, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(dtype, clip_factor):
    ours = layer_params(dtype)
    ref = clone_params(ours)
    n = gradfast.adaptive_clip_grad_(ours, clip_factor=clip_factor)
    n_ref = reference_agc_(ref, clip_factor=clip_factor)
    assert n.dtype == torch.int64 and n.dim() == 0
    assert 0 < n_ref < sum(p.shape[0] if p.dim() > 1 else 1 for p in ref)  # a real mix
    assert n.item() == n_ref
    rtol = 5e-6 if dtype == torch.float32 else 1e-12
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.grad, q.grad, rtol=rtol, atol=0)
        assert torch.equal(p, q)  # parameters are only read


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_within_twice_torch_error(dtype):
    ours = layer_params(dtype)
    theirs = clone_params(ours)
    exact = clone_params(ours, torch.float64)
    gradfast.adaptive_clip_grad_(ours)
    reference_agc_(theirs)
    reference_agc_(exact)
    for p, q, e in zip(ours, theirs, exact):
        our_err = (p.grad.double() - e.grad).abs().max().item()
        their_err = (q.grad.double() - e.grad).abs().max().item()
        ulp = torch.finfo(dtype).eps * e.grad.abs().max().item()
        assert our_err <= max(2 * their_err, ulp), (p.shape, our_err, their_err)


def test_large_units_and_thread_count_independence():
    """Units longer than a 64K chunk go through the chunked path; results must not depend
    on the number of threads."""
    def make():
        torch.manual_seed(1)
        ps = [nn.Parameter(torch.randn(3, 100000)), nn.Parameter(torch.randn(200000)),
              nn.Parameter(torch.randn(70000, 2))]
        for p, s in zip(ps, [1e-1, 1e-6, 1.0]):
            p.grad = torch.randn(p.shape) * s
        return ps
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = make()
        gradfast.adaptive_clip_grad_(one)
        torch.set_num_threads(max(2, threads))
        many = make()
        gradfast.adaptive_clip_grad_(many)
    finally:
        torch.set_num_threads(threads)
    ref = make()
    reference_agc_(ref)
    for a, b, r in zip(one, many, ref):
        assert torch.equal(a.grad, b.grad)
        torch.testing.assert_close(a.grad, r.grad, rtol=5e-6, atol=0)


def test_torch_path_for_other_layouts():
    torch.manual_seed(2)
    w = nn.Parameter(torch.randn(32, 64).t())  # (64, 32) whose dim 0 is innermost in memory
    w.grad = torch.randn(32, 64).t() * 0.1
    v = nn.Parameter(torch.randn(10, 10))      # native, in the same call
    v.grad = torch.randn(10, 10) * 0.05
    s = nn.Parameter(torch.randn(20, 40)[:, ::2])  # not dense
    s.grad = torch.randn(20, 40)[:, ::2] * 0.3
    ours = [w, v, s]
    ref = clone_params(ours)
    n = gradfast.adaptive_clip_grad_(ours, clip_factor=0.02)
    assert n.item() == reference_agc_(ref, clip_factor=0.02)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.grad, q.grad, rtol=5e-6, atol=0)


def test_nonfinite_and_missing_grads_and_norm_type():
    p = nn.Parameter(torch.randn(4, 5))
    p.grad = torch.randn(4, 5)
    p.grad[1, 2] = float("nan")
    p.grad[3, 0] = float("inf")
    q = nn.Parameter(torch.randn(3))  # no gradient: skipped
    ref = clone_params([p])
    gradfast.adaptive_clip_grad_([p, q])
    reference_agc_(ref)
    torch.testing.assert_close(p.grad, ref[0].grad, equal_nan=True, rtol=5e-6, atol=0)
    assert q.grad is None
    for norm_type in (1.0, math.inf):
        ours = layer_params(torch.float64)
        ref = clone_params(ours)
        gradfast.adaptive_clip_grad_(ours, norm_type=norm_type)
        reference_agc_(ref, norm_type=norm_type)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=0)


def test_no_grads():
    n = gradfast.adaptive_clip_grad_([nn.Parameter(torch.ones(3))])
    assert n.item() == 0


# ------------------------------------------------------- the CUDA work split, on the host


def _walk_agc_table(numels, units):
    """Emulates both CUDA AGC launches over the table the native core builds
    (csrc/cuda/agc_table.h), in element ranges: every element must be reduced exactly once,
    by an item that sees its whole unit or by a slice of a unit whose partials and counter
    are its own, and scaled exactly once."""
    from gradfast._native import _C
    n = len(numels)
    wptrs = [0x1000 * (t + 1) for t in range(n)]
    gptrs = [0x100000 * (t + 1) for t in range(n)]
    table, n_items, n_big_units, n_big_items = _C.agc_cuda_table(wptrs, gptrs, numels, units)
    assert len(table) == 7 * n + 2
    row = lambda r, t: table[r * n + t]  # noqa: E731
    first_item = table[5 * n:6 * n + 1]
    first_big_item = table[6 * n + 1:7 * n + 2]
    assert first_item[0] == 0 and first_item[-1] == n_items
    assert first_big_item[0] == 0 and first_big_item[-1] == n_big_items
    assert table[:n] == wptrs and table[n:2 * n] == gptrs
    S = _C.AGC_SLICE_ELEMS
    reduced = {t: [] for t in range(n)}   # (start, stop) element ranges read by launch 1
    scaled = {t: [] for t in range(n)}    # ranges scaled by launch 1 or 2
    parts, big_units_seen = set(), {}
    item_owner = []
    for t in range(n):
        item_owner += [t] * (first_item[t + 1] - first_item[t])
    for item in range(n_items):
        t = item_owner[item]
        unit, nunits = row(2, t), row(3, t)
        group, upi, spu = _C.agc_cuda_shape(unit)
        local = item - first_item[t]
        if group > 0:
            assert unit <= _C.AGC_GROUP_MAX_UNIT and spu == 1 and 1 <= group <= 32
            assert (256 // group) * group == 256 and upi % (256 // group) == 0
            u0, u1 = local * upi, min(local * upi + upi, nunits)
            assert u0 < u1
            reduced[t].append((u0 * unit, u1 * unit))
            scaled[t].append((u0 * unit, u1 * unit))
            continue
        assert unit > _C.AGC_GROUP_MAX_UNIT and spu == -(-unit // S)
        u, k = divmod(local, spu)
        assert u < nunits
        start, length = u * unit + k * S, min(S, unit - k * S)
        assert 1 <= length <= S
        reduced[t].append((start, start + length))
        if spu == 1:
            scaled[t].append((start, start + length))
            continue
        part = first_big_item[t] + local
        assert first_big_item[t] <= part < first_big_item[t + 1] and part not in parts
        parts.add(part)
        bu = row(4, t) + u
        assert 0 <= bu < n_big_units
        big_units_seen.setdefault(bu, set()).add(k)
    # Launch 2 walks the big items only.
    big_owner = []
    for t in range(n):
        big_owner += [t] * (first_big_item[t + 1] - first_big_item[t])
    for k in range(n_big_items):
        t = big_owner[k]
        unit = row(2, t)
        spu = _C.agc_cuda_shape(unit)[2]
        assert spu > 1
        u, j = divmod(k - first_big_item[t], spu)
        start = u * unit + j * S
        scaled[t].append((start, start + min(S, unit - j * S)))
    assert len(parts) == n_big_items
    assert all(v == set(range(len(v))) and len(v) > 1 for v in big_units_seen.values())
    assert sorted(big_units_seen) == list(range(n_big_units))
    for t in range(n):
        for ranges in (reduced[t], scaled[t]):
            ranges.sort()
            pos = 0
            for a, b in ranges:
                assert a == pos, (t, numels[t], units[t], a, pos)
                pos = b
            assert pos == numels[t]


def test_agc_cuda_table_covers_every_unit_once():
    S = 8192
    cases = [
        ([10], [10]),                         # a bias: one tiny unit
        ([1], [1]),                           # a 0-d parameter
        ([50257 * 768], [768]),               # an embedding: 50257 units, group mode
        ([24 * 40, 24], [40, 24]),
        ([3 * 2048, 3 * 2049], [2048, 2049]),  # the two sides of the group limit
        ([4 * S, 2 * (S + 1), 5 * 3 * S], [S, S + 1, 3 * S]),  # one slice / several slices
        ([10 ** 8], [10 ** 8]),               # a 1-D tensor far bigger than a slice
        ([0, 12, 0, 7 * 5], [5, 3, 1, 5]),    # empty tensors own nothing
        ([], []),
    ]
    for numels, units in cases:
        _walk_agc_table(numels, units)
    # Past 2^32 elements (too many slices to walk here): the sizes only.
    from gradfast._native import _C
    big = (1 << 32) + S
    table, n_items, n_big_units, n_big_items = _C.agc_cuda_table([1, 2], [3, 4], [2 * big, 6],
                                                                 [big, 3])
    assert (n_big_units, n_big_items) == (2, 2 * ((1 << 19) + 1))
    assert n_items == n_big_items + 1 and table[4 * 2 + 1] == 2  # the small tensor's base
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        n = int(torch.randint(1, 12, (), generator=gen))
        units = [int(x) for x in torch.randint(1, 3 * S, (n,), generator=gen)]
        counts = [int(x) for x in torch.randint(0, 40, (n,), generator=gen)]
        _walk_agc_table([u * c for u, c in zip(units, counts)], units)


def test_agc_cuda_table_rejects_bad_sizes():
    from gradfast._native import _C
    with pytest.raises(ValueError):
        _C.agc_cuda_table([1], [2], [10], [3])   # not a multiple of the unit
    with pytest.raises(ValueError):
        _C.agc_cuda_table([1], [2], [10], [0])
    with pytest.raises(ValueError):
        _C.agc_cuda_table([1, 2], [3], [4], [4])


def test_duplicate_gradient_goes_to_torch():
    """A parameter listed twice: torch's ops (norms first, then one scaling per occurrence),
    never the parallel kernel, whose threads would race on it."""
    from gradfast.health.agc import _agc_torch
    ours = layer_params(torch.float32)[:4]
    ref = clone_params(ours)
    n = gradfast.adaptive_clip_grad_(ours + ours[:1])
    ref_list = ref + ref[:1]
    n_ref = _agc_torch([r.detach() for r in ref_list], [r.grad for r in ref_list], 0.01, 1e-3, 2.0)
    assert n.item() == n_ref.item()
    for p, r in zip(ours, ref):
        assert torch.equal(p.grad, r.grad)


# ------------------------------------ the native kernels on every device (tests/devices.py)

AGC_SLICE = 8192  # csrc/cuda/agc_table.h kAgcSliceElems


def _agc_params(dtype, norm_type=2.0, device="cpu"):
    """layer_params (Linear, Conv, LSTM, Embedding, LayerNorm, biases, a 0-d and an all-zero
    parameter) plus tensors around the kernels' limits: a 1-D tensor of several slices,
    weights whose units span several slices, exactly one slice, or just past the group
    limit, and zero-size tensors; on `device`."""
    torch.manual_seed(5)
    params = layer_params(dtype)
    extra = [((3 * AGC_SLICE + 5,), 1e-2), ((3, 2 * AGC_SLICE + 17), 1.0),
             ((4, AGC_SLICE), 1e-3), ((6, 2049), 1.0), ((2, 7, 3, 300), 1e-2), ((40, 1), 1.0),
             ((0, 5), 1.0)]
    if norm_type != float("inf"):  # torch cannot take an inf norm over an empty dim
        extra.append(((5, 0), 1.0))
    for shape, scale in extra:
        q = torch.nn.Parameter(torch.randn(shape, dtype=torch.float64).to(dtype))
        g = torch.randn(shape, dtype=torch.float64) * scale
        if len(shape) >= 2 and shape[0] > 0:
            rows = torch.logspace(-4, 0, shape[0], dtype=torch.float64)
            g *= rows.view(-1, *[1] * (len(shape) - 1))
        q.grad = g.to(dtype)
        params.append(q)
    out = []
    for p in params:
        q = torch.nn.Parameter(p.detach().to(device, copy=True))
        q.grad = p.grad.to(device, copy=True)
        out.append(q)
    return out


def _forbid_torch_path(monkeypatch):
    import gradfast.health.agc as agc_mod

    real = agc_mod._agc_torch

    def refuse(params, grads, *args):
        # Tensors with no elements but a zero-size unit (shape (5, 0)) are left to torch.
        if any(g.numel() > 0 for g in grads):
            raise AssertionError("the torch path was taken")
        return real(params, grads, *args)
    monkeypatch.setattr(agc_mod, "_agc_torch", refuse)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf"), 3.0], ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=str)
def test_agc_native_matches_reference(device, dtype, norm_type, monkeypatch):
    _forbid_torch_path(monkeypatch)
    ours = _agc_params(dtype, norm_type, device.torch)
    ref = clone_params(ours)
    exact = clone_params(ours, torch.float64)
    with device.no_sync():
        n = gradfast.adaptive_clip_grad_(ours, norm_type=norm_type)
    n_ref = reference_agc_(ref, norm_type=norm_type)
    n_exact = reference_agc_(exact, norm_type=norm_type)
    assert n.device == ours[0].grad.device and n.dtype == torch.int64 and n.dim() == 0
    assert 0 < n_ref
    if dtype in (torch.float32, torch.float64):
        assert n.item() == n_ref
        rtol = 1e-5 if dtype == torch.float32 else 1e-12
        for p, q in zip(ours, ref):
            torch.testing.assert_close(p.grad, q.grad, rtol=rtol, atol=0)
    else:
        # Low precision: a unit norm summed in another order may round to a neighbour, so
        # compare errors against the fp64 computation, as test_health_agc does on the CPU.
        assert abs(n.item() - n_ref) <= 1 and abs(n.item() - n_exact) <= 2
        for p, q, e in zip(ours, ref, exact):
            if p.numel() == 0:
                continue
            our_err = (p.grad.double() - e.grad).abs().max().item()
            their_err = (q.grad.double() - e.grad).abs().max().item()
            ulp = torch.finfo(dtype).eps * e.grad.abs().max().item()
            assert our_err <= max(2 * their_err, ulp), (p.shape, our_err, their_err)
    for p, q in zip(ours, ref):
        assert torch.equal(p, q)  # parameters are only read


@pytest.mark.parametrize("device", GPU, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_agc_native_matches_cpu_native(device, dtype):
    """Both back ends compute the same thing up to the summation order inside unit norms."""
    cpu = _agc_params(dtype, device="cpu")
    gpu = _agc_params(dtype, device=device.torch)
    with device.reference():  # the CPU kernels (cudasim: outside the simulated device)
        n_cpu = gradfast.adaptive_clip_grad_(cpu)
    n_gpu = gradfast.adaptive_clip_grad_(gpu)
    rtol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 1.6e-2}[dtype]
    if dtype != torch.bfloat16:
        assert n_cpu.item() == n_gpu.item()
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=rtol, atol=0)


@pytest.mark.parametrize("norm_type", [2.0, float("inf")], ids=repr)
def test_agc_native_nonfinite(device, norm_type, monkeypatch):
    _forbid_torch_path(monkeypatch)
    ours = _agc_params(torch.float32, norm_type, device.torch)
    for p in ours:  # a NaN in a small unit, a big unit and a one-slice unit; an inf elsewhere
        if p.dim() >= 1 and p.numel() > 0:
            p.grad.view(-1)[p.numel() // 2] = float("nan")
            p.grad.view(-1)[-1] = float("inf")
    ref = clone_params(ours)
    n = gradfast.adaptive_clip_grad_(ours, norm_type=norm_type)
    assert n.item() == reference_agc_(ref, norm_type=norm_type)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_agc_native_deterministic(device, dtype):
    def params():
        ps = _agc_params(dtype, device=device.torch)
        if device.simulated:  # placed as on a GPU (devices.allocator_aligned says why)
            for p in ps:
                p.data, p.grad = allocator_aligned(p.data), allocator_aligned(p.grad)
        return ps

    a = params()
    b = params()
    # A third list with other allocations (another table, other alignments of nothing else).
    c = params()
    counts = [gradfast.adaptive_clip_grad_(x, clip_factor=0.05) for x in (a, b, c)]
    assert counts[0].item() == counts[1].item() == counts[2].item()
    for x, y, z in zip(a, b, c):
        assert torch.equal(x.grad, y.grad) and torch.equal(x.grad, z.grad)
    # Again on the same tensors (cached table, reused workspace): still identical.
    for x, y in zip(a, params()):
        x.grad.copy_(y.grad)
    gradfast.adaptive_clip_grad_(a, clip_factor=0.05)
    for x, y in zip(a, b):
        assert torch.equal(x.grad, y.grad)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_agc_native_cuda_graph(dtype, monkeypatch):
    # CUDA graphs: GPU only.
    _forbid_torch_path(monkeypatch)
    static = _agc_params(dtype, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            gradfast.adaptive_clip_grad_(static, clip_factor=0.02)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        n = gradfast.adaptive_clip_grad_(static, clip_factor=0.02)
    for seed_scale in (1.0, 3.0, 1e-6):
        fresh = _agc_params(dtype, device="cuda")
        for p, q in zip(static, fresh):
            p.grad.copy_(q.grad * seed_scale)
        eager = _agc_params(dtype, device="cuda")
        for q in eager:
            q.grad.mul_(seed_scale)
        n_eager = gradfast.adaptive_clip_grad_(eager, clip_factor=0.02)
        graph.replay()
        torch.cuda.synchronize()
        assert n.item() == n_eager.item()
        for p, q in zip(static, eager):
            assert torch.equal(p.grad, q.grad)
    assert n_eager.item() == 0  # the last round clips nothing


def test_agc_native_mixed_groups_no_sync(device, monkeypatch):
    """Several (dtype) groups, tensors entering and leaving, all without a host sync."""
    ours = (_agc_params(torch.float32, device=device.torch)[:12]
            + _agc_params(torch.float64, device=device.torch)[-6:])
    ref = clone_params(ours)
    _forbid_torch_path(monkeypatch)
    with device.no_sync():
        n = gradfast.adaptive_clip_grad_(ours)
        # Another table, the same workspace; a smaller factor, so that units clipped by the
        # first call (their norm now at the limit, up to rounding) are clipped by a margin.
        m = gradfast.adaptive_clip_grad_(ours[3:9], clip_factor=0.003)
    n_ref = reference_agc_(ref)
    m_ref = reference_agc_(ref[3:9], clip_factor=0.003)
    assert (n.item(), m.item()) == (n_ref, m_ref)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=0)


def test_agc_duplicate_gradient_goes_to_torch_on_every_device(device):
    from gradfast.health.agc import _agc_torch
    ours = _agc_params(torch.float32, device=device.torch)[:4]
    twice = ours + ours[:1]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in twice[:4]]
    for r, p in zip(ref, ours):
        r.grad = p.grad.clone()
    ref_list = ref + ref[:1]
    n_ref = _agc_torch([r.detach() for r in ref_list], [r.grad for r in ref_list], 0.01, 1e-3,
                       2.0)
    n = gradfast.adaptive_clip_grad_(twice)
    assert n.item() == n_ref.item()
    for p, r in zip(ours, ref):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", GPU, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_agc_no_sync_matches_reference(device, dtype):
    cpu = layer_params(dtype)
    ref = clone_params(cpu)
    n_ref = reference_agc_(ref)
    gpu = []
    for p in cpu:
        q = torch.nn.Parameter(p.detach().to(device.torch, copy=True))
        q.grad = p.grad.to(device.torch, copy=True)
        gpu.append(q)
    with device.no_sync():
        n = gradfast.adaptive_clip_grad_(gpu)
    assert n.item() == n_ref
    for p, q in zip(gpu, ref):
        torch.testing.assert_close(p.grad.cpu(), q.grad, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)
