"""The steady-state step plan of a parameter group of DTensor parameters.

Like gradfast.optim's GroupPlan, it remembers what the first step's checks produced, but
keys on the local shards: to_local() / DTensor wrappers are not stable objects, the local
tensors and their data pointers are. A later step re-checks, one list comprehension each:
the same parameters (and local shards, at the same addresses), grads that are DTensors
with the same spec objects as the plan's (FSDP2 builds each step's grads on the
parameter's own spec), and the same state tensors. Any difference: back to _init_group.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from torch import Tensor
from torch.distributed.tensor import DTensor

_DTENSOR = DTensor


class LocalPlan:
    __slots__ = ("group", "params_list", "params_all", "mask", "all_have_grads", "dparams",
                 "locals", "states", "state_objs", "grad_specs", "p_ptrs", "lists_",
                 "host", "split", "amsgrad")

    def __init__(self, group: Dict, grads_all: List[Optional[Tensor]], dparams: List[Tensor],
                 lists, states, split, host) -> None:
        self.group = group
        self.params_list = group["params"]
        self.params_all = list(group["params"])
        self.mask = [g is not None for g in grads_all]
        self.all_have_grads = all(self.mask)
        self.dparams = dparams  # the parameters with grads (DTensors or plain)
        self.locals = list(lists[0])
        self.lists_ = lists
        self.states = states
        self.amsgrad = bool(group["amsgrad"])
        keys = ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())
        self.state_objs = [st.get(k) for st in states for k in keys]
        self.grad_specs = [g._spec if type(g) is _DTENSOR else None
                           for g in grads_all if g is not None]
        self.p_ptrs = [t.data_ptr() for t in self.locals]
        # The CPU entry point's raw pointers of everything but the grads, as GroupPlan's
        # (the local params' are p_ptrs, checked every step).
        _, _, exp_avgs, exp_avg_sqs, max_sqs, steps = lists
        self.host = host
        if host is None and self.locals and not self.locals[0].is_cuda:
            self.host = (self.p_ptrs, [t.data_ptr() for t in exp_avgs],
                         [t.data_ptr() for t in exp_avg_sqs],
                         [t.data_ptr() for t in max_sqs] if self.amsgrad else [],
                         [t.data_ptr() for t in steps], [t.numel() for t in self.locals])
        self.split = split

    def grads_if_valid(self, group: Dict, params_list: List[Tensor],
                       grads_all: List[Optional[Tensor]], state: Dict) -> Optional[List[Tensor]]:
        """This step's local grads when the plan still describes the group, else None."""
        if (group is not self.group or params_list is not self.params_list
                or len(params_list) != len(self.params_all)
                or bool(group["amsgrad"]) != self.amsgrad
                or not all([a is b for a, b in zip(params_list, self.params_all)])):
            return None
        if self.all_have_grads:
            grads = grads_all
            if not all([g is not None for g in grads]):
                return None
        else:
            if [g is not None for g in grads_all] != self.mask:
                return None
            grads = [g for g in grads_all if g is not None]
        if not all([(g._spec is s) if s is not None else (type(g) is not _DTENSOR)
                    for g, s in zip(grads, self.grad_specs)]):
            return None
        local_grads = [g._local_tensor if s is not None else g
                       for g, s in zip(grads, self.grad_specs)]
        if not all([g.stride() == t.stride() and g.dtype is t.dtype
                    for g, t in zip(local_grads, self.locals)]):
            return None
        if not all([(p._local_tensor if type(p) is _DTENSOR else p) is t
                    for p, t in zip(self.dparams, self.locals)]):
            return None
        if [t.data_ptr() for t in self.locals] != self.p_ptrs:
            return None
        if not all([state.get(p) is st for p, st in zip(self.dparams, self.states)]):
            return None  # a parameter's state dict was replaced
        keys = ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())
        if not all([a is b for a, b in zip([st.get(k) for st in self.states for k in keys],
                                            self.state_objs)]):
            return None
        return local_grads

    def lists_for(self, grads: List[Tensor]):
        """The plan's lists with this step's (local) grads."""
        return self.lists_._replace(grads=grads)
