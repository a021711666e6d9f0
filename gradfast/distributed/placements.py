"""Placement accounting: which local shards this rank counts in a global norm.

A global norm must count every logical element exactly once over the ranks of the
reduction (the root device mesh). A rank counts its local shard of a gradient when it is
the representative of its replica class:
- on each mesh dim where the gradient is Replicate, only mesh coordinate 0 counts;
- on each root-mesh dim that the gradient's mesh does not span (a LayerNorm sharded over
  dp only, on a dp x tp root), the gradient is a replica too: coordinate 0 counts;
- pipeline-stage dims (those pp_mesh spans) are never replicas: every stage counts its own;
- a plain tensor is replicated over every non-pipeline root dim (as under DDP).
Shard and _StridedShard dims split distinct elements, so every coordinate counts. Partial
gradients hold addends, not elements, and are refused.

Decisions are cached per (mesh, placements): they depend on nothing else.
"""
from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

_PARTIAL_MSG = (
    "gradfast: a gradient with a Partial placement ({}) holds unreduced addends, not "
    "elements, so its norm cannot be taken or clipped shard by shard; redistribute it to "
    "Shard or Replicate placements first (FSDP2 and tensor parallel gradients never are "
    "Partial after backward)"
)


def root_of(mesh: DeviceMesh) -> DeviceMesh:
    return mesh._get_root_mesh()


def _rank_coordinates(root: DeviceMesh) -> Dict[int, Tuple[int, ...]]:
    """{global rank: its coordinate in root}, for every rank of root (row-major order)."""
    full = root.mesh
    return {int(r): idx for idx, r in zip(itertools.product(*map(range, full.shape)),
                                          full.flatten().tolist())}


_COORDS: Dict[int, Tuple[DeviceMesh, Dict[int, Tuple[int, ...]]]] = {}


def coordinates(root: DeviceMesh) -> Dict[int, Tuple[int, ...]]:
    hit = _COORDS.get(id(root))
    if hit is None or hit[0] is not root:
        hit = _COORDS[id(root)] = (root, _rank_coordinates(root))
    return hit[1]


def spanned_root_dims(mesh: Optional[DeviceMesh], root: DeviceMesh) -> frozenset:
    """The root dims along which the ranks of this rank's copy of `mesh` differ."""
    if mesh is None:
        return frozenset()
    coords = coordinates(root)
    mine = [coords[int(r)] for r in mesh.mesh.flatten().tolist()]
    return frozenset(d for d in range(root.ndim) if len({c[d] for c in mine}) > 1)


_SPEC_CACHE_SIZE = 1 << 14


class Accounting:
    """The replica decisions of one call's reduction: the root mesh, this rank's coordinate
    on it, and the root dims that pp_mesh spans (never replicas)."""

    def __init__(self, root: DeviceMesh, pp_mesh: Optional[DeviceMesh],
                 free_dims: frozenset = frozenset()) -> None:
        """free_dims: root dims outside the reduction (never replicas), besides pp's."""
        self.root = root
        self.my_coord = coordinates(root)[dist.get_rank()]
        self.pp_dims = free_dims | (
            spanned_root_dims(pp_mesh, root) if pp_mesh is not None else frozenset())
        self._cache: Dict[tuple, Tuple[object, bool]] = {}
        self._spec_cache: Dict[int, Tuple[object, bool]] = {}

    def _replica_dims_counted(self, spanned: frozenset) -> bool:
        # A root dim neither the tensor's mesh nor pp spans: this rank counts at coordinate 0.
        return all(self.my_coord[d] == 0 for d in range(self.root.ndim)
                   if d not in spanned and d not in self.pp_dims)

    def plain_counted(self) -> bool:
        return self._replica_dims_counted(frozenset())

    def spec_counted(self, spec) -> bool:
        """counted() of a DTensorSpec, cached on the spec object (FSDP2 reuses one spec
        per parameter for its grads, so steady-state steps only look it up); refuses
        Partial placements the first time a spec is seen."""
        hit = self._spec_cache.get(id(spec))
        if hit is not None and hit[0] is spec:
            return hit[1]
        check_not_partial(spec.placements)
        decision = self.counted(spec.mesh, spec.placements)
        if len(self._spec_cache) > _SPEC_CACHE_SIZE:
            self._spec_cache.clear()
        self._spec_cache[id(spec)] = (spec, decision)  # the spec kept: its id stays unique
        return decision

    def counted(self, mesh: DeviceMesh, placements: Sequence) -> bool:
        key = (id(mesh), tuple(placements))
        hit = self._cache.get(key)
        if hit is not None:
            return hit[1]
        coord = mesh.get_coordinate()
        if coord is None:  # this rank is outside the mesh: its shell holds nothing
            decision = False
        else:
            replicas_ok = all(c == 0 for c, pl in zip(coord, placements) if pl.is_replicate())
            decision = replicas_ok and self._replica_dims_counted(
                spanned_root_dims(mesh, self.root))
        self._cache[key] = (mesh, decision)  # the mesh is kept so its id stays unique
        return decision


def check_not_partial(placements: Sequence) -> None:
    for pl in placements:
        if pl.is_partial():
            raise ValueError(_PARTIAL_MSG.format(pl))


def meshes_of(tensors: Sequence[torch.Tensor]) -> List[DeviceMesh]:
    """The distinct device meshes of the DTensors among tensors, in order of appearance."""
    seen: Dict[int, DeviceMesh] = {}
    for t in tensors:
        if isinstance(t, DTensor):
            m = t._spec.mesh
            seen.setdefault(id(m), m)
    return list(seen.values())


def common_root(meshes: Sequence[DeviceMesh], pp_mesh: Optional[DeviceMesh]) -> DeviceMesh:
    """The one root mesh of every gradient mesh and of pp_mesh; a clear error otherwise."""
    roots: List[DeviceMesh] = []
    for m in list(meshes) + ([pp_mesh] if pp_mesh is not None else []):
        r = root_of(m)
        # Equal meshes built separately (same ranks, layout and names) are one root.
        if not any(r is q or r == q for q in roots):
            roots.append(r)
    if len(roots) != 1:
        raise ValueError(
            "gradfast: the gradients' device meshes (and pp_mesh) must be submeshes of one "
            "root DeviceMesh, so that one all-reduce over it covers them all; got roots "
            f"{roots}. Build them by slicing one init_device_mesh(...), e.g. "
            "world['dp'], world['tp'], world['pp']")
    return roots[0]
