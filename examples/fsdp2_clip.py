"""FSDP2 training with gradfast's global-norm clipping, on CPU with gloo.

    torchrun --nproc-per-node 2 examples/fsdp2_clip.py

The model's parameters are sharded over the ranks (uneven shards included: Linear(16, 3)
splits its 3 rows 2/1); gradfast.clip_grad_norm_ takes the DTensor gradients as they are,
computes each rank's partial norm with its native kernel, combines them in one all-reduce
of 16 bytes and scales the local shards. The norm it returns is the same on every rank.
(gradfast.optim.AdamW(..., max_grad_norm=0.5) would fuse the clipping into the step.)
"""
import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor.debug import CommDebugMode

import gradfast


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("dp",))

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    # gradfast's fused AdamW steps the local shards; its state stays DTensors (checkpoints).
    opt = gradfast.optim.AdamW(model.parameters(), lr=1e-2)

    torch.manual_seed(1 + rank)  # each rank its own data
    for step in range(5):
        x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        with CommDebugMode() as comm:
            norm = gradfast.clip_grad_norm_(model.parameters(), max_norm=0.5)
        opt.step()
        opt.zero_grad()
        if rank == 0:
            print(f"step {step}: loss {loss.item():.4f}  grad norm {norm.full_tensor().item():.4f}"
                  f"  ({comm.get_total_counts()} collective in the clip)")
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    main()
