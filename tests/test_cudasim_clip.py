"""The CUDA clipping kernels (multi_norm, multi_scale, multi_clamp) run on the CPU by
cudasim (tools/cudasim), against torch: the CUDA code's logic (chunking, alignment peeling,
the warp search, per-block partials and the last-block folds, workspace hygiene) checked
where there is no GPU. On every simulated device, so grids of 2 to 16 blocks all run."""
import math

import pytest
import torch

from clip_helpers import FLOAT_DTYPES, assert_norm_matches, bits, dtype_id
from gradfast._native.norm_kind import norm_kind

CHUNK = 1 << 16
NORMS = (2.0, 1.0, math.inf, -math.inf, 0.0, 3.5)


def _tensors(dtype, with_empty=True, seed=0):
    """Sizes around the chunk boundaries, a scalar, empties and views at odd offsets (the
    kernels' scalar head before the first 128-byte boundary)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(), (1,), (7, 3), (300,), (CHUNK + 5,), (2 * CHUNK,), (3 * CHUNK - 1,)]
    if with_empty:
        shapes += [(0,), (0, 4)]
    out = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    base = torch.randn(CHUNK + 100, generator=gen, dtype=torch.float64).to(dtype)
    out += [base[1:CHUNK + 41], base[CHUNK + 43:CHUNK + 60]]  # disjoint
    return out


def _assert_zero(ws):
    assert int(torch.count_nonzero(ws)) == 0, "a launch left its workspace dirty"


@pytest.mark.parametrize("p", NORMS, ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_norm_matches_torch_on_every_grid(sim_devices, dtype, p):
    tensors = _tensors(dtype, with_empty=math.isfinite(p))
    results = []
    for dev in sim_devices:
        total, per, coef = dev.norm(tensors, norm_kind(p), p, max_norm=0.5)
        assert dev.launches == 1  # every norm, the total and the coefficient
        _assert_zero(dev.workspaces["norm"])
        results.append((total, per, coef))
    # The result is a function of the data alone: the same bits whatever the grid size.
    for total, per, coef in results[1:]:
        assert torch.equal(total, results[0][0]) or (total.isnan() and results[0][0].isnan())
        assert torch.equal(per, results[0][1])
        assert torch.equal(coef, results[0][2]) or (coef.isnan() and results[0][2].isnan())
    total, per, coef = results[0]
    expected = torch.nn.utils.get_total_norm(tensors, p) if p != 0 else total
    assert_norm_matches(total, expected, tensors, p)
    for i, t in enumerate(tensors):
        assert_norm_matches(per[i].to(dtype), torch.linalg.vector_norm(t, p), [t], p)
    # torch's coefficient from this total: min(max_norm / (total + 1e-6), 1), in the dtype.
    torch_coef = torch.clamp(0.5 / (total + 1e-6), max=1.0)
    assert torch.equal(coef.to(dtype), torch_coef)


def test_norm_without_per_tensor_output_gives_the_same_total(sim_devices):
    tensors = _tensors(torch.float32)
    for dev in sim_devices:
        with_per = dev.norm(tensors, norm_kind(2.0), 2.0)
        without = dev.norm(tensors, norm_kind(2.0), 2.0, per_tensor=False)
        assert without[1] is None
        assert torch.equal(with_per[0], without[0]) and torch.equal(with_per[2], without[2])
        _assert_zero(dev.workspaces["norm"])  # the scratch per-tensor norms too


def test_norm_of_empty_tensors_only(sim_devices):
    tensors = [torch.zeros(0), torch.zeros(0, 3)]
    for dev in sim_devices:
        total, per, coef = dev.norm(tensors, norm_kind(2.0), 2.0)
        assert total.item() == 0.0 and per.tolist() == [0.0, 0.0] and coef.item() == 1.0
        assert dev.launches == 1  # one block writes the results
        dev.scale_(tensors, coef)
        assert dev.launches == 0  # nothing to scale: no launch (an empty grid is an error)


def test_norm_of_tens_of_thousands_of_tensors(sim_devices):
    # More than 1024 tensors: the warp-wide owner search takes three rounds.
    gen = torch.Generator().manual_seed(1)
    tensors = [torch.randn(k % 4, generator=gen) for k in range(20000)]
    total, per, _ = sim_devices[1].norm(tensors, norm_kind(2.0), 2.0)
    assert_norm_matches(total, torch.nn.utils.get_total_norm(tensors, 2.0), tensors, 2.0)
    expected = torch.stack([torch.linalg.vector_norm(t) for t in tensors])
    torch.testing.assert_close(per, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_norm_of_nonfinite_grads(sim_devices, bad):
    tensors = _tensors(torch.float32)
    tensors[4][CHUNK + 1] = bad  # in the second chunk of a multi-chunk tensor
    for p in (2.0, 1.0, math.inf):
        total, _, coef = sim_devices[2].norm(tensors, norm_kind(p), p)
        expected = torch.nn.utils.get_total_norm([t for t in tensors if t.numel()], p)
        assert_norm_matches(total, expected, tensors, p)
        assert math.isnan(coef.item()) or coef.item() == 0.0 or coef.item() == 1.0


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_scale_is_bitwise_torchs_mul(sim_devices, dtype):
    for dev in sim_devices:
        ours, theirs = _tensors(dtype, seed=2), _tensors(dtype, seed=2)
        ours[5][17] = math.nan
        theirs[5][17] = math.nan
        coef = torch.tensor(0.37, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        dev.scale_(ours, coef)
        assert dev.launches == 1
        for b in theirs:
            b.mul_(coef)
        for a, b in zip(ours, theirs):
            assert torch.equal(a.isnan(), b.isnan())
            assert torch.equal(a.nan_to_num(), b.nan_to_num()), (dtype, a.shape)


def test_scale_by_one_touches_nothing(sim_devices):
    tensors = _tensors(torch.float16)
    before = [t.clone() for t in tensors]
    sim_devices[0].scale_(tensors, torch.tensor(1.0))
    assert all(torch.equal(bits(a), bits(b)) for a, b in zip(tensors, before))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("lo,hi", [(-0.5, 0.5), (0.3, -0.3)])
def test_clamp_is_torchs_clamp(sim_devices, dtype, lo, hi):
    dev = sim_devices[2]
    ours, theirs = _tensors(dtype, seed=3), _tensors(dtype, seed=3)
    ours[4][9] = theirs[4][9] = math.nan
    dev.clamp_(ours, lo, hi)
    for b in theirs:
        b.clamp_(min=lo).clamp_(max=hi)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


def test_tensor_above_2_31_elements(sim_devices):
    """64-bit indexing: elements beyond 2^31 are read and written (fp16, 4.3 GB)."""
    n = (1 << 31) + 4099
    g = torch.ones(n, dtype=torch.float16)
    g[-1] = 3.0  # only the max norm can tell that the last element was read
    g[(1 << 31) + 7] = -2.0
    dev = sim_devices[2]
    total, per, coef = dev.norm([g], norm_kind(math.inf), math.inf, max_norm=1.5)
    assert total.item() == 3.0 and per.item() == 3.0
    dev.scale_([g], coef)  # 1.5 / (3 + 1e-6), rounded in fp16: 0.5
    assert g[-1].item() == 1.5 and g[(1 << 31) + 7].item() == -1.0 and g[0].item() == 0.5


def _random_case(seed):
    """A random list: 1-40 tensors of 0-150K elements, some views at odd offsets, one dtype,
    one norm order, grads of mixed magnitudes."""
    gen = torch.Generator().manual_seed(1000 + seed)
    pick = lambda n: int(torch.randint(n, (), generator=gen))  # noqa: E731
    dtype = FLOAT_DTYPES[pick(4)]
    p = NORMS[pick(len(NORMS))]
    tensors = []
    for _ in range(1 + pick(40)):
        n = pick(150_000) if pick(3) == 0 else pick(3000)
        if not math.isfinite(p):
            n = max(n, 1)  # torch has no inf norm of an empty tensor
        offset = pick(8) if pick(2) else 0
        scale = 10.0 ** (pick(7) - 3)
        base = torch.randn(n + offset, generator=gen, dtype=torch.float64) * scale
        tensors.append(base.to(dtype)[offset:])
    return tensors, p


@pytest.mark.parametrize("seed", range(24))
def test_random_lists_norm_and_scale(sim_devices, seed):
    tensors, p = _random_case(seed)
    dtype = tensors[0].dtype
    results = [dev.norm(tensors, norm_kind(p), p, max_norm=0.25) for dev in sim_devices[:3]]
    for total, per, coef in results[1:]:
        assert torch.equal(total, results[0][0]) and torch.equal(per, results[0][1])
    total, per, coef = results[0]
    expected = torch.nn.utils.get_total_norm(tensors, p) if p != 0 else total
    assert_norm_matches(total, expected, tensors, p)
    for i, t in enumerate(tensors):
        assert_norm_matches(per[i].to(dtype), torch.linalg.vector_norm(t, p), [t], p)
    theirs = [t.clone() for t in tensors]
    sim_devices[seed % 4].scale_(tensors, coef)
    for a, b in zip(tensors, theirs):
        assert torch.equal(a, b.mul_(coef)) or (a.isnan().any() and b.isnan().any())
