"""
wslb.proxy.grouped: members by key, a lone member kept without a set of
its own, read as tuples (what the registry's reconcile reads).
"""

import sys

from wslb.proxy.grouped import Grouped


def test_members_by_key_as_tuples():
    grouped = Grouped()
    grouped.add("a", "r1")
    grouped.add("a", "r1")  # once only
    grouped.add("b", "r2")
    assert dict(grouped) == {"a": ("r1",), "b": ("r2",)}
    grouped.add("a", "r3")
    assert sorted(grouped["a"]) == ["r1", "r3"] and len(grouped) == 2
    grouped.discard("a", "r1")
    assert grouped["a"] == ("r3",)
    grouped.discard("a", "r9")  # not held: nothing changes
    grouped.discard("c", "r1")
    assert dict(grouped) == {"a": ("r3",), "b": ("r2",)}
    grouped.discard("a", "r3")
    grouped.discard("b", "r2")
    assert dict(grouped) == {} and "a" not in grouped
    assert grouped.get("a", ()) == ()


def test_a_lone_member_costs_no_set():
    grouped = Grouped()
    for i in range(100):
        grouped.add(f"k{i}", f"r{i}")
    assert all(type(member) is str for member in grouped._byKey.values())
    grouped.add("k0", "again")
    grouped.discard("k0", "again")
    assert type(grouped._byKey["k0"]) is str
    assert sys.getsizeof(grouped._byKey["k0"]) < sys.getsizeof({"r0"})


def test_objects_are_grouped_by_identity():
    class Leg:
        pass

    one, two = Leg(), Leg()
    grouped = Grouped()
    grouped.add("k", one)
    grouped.add("k", two)
    assert set(grouped["k"]) == {one, two}
    grouped.discard("k", one)
    assert grouped["k"] == (two,)
