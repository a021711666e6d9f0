"""gradfast.optim.AdamW on DTensor parameters, on gloo ranks: FSDP2 + tensor parallel on
4 ranks (mixed meshes, _StridedShard, Replicate biases), FSDP2 with uneven and empty shards
and a 2-stage pipeline (pp_mesh=) on 2 ranks, and a checkpoint saved by 4 ranks (dcp.save
of get_optimizer_state_dict) loaded by 2 (resharded).

Oracles: a single-process run of the same model on the same data (every rank runs it
locally); bitwise equality across ranks of grad_norm and of replicated parameters; exactly
one collective per clipped step (CommDebugMode); the saved state gathered in fp64.
Two spawns for the module: 4 ranks, then 2 ranks (which load the 4-rank checkpoint).
"""
import math
import os

import pytest
import torch
import torch.distributed as dist

from dist_helpers import (assert_bitwise_same_on_all_ranks, assert_check, collectives,
                          list_checks, local_value, run_checks)

STEPS = 3
HYPER = dict(lr=1e-2, weight_decay=0.1, max_grad_norm=0.05)


def _ckpt_dir():
    return os.environ["GRADFAST_TEST_CKPT"]


def _layers():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.LayerNorm(4), torch.nn.Linear(4, 6), torch.nn.ReLU(),
                               torch.nn.Linear(6, 3))


def _batches(n_replicas):
    torch.manual_seed(42)
    return [[torch.randn(5, 4) for _ in range(n_replicas)] for _ in range(STEPS)]


def _loss(model, x):
    return model(x).pow(2).mean()


def _single_process_run(n_replicas, **extra):
    """The oracle: one process, the mean of the replicas' losses (= FSDP's averaged grads)."""
    import gradfast
    model = _layers()
    opt = gradfast.optim.AdamW(model.parameters(), **HYPER, **extra)
    norms = []
    for xs in _batches(n_replicas):
        sum(_loss(model, x) for x in xs).div(n_replicas).backward()
        opt.step()
        norms.append(opt.grad_norm.clone())
        opt.zero_grad()
    return model, norms


def _fsdp_tp_model():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    m = _layers()
    parallelize_module(m, mesh["tp"], {"1": ColwiseParallel(), "3": RowwiseParallel()})
    fully_shard(m, mesh=mesh["dp"])
    return m, mesh


def _train(model, opt, replica, n_replicas, poison_rank=None):
    n_coll, norms = [], []
    for step, xs in enumerate(_batches(n_replicas)):
        _loss(model, xs[replica]).backward()
        if poison_rank is not None and dist.get_rank() == poison_rank and step == STEPS - 1:
            # The colwise weight: sharded over both dims, so rank 3's shard is its own
            # (a NaN in an uncounted replica could not happen: replicas are equal).
            local_value(model[1].weight.grad).view(-1)[0] = math.nan
        _, n = collectives(opt.step)
        n_coll.append(n)
        norms.append(opt.grad_norm)
        opt.zero_grad()
    return n_coll, norms


# ------------------------------------------------------------------------------- 4 ranks

def check4_fsdp_tp_adamw_matches_single_process():
    import gradfast
    model, mesh = _fsdp_tp_model()
    opt = gradfast.optim.AdamW(model.parameters(), **HYPER)
    n_coll, norms = _train(model, opt, mesh["dp"].get_local_rank(), 2)
    assert n_coll == [1] * STEPS, n_coll
    ref_model, ref_norms = _single_process_run(2)
    for got, ref in zip(norms, ref_norms):
        assert type(got) is torch.Tensor and got.shape == (), type(got)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=0)
        assert_bitwise_same_on_all_ranks(got)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p.full_tensor(), q.detach(), rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"{name}: {m}")
        assert isinstance(opt.state[p]["exp_avg"], type(p)), type(opt.state[p]["exp_avg"])
        assert opt.state[p]["exp_avg"].placements == p.placements
    # Replicated shards (the rowwise bias over tp, the LayerNorm over tp) stay bitwise equal.
    tp_group = mesh["tp"].get_group()
    for p in (model[0].weight, model[3].bias):
        assert_bitwise_same_on_all_ranks(local_value(p), tp_group)


def check4_skip_nonfinite_decides_the_same_on_every_rank():
    import gradfast
    model, mesh = _fsdp_tp_model()
    opt = gradfast.optim.AdamW(model.parameters(), **HYPER, skip_nonfinite=True)
    before = {}

    def remember(o, *args, **kwargs):
        before.update({id(p): local_value(p).clone() for p in model.parameters()})
    handle = opt.register_step_pre_hook(remember)
    _train(model, opt, mesh["dp"].get_local_rank(), 2, poison_rank=3)
    handle.remove()
    assert opt.skipped_steps.item() == 1, (opt.skipped_steps, opt.grad_norm)
    for p in model.parameters():  # the last (poisoned) step left everything as it was
        assert torch.equal(local_value(p), before[id(p)])
    assert_bitwise_same_on_all_ranks(opt.skipped_steps)


