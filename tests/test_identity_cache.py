"""gradfast.distributed.identity_cache: hits by identity only, and keys are not kept alive."""
import gc
import weakref

from gradfast.distributed.identity_cache import IdentityCache


class Key:
    """A plain object with value equality, as DeviceMesh has: the cache must not use it."""

    def __eq__(self, other):
        return isinstance(other, Key)

    def __hash__(self):
        return 0


def test_hit_only_for_the_same_object():
    c, a, b = IdentityCache(), Key(), Key()
    assert c.put(a, "A") == "A"
    assert c.get(a) == "A"
    assert c.get(b) is None  # equal, not identical
    assert c.put(b, False) is False and c.get(b) is False  # a falsy value is still a hit
    assert len(c) == 2


def test_a_key_is_not_kept_alive_and_its_entry_goes_with_it():
    c, a = IdentityCache(), Key()
    c.put(a, [1, 2])
    ref = weakref.ref(a)
    del a
    gc.collect()
    assert ref() is None
    assert len(c) == 0


def test_composite_keys_with_none():
    c, a, b = IdentityCache(), Key(), Key()
    c.put((a, None), "a-none")
    c.put((a, b), "a-b")
    assert c.get((a, None)) == "a-none" and c.get((a, b)) == "a-b"
    assert c.get((b, None)) is None and c.get((b, a)) is None
    del b
    gc.collect()
    assert len(c) == 1 and c.get((a, None)) == "a-none"
    del a
    gc.collect()
    assert len(c) == 0


def test_an_id_reused_by_a_new_object_is_a_miss():
    c = IdentityCache()
    for i in range(200):  # freed objects' addresses are soon reused
        k = Key()
        assert c.get(k) is None
        c.put(k, i)
        del k
    assert len(c) == 0


def test_a_replaced_entry_survives_the_old_keys_death():
    c, a = IdentityCache(), Key()
    c.put(a, 1)
    c.put(a, 2)  # the first entry's weakref dies with it, not with a
    gc.collect()
    assert c.get(a) == 2
