"""A cache keyed by object identity that does not keep its keys alive.

gradfast's distributed decisions depend only on a DeviceMesh (or a DTensorSpec), so they
are cached per object. Holding the object to keep its id unique would keep every mesh, and
through it its process groups and their gloo threads, alive for the rest of the process:
past destroy_process_group into interpreter exit (where a gloo thread that still frees a
tensor takes the GIL and aborts the process), and across re-initialisations (leaked
sockets and threads). Entries hold weak references and go when a key object is freed, so
a value must not refer to its own key objects.

A key is one object, or a tuple of objects (None allowed in a tuple), all of which must be
alive and identical for a hit. Values are never None: get() returns None for a miss.
"""
from __future__ import annotations

import weakref
from typing import Any, Dict, Optional


class IdentityCache:
    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: Dict[Any, tuple] = {}

    def get(self, key) -> Optional[Any]:
        if type(key) is tuple:
            hit = self._entries.get(tuple(map(id, key)))
            if hit is None or not all(k is None if r is None else r() is k
                                      for r, k in zip(hit[0], key)):
                return None
            return hit[1]
        hit = self._entries.get(id(key))
        if hit is None or hit[0]() is not key:
            return None
        return hit[1]

    def put(self, key, value):
        entries = self._entries
        if type(key) is tuple:
            slot = tuple(map(id, key))
        else:
            slot = id(key)

        def drop(ref, slot=slot, entries=entries):
            hit = entries.get(slot)
            if hit is not None and (hit[0] is ref or (type(hit[0]) is tuple and ref in hit[0])):
                del entries[slot]

        if type(key) is tuple:
            refs = tuple(None if k is None else weakref.ref(k, drop) for k in key)
        else:
            refs = weakref.ref(key, drop)
        entries[slot] = (refs, value)
        return value

    def __len__(self) -> int:
        return len(self._entries)
