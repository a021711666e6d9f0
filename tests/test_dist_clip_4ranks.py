"""gradfast's clip family on 4 gloo ranks: HSDP 2x2 (Replicate x Shard), FSDP + tensor
parallel 2x2 (_StridedShard, a LayerNorm on the dp submesh only, Replicate biases: grads on
two meshes in one call), and pipeline stages of FSDP2 modules on one (pp, dp) world mesh.

Oracles: the fp64 norm of the full_tensor() grads; bitwise equality across ranks; exactly
one collective per call (CommDebugMode), where torch issues several or fails.
"""
import math

import pytest
import torch
import torch.distributed as dist

from dist_helpers import (assert_bitwise_same_on_all_ranks, assert_check, assert_close_norm,
                          collectives, full64, list_checks, local_value, ref_norm, run_checks,
                          ulp)

ORDERS = (2.0, 1.0, 3.0, 0.0, math.inf, -math.inf)


def _mesh2d(names):
    from torch.distributed.device_mesh import init_device_mesh
    return init_device_mesh("cpu", (2, 2), mesh_dim_names=names)


def _backward(m, dtype=torch.float32, in_features=4):
    torch.manual_seed(100 + dist.get_rank())
    m(torch.randn(6, in_features, dtype=dtype)).pow(2).sum().backward()


def _hsdp(dtype=torch.float32):
    from torch.distributed.fsdp import fully_shard
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(dtype)
    fully_shard(m, mesh=_mesh2d(("replicate", "shard")))
    _backward(m, dtype)
    return m