def check4_checkpoint_round_trip_and_save_for_two_ranks():
    import gradfast
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict,
                                                         set_optimizer_state_dict)
    model, mesh = _fsdp_tp_model()
    opt = gradfast.optim.AdamW(model.parameters(), **HYPER)
    _train(model, opt, mesh["dp"].get_local_rank(), 2)
    osd = get_optimizer_state_dict(model, opt)
    full = {fqn: {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).double()
                  for k, v in st.items()} for fqn, st in osd["state"].items()}
    # Same ranks: a fresh optimizer takes the state back exactly.
    opt2 = gradfast.optim.AdamW(model.parameters(), **HYPER)
    set_optimizer_state_dict(model, opt2, osd)
    for p in model.parameters():
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(local_value(opt2.state[p][k]), local_value(opt.state[p][k]))
        assert torch.equal(opt2.state[p]["step"], opt.state[p]["step"])
    opt2.step()  # and steps with it
    dcp.save({"model": get_model_state_dict(model), "optim": osd},
             checkpoint_id=os.path.join(_ckpt_dir(), "dcp"))
    if dist.get_rank() == 0:
        torch.save(full, os.path.join(_ckpt_dir(), "full_state.pt"))
    dist.barrier()


# ------------------------------------------------------------------------------- 2 ranks

def check2_load_four_rank_checkpoint_resharded():
    import gradfast
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict,
                                                         set_model_state_dict,
                                                         set_optimizer_state_dict)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    model = _layers()
    fully_shard(model, mesh=init_device_mesh("cpu", (2,), mesh_dim_names=("dp",)))
    opt = gradfast.optim.AdamW(model.parameters(), **HYPER)
    sd = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(sd, checkpoint_id=os.path.join(_ckpt_dir(), "dcp"))
    set_model_state_dict(model, sd["model"])
    set_optimizer_state_dict(model, opt, sd["optim"])
    saved = torch.load(os.path.join(_ckpt_dir(), "full_state.pt"))
    osd = get_optimizer_state_dict(model, opt)
    assert set(osd["state"]) == set(saved), (set(osd["state"]), set(saved))
    for fqn, st in osd["state"].items():
        for k, v in st.items():
            got = (v.full_tensor() if hasattr(v, "full_tensor") else v).double()
            assert torch.equal(got, saved[fqn][k]), (fqn, k)
    _loss(model, torch.randn(5, 4)).backward()
    _, n = collectives(opt.step)
    assert n == 1


def _uneven_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1),
                               torch.nn.Linear(1, 3))


def check2_fsdp_uneven_empty_shards_match_single_process():
    import gradfast
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    model = _uneven_model()
    fully_shard(model, mesh=init_device_mesh("cpu", (2,), mesh_dim_names=("dp",)))
    if dist.get_rank() == 1:
        assert any(local_value(p).numel() == 0 for p in model.parameters())
    ref = _uneven_model()
    opt = gradfast.optim.AdamW(model.parameters(), **HYPER)
    ref_opt = gradfast.optim.AdamW(ref.parameters(), **HYPER)
    inits = []
    init_group = opt._init_group
    opt._init_group = lambda *a, **k: (inits.append(1), init_group(*a, **k))[1]
    torch.manual_seed(3)
    for _ in range(STEPS):
        xs = [torch.randn(5, 4) for _ in range(2)]
        model(xs[dist.get_rank()]).pow(2).mean().backward()
        sum(ref(x).pow(2).mean() for x in xs).div(2).backward()
        _, n = collectives(opt.step)
        assert n == 1, n
        ref_opt.step()
        torch.testing.assert_close(opt.grad_norm, ref_opt.grad_norm, rtol=1e-5, atol=0)
        opt.zero_grad(), ref_opt.zero_grad()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.full_tensor(), q.detach(), rtol=1e-5, atol=1e-6)
    assert len(opt._plans) == 1 and len(inits) == 1, inits  # later steps: from the plan


def check2_no_clip_no_collective():
    import gradfast
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    model = _uneven_model()
    fully_shard(model, mesh=init_device_mesh("cpu", (2,), mesh_dim_names=("dp",)))
    opt = gradfast.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(5, 4)).sum().backward()
    _, n = collectives(opt.step)
    assert n == 0, n


def check2_pipeline_stages_share_one_grad_norm():
    import gradfast
    from torch.distributed.device_mesh import init_device_mesh
    pp = init_device_mesh("cpu", (2,), mesh_dim_names=("pp",))
    rank = dist.get_rank()
    torch.manual_seed(10 + rank)
    stage = torch.nn.Linear(3 + rank, 2)
    stage(torch.randn(5, 3 + rank)).sum().backward()
    every = [None] * 2
    dist.all_gather_object(every, [p.grad.double() for p in stage.parameters()])
    ref = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for s in every for g in s]))
    opt = gradfast.optim.AdamW(stage.parameters(), **HYPER, pp_mesh=pp)
    _, n = collectives(opt.step)
    assert n == 1, n
    torch.testing.assert_close(opt.grad_norm.double(), ref, rtol=1e-6, atol=0)
    assert_bitwise_same_on_all_ranks(opt.grad_norm)


def _named(prefix):
    return [n for n in list_checks(globals()) if n.startswith(prefix)]


CHECKS4 = _named("check4_")
CHECKS2 = _named("check2_")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    os.environ["GRADFAST_TEST_CKPT"] = str(tmp_path_factory.mktemp("ckpt"))
    return {4: run_checks(__name__, 4, prefix="check4_"),
            2: run_checks(__name__, 2, prefix="check2_")}


@pytest.mark.parametrize("name", CHECKS4)
def test_four_ranks(results, name):
    assert_check(results[4], name)


@pytest.mark.parametrize("name", CHECKS2)
def test_two_ranks(results, name):
    assert_check(results[2], name)
