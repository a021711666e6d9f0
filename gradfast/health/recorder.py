"""The device side of GradMonitor: one row of norms per step written into a small buffer
on the gradients' device, with no host synchronisation, and copied to the host in one
transfer when the buffer is full (or on demand).

Row layout: [total, clipped, skipped, norm_0 .. norm_{n-1}]; a negative norm means the
parameter had no gradient that step. The host keeps the read-back rows with a leading
step column (``chunks``), trimmed to the last ``keep`` steps.

Inside a torch.compile'd region (a compiled ``optimizer.step()`` with an attached monitor)
the host-side row counter cannot change without a recompile per value, so rows go to a
second device ring buffer (``COMPILED_ROWS`` rows, or ``every`` if larger) at a device-side
cursor: tensor ops only, nothing for dynamo to guard on. The next eager call (a record,
``flush``, ``data``, ...) drains it in order, with one sync; when more rows than it holds
were written in between, the oldest are dropped with a warning.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["NormRecorder", "MISSING"]

MISSING = -1.0  # per-tensor entry of a parameter without a gradient (norms are >= 0)
COMPILED_ROWS = 512  # capacity of the ring buffer written inside compiled regions


def _flag(value, total, device) -> torch.Tensor:
    """A 1-element fp32 0/1 flag: ``total > value`` when total is given (a clip event),
    else ``value`` itself (a bool or a bool/number tensor)."""
    if value is None:
        return torch.zeros(1, dtype=torch.float32, device=device)
    if total is not None:
        if isinstance(value, torch.Tensor):
            value = value.detach().to(device=device, dtype=torch.float32).reshape(1)
        return torch.gt(total, value).to(torch.float32)
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, dtype=torch.float32).reshape(1)
    return torch.full((1,), float(bool(value)), dtype=torch.float32, device=device)


class NormRecorder:
    """Rows of norms for ``parameters``, buffered ``every`` at a time on the device."""

    def __init__(self, parameters: Sequence[torch.Tensor], every: int,
                 keep: Optional[int]) -> None:
        self.parameters = list(parameters)
        self.every = every
        self.keep = keep
        self.buf: Optional[torch.Tensor] = None
        self.pending = 0  # rows in buf not read back yet
        self.num_steps = 0  # rows recorded so far (the next row's step index)
        self.chunks: List[np.ndarray] = []
        self._index_cache: Dict[Tuple[int, ...], torch.Tensor] = {}
        self.ring: Optional[torch.Tensor] = None  # rows written inside compiled regions
        self.ring_count: Optional[torch.Tensor] = None  # int64: rows ever written there
        self._ring_drained = 0

    def prepare_compiled(self, device: torch.device) -> None:
        """Allocate the compiled-region ring buffer (eagerly: a compiled region must not
        create it) on device."""
        if self.ring is None or self.ring.device != device:
            self.drain()
            rows = max(self.every, COMPILED_ROWS)
            self.ring = torch.zeros((rows, 3 + len(self.parameters)), dtype=torch.float32,
                                    device=device)
            self.ring_count = torch.zeros((), dtype=torch.int64, device=device)
            self._ring_drained = 0

    def record_compiled(self, total, per_tensor, params, max_norm, skipped) -> None:
        """record() inside a compiled region: one row at the ring's device-side cursor."""
        if self.ring is None:
            raise RuntimeError("GradMonitor: record inside torch.compile needs the monitor "
                               "attached (GradMonitor.attach) before the first compiled call")
        per_tensor = per_tensor.detach()
        if params is not None:
            per_tensor = self._aligned_traced(per_tensor, list(params))
        device = self.ring.device
        total = total.detach().to(device=device, dtype=torch.float32).reshape(1)
        row = torch.cat([total, _flag(max_norm, total, device), _flag(skipped, None, device),
                         per_tensor.to(device=device, dtype=torch.float32).reshape(-1)])
        slot = torch.remainder(self.ring_count, self.ring.shape[0]).reshape(1)
        self.ring.index_copy_(0, slot, row.reshape(1, -1))
        self.ring_count.add_(1)

    def _aligned_traced(self, per_tensor, params):
        # _aligned without the id()-keyed cache: the index is a constant of the graph.
        pos = []
        for q in self.parameters:
            k = len(params)
            for i, r in enumerate(params):
                if r is q:
                    k = i
                    break
            pos.append(k)
        padded = torch.cat([per_tensor.reshape(-1), per_tensor.new_full((1,), MISSING)])
        return padded[pos]

    def drain(self) -> Optional[np.ndarray]:
        """Move the rows compiled regions wrote since the last drain into the host rows
        (one sync); returns them like readback(), or None when there were none."""
        if self.ring is None:
            return None
        written = int(self.ring_count)
        new = written - self._ring_drained
        if new == 0:
            return None
        block = self.readback()  # eager rows recorded before come first
        cap = self.ring.shape[0]
        if new > cap:
            warnings.warn(f"GradMonitor: {new - cap} steps recorded inside torch.compile were "
                          f"dropped (only the last {cap} are kept between eager reads; call "
                          "monitor.flush() more often)", stacklevel=4)
            self.num_steps += new - cap
            new = cap
        slots = [(written - new + k) % cap for k in range(new)]
        rows = self.ring[slots].to("cpu", dtype=torch.float64).numpy()
        self._ring_drained = written
        steps = np.arange(self.num_steps, self.num_steps + new, dtype=np.float64)[:, None]
        self.num_steps += new
        ring_block = np.concatenate([steps, rows], axis=1)
        self.chunks.append(ring_block)
        self._trim()
        return ring_block if block is None else np.concatenate([block, ring_block])

    @property
    def full(self) -> bool:
        return self.pending == self.every

    def _aligned(self, per_tensor: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """per_tensor (aligned with params) re-ordered onto the watched parameters, with
        MISSING for those not in params; an index_select, so no sync."""
        key = tuple(id(q) for q in params)
        idx = self._index_cache.get(key)
        if idx is None or idx.device != per_tensor.device:
            where = {id(q): i for i, q in enumerate(params)}
            host = torch.tensor([where.get(id(q), len(params)) for q in self.parameters],
                                dtype=torch.int64)
            if per_tensor.device.type == "cuda":
                host = host.pin_memory()
            idx = host.to(per_tensor.device, non_blocking=True)
            self._index_cache = {key: idx}
        padded = torch.cat([per_tensor.reshape(-1), per_tensor.new_full((1,), MISSING)])
        return padded.index_select(0, idx)

    def record(self, total, per_tensor, params, max_norm, skipped) -> Optional[np.ndarray]:
        """Write one row; returns the rows read back first when the buffer was full (or
        lived on another device, or compiled regions wrote rows), else None."""
        block = self.drain()
        if self.full:
            more = self.readback()
            block = more if block is None else np.concatenate([block, more])
        per_tensor = per_tensor.detach()
        if params is not None:
            per_tensor = self._aligned(per_tensor, list(params))
        n = len(self.parameters)
        if per_tensor.numel() != n:
            raise ValueError(f"GradMonitor.record: per_tensor has {per_tensor.numel()} "
                             f"entries, expected {n} (one per watched parameter)")
        device = per_tensor.device
        if self.buf is None or self.buf.device != device:
            if self.buf is not None:
                more = self.readback()
                if more is not None:
                    block = more if block is None else np.concatenate([block, more])
            self.buf = torch.zeros((self.every, 3 + n), dtype=torch.float32, device=device)
        row = self.buf[self.pending]
        total = total.detach().to(device=device, dtype=torch.float32).reshape(1)
        torch.cat([total, _flag(max_norm, total, device), _flag(skipped, None, device),
                   per_tensor.to(torch.float32).reshape(-1)], out=row)
        self.pending += 1
        self.num_steps += 1
        return block

    def annotate(self, max_norm=None, skipped=None, clipped=None) -> None:
        """Set the clipped / skipped flags of the latest row (no sync)."""
        if self.pending == 0:
            raise RuntimeError("GradMonitor.annotate: no step recorded since the last read-back")
        row = self.buf[self.pending - 1]
        if max_norm is not None:
            row[1:2].copy_(_flag(max_norm, row[0:1], row.device))
        if clipped is not None:
            row[1:2].copy_(_flag(clipped, None, row.device))
        if skipped is not None:
            row[2:3].copy_(_flag(skipped, None, row.device))

    def readback(self) -> Optional[np.ndarray]:
        """Copy the pending rows to the host (the one sync); returns them with a leading
        step column (float64), or None when nothing is pending."""
        if self.pending == 0:
            return None
        rows = self.buf[: self.pending].to("cpu", dtype=torch.float64).numpy()
        first = self.num_steps - self.pending
        self.pending = 0
        steps = np.arange(first, first + rows.shape[0], dtype=np.float64)[:, None]
        block = np.concatenate([steps, rows], axis=1)
        self.chunks.append(block)
        self._trim()
        return block

    def _trim(self) -> None:
        if self.keep is None:
            return
        rows = sum(c.shape[0] for c in self.chunks)
        if rows > 2 * self.keep or (len(self.chunks) > 64 and rows > self.keep):
            self.chunks = [np.concatenate(self.chunks)[-self.keep:]]

    def rows(self) -> np.ndarray:
        """Every kept row read back so far: steps x (4 + n)."""
        n = len(self.parameters)
        return np.concatenate(self.chunks) if self.chunks else np.zeros((0, 4 + n))