def _fsdp_tp():
    """LayerNorm (dp only) -> colwise Linear -> ReLU -> rowwise Linear (Replicate bias)."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)
    mesh = _mesh2d(("dp", "tp"))
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.LayerNorm(4), torch.nn.Linear(4, 6), torch.nn.ReLU(),
                            torch.nn.Linear(6, 3))
    parallelize_module(m, mesh["tp"], {"1": ColwiseParallel(), "3": RowwiseParallel()})
    fully_shard(m, mesh=mesh["dp"])
    torch.manual_seed(100 + mesh["dp"].get_local_rank())  # one batch per dp replica
    m(torch.randn(6, 4)).pow(2).sum().backward()
    return m


def _grads(m):
    return [p.grad for p in m.parameters()]


def _check_all_orders(m, expect_dtensor):
    import gradfast
    from torch.distributed.tensor import DTensor, Replicate
    grads = _grads(m)
    saved, full = [local_value(g).clone() for g in grads], full64(grads)
    for p in ORDERS:
        for g, s in zip(grads, saved):
            local_value(g).copy_(s)
        ref = ref_norm(full, p)
        total, n = collectives(lambda: gradfast.clip_grad_norm_(m.parameters(), 0.5 * ref, p))
        assert n == 1, (p, n)
        if expect_dtensor:
            assert isinstance(total, DTensor), type(total)
            assert all(pl == Replicate() for pl in total.placements), total.placements
        else:
            assert type(total) is torch.Tensor, type(total)
        assert_close_norm(local_value(total).item(), ref, 1e-5, f"p={p}")
        assert_bitwise_same_on_all_ranks(total)
        coef = min(0.5 * ref / (ref + 1e-6), 1.0)
        for got, f in zip(full64(grads), full):
            torch.testing.assert_close(got, f * coef, rtol=1e-5, atol=1e-7)


def check_hsdp_all_orders_one_collective():
    m = _hsdp()
    from torch.distributed.tensor import Replicate
    assert _grads(m)[0].placements[0] == Replicate()
    _check_all_orders(m, expect_dtensor=True)


def check_hsdp_bf16_error_at_most_twice_torchs():
    import gradfast
    m = _hsdp(torch.bfloat16)
    grads = _grads(m)
    full = full64(grads)
    for p in (2.0, 1.0, 3.0):
        ref = ref_norm(full, p)
        gf = gradfast.get_total_norm(grads, p)
        th = torch.nn.utils.get_total_norm(grads, p).full_tensor()
        err_gf = abs(local_value(gf).double().item() - ref)
        err_th = abs(th.double().item() - ref)
        assert err_gf <= 2 * err_th + ulp(ref, torch.bfloat16), (p, gf, th, ref)


def check_fsdp_tp_placements_are_the_mixed_case():
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.placement_types import _StridedShard
    grads = _grads(_fsdp_tp())
    meshes = {g.device_mesh.mesh_dim_names for g in grads}
    assert meshes == {("dp",), ("dp", "tp")}, meshes
    assert any(isinstance(pl, _StridedShard) for g in grads for pl in g.placements)
    assert any(pl == Replicate() for g in grads for pl in g.placements)


def check_fsdp_tp_mixed_meshes_all_orders_one_collective():
    _check_all_orders(_fsdp_tp(), expect_dtensor=False)


def check_fsdp_tp_nan_on_rank3_all_orders():
    import gradfast
    m = _fsdp_tp()
    if dist.get_rank() == 3:
        local_value(_grads(m)[2]).view(-1)[0] = math.nan  # the colwise weight
    for p in (2.0, 1.0, 3.0, math.inf, -math.inf):
        total = gradfast.get_total_norm(_grads(m), p)
        assert math.isnan(total.item()), (p, total)
        assert_bitwise_same_on_all_ranks(total)


def check_pipeline_stages_of_fsdp_on_one_world_mesh():
    import gradfast
    from torch.distributed.fsdp import fully_shard
    world = _mesh2d(("pp", "dp"))
    stage_id = world["pp"].get_local_rank()
    torch.manual_seed(20 + stage_id)
    stage = torch.nn.Sequential(torch.nn.Linear(4, 5 + stage_id), torch.nn.Linear(5 + stage_id, 2))
    fully_shard(stage, mesh=world["dp"])
    _backward(stage)
    grads = _grads(stage)
    mine = full64(grads)  # this stage's full grads (a dp collective)
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, (stage_id, mine))
    full = [g for sid in (0, 1) for g in next(f for s, f in every if s == sid)]
    saved = [local_value(g).clone() for g in grads]
    for p in ORDERS:
        for g, s in zip(grads, saved):
            local_value(g).copy_(s)
        ref = ref_norm(full, p)
        total, n = collectives(lambda: gradfast.clip_grad_norm_(
            stage.parameters(), 0.5 * ref, p, pp_mesh=world["pp"]))
        assert n == 1, (p, n)
        assert_close_norm(local_value(total).item(), ref, 1e-5, f"p={p}")
        assert_bitwise_same_on_all_ranks(total)


def _check_per_tensor(m, group=None):
    from gradfast.distributed import local_norms, reduce_per_tensor_norms
    grads = _grads(m)
    full = full64(grads)
    for p in ORDERS:
        local = local_norms(grads, p).float()
        per, n = collectives(lambda: reduce_per_tensor_norms(local, grads, p))
        assert n == 1, (p, n)
        assert per.dtype == torch.float32 and per.shape == (len(grads),)
        for i, f in enumerate(full):
            assert_close_norm(per[i].item(), ref_norm([f], p), 1e-5, f"p={p} grad {i}")
        assert_bitwise_same_on_all_ranks(per, group)


def check_per_tensor_norms_hsdp():
    _check_per_tensor(_hsdp())


def check_per_tensor_norms_fsdp_tp_mixed_meshes():
    _check_per_tensor(_fsdp_tp())


def check_per_tensor_norms_nan_on_rank3_survives():
    from gradfast.distributed import local_norms, reduce_per_tensor_norms
    m = _fsdp_tp()
    if dist.get_rank() == 3:
        local_value(_grads(m)[2]).view(-1)[0] = math.nan
        local_value(_grads(m)[4]).view(-1)[0] = math.inf
    grads = _grads(m)
    full = full64(grads)
    for p in (2.0, 1.0, math.inf, -math.inf):
        per = reduce_per_tensor_norms(local_norms(grads, p), grads, p)
        assert math.isnan(per[2].item()), (p, per)
        for i in (0, 1, 3, 4, 5):
            assert_close_norm(per[i].item(), ref_norm([full[i]], p), 1e-5, f"p={p} grad {i}")


def check_per_tensor_norms_within_pipeline_stage():
    from torch.distributed.fsdp import fully_shard
    world = _mesh2d(("pp", "dp"))
    stage_id = world["pp"].get_local_rank()
    torch.manual_seed(20 + stage_id)
    stage = torch.nn.Sequential(torch.nn.Linear(4, 5 + stage_id), torch.nn.Linear(5 + stage_id, 2))
    fully_shard(stage, mesh=world["dp"])
    _backward(stage)
    _check_per_tensor(stage, group=world["dp"].get_group())


CHECKS = list_checks(globals())


@pytest.fixture(scope="module")
def results():
    return run_checks(__name__, 4)


@pytest.mark.parametrize("name", CHECKS)
def test_four_ranks(results, name):
    assert_check(results, name)
