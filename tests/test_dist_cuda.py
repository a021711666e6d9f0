"""The distributed clip and AdamW step on CUDA with NCCL (2 GPUs; `cuda` marker: skipped
without them): the same algorithm on the GPU, one collective per clipped step, and no
host synchronisation (torch.cuda.set_sync_debug_mode("error") around the calls).
"""
import math

import pytest
import torch
import torch.distributed as dist

from dist_helpers import (assert_bitwise_same_on_all_ranks, assert_check, assert_close_norm,
                          collectives, full64, list_checks, ref_norm, run_checks)

pytestmark = pytest.mark.cuda


def _model():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 33), torch.nn.Tanh(), torch.nn.Linear(33, 1)).cuda()
    fully_shard(m, mesh=init_device_mesh("cuda", (dist.get_world_size(),),
                                         mesh_dim_names=("dp",)))
    torch.manual_seed(1 + dist.get_rank())
    m(torch.randn(8, 16, device="cuda")).square().sum().backward()
    return m


def check_nccl_clip_all_orders_without_host_sync():
    import gradfast
    m = _model()
    grads = [p.grad for p in m.parameters()]
    saved = [g._local_tensor.clone() for g in grads]
    full = full64(grads)
    for p in (2.0, 1.0, 3.0, 0.0, math.inf, -math.inf):
        for g, s in zip(grads, saved):
            g._local_tensor.copy_(s)
        gradfast.clip_grad_norm_(m.parameters(), 1e9, p)  # warm-up: caches and groups
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            total, n = collectives(lambda: gradfast.clip_grad_norm_(m.parameters(), 1e9, p))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert n == 1
        assert_close_norm(total.to_local().item(), ref_norm(full, p), 1e-5, f"p={p}")
        assert_bitwise_same_on_all_ranks(total)


def check_nccl_adamw_clipped_step_one_collective():
    import gradfast
    m = _model()
    opt = gradfast.optim.AdamW(m.parameters(), lr=1e-3, max_grad_norm=0.1)
    opt.step()
    torch.cuda.synchronize()
    _, n = collectives(opt.step)
    assert n == 1
    assert_bitwise_same_on_all_ranks(opt.grad_norm)


CHECKS = list_checks(globals())


@pytest.fixture(scope="module")
def results():
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices for NCCL")
    return run_checks(__name__, 2, backend="nccl")


@pytest.mark.parametrize("name", CHECKS)
def test_nccl(results, name):
    assert_check(results, name)
