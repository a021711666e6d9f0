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

Decisions are cached per (mesh, placements): they depend on nothing else. The caches hold
no mesh alive (identity_cache.py).
"""
from __future__ import annotations

import itertools
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from .identity_cache import IdentityCache

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


_COORDS = IdentityCache()  # root mesh -> {global rank: coordinate}


def coordinates(root: DeviceMesh) -> Dict[int, Tuple[int, ...]]:
    hit = _COORDS.get(root)
    return hit if hit is not None else _COORDS.put(root, _rank_coordinates(root))


def spanned_root_dims(mesh: Optional[DeviceMesh], root: DeviceMesh) -> frozenset:
    """The root dims along which the ranks of this rank's copy of `mesh` differ."""
    if mesh is None:
        return frozenset()
    coords = coordinates(root)
    mine = [coords[int(r)] for r in mesh.mesh.flatten().tolist()]
    return frozenset(d for d in range(root.ndim) if len({c[d] for c in mine}) > 1)


class Accounting:
    """The replica decisions of one call's reduction: the root mesh, this rank's coordinate
    on it, and the root dims that pp_mesh spans (never replicas)."""

    def __init__(self, root: DeviceMesh, pp_mesh: Optional[DeviceMesh],
                 free_dims: frozenset = frozenset()) -> None:
        """free_dims: root dims outside the reduction (never replicas), besides pp's."""
        # Weak: an Accounting lives in caches keyed by its root, which it must not keep alive.
        self._root = weakref.ref(root)
        self.ndim = root.ndim
        self.my_coord = coordinates(root)[dist.get_rank()]
        self.pp_dims = free_dims | (
            spanned_root_dims(pp_mesh, root) if pp_mesh is not None else frozenset())
        self._by_mesh = IdentityCache()  # mesh -> {placements: counted}
        self._by_spec = IdentityCache()  # DTensorSpec -> counted

    def _replica_dims_counted(self, spanned: frozenset) -> bool:
        # A root dim neither the tensor's mesh nor pp spans: this rank counts at coordinate 0.
        return all(self.my_coord[d] == 0 for d in range(self.ndim)
                   if d not in spanned and d not in self.pp_dims)

    def plain_counted(self) -> bool:
        return self._replica_dims_counted(frozenset())

    def spec_counted(self, spec) -> bool:
        """counted() of a DTensorSpec, cached on the spec object (FSDP2 reuses one spec
        per parameter for its grads, so steady-state steps only look it up); refuses
        Partial placements the first time a spec is seen."""
        hit = self._by_spec.get(spec)
        if hit is not None:
            return hit
        check_not_partial(spec.placements)
        return self._by_spec.put(spec, self.counted(spec.mesh, spec.placements))

    def counted(self, mesh: DeviceMesh, placements: Sequence) -> bool:
        by_placements = self._by_mesh.get(mesh)
        if by_placements is None:
            by_placements = self._by_mesh.put(mesh, {})
        key = tuple(placements)
        hit = by_placements.get(key)
        if hit is not None:
            return hit
        coord = mesh.get_coordinate()
        if coord is None:  # this rank is outside the mesh: its shell holds nothing
            decision = False
        else:
            replicas_ok = all(c == 0 for c, pl in zip(coord, placements) if pl.is_replicate())
            decision = replicas_ok and self._replica_dims_counted(
                spanned_root_dims(mesh, self._root()))
        by_placements[key] = decision
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
