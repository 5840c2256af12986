"""
Members grouped by session key, where a key almost always has one: the
connections of a session, the request ids held for it. A set per key would
cost 216 bytes for that one member (a fifth of what wslb itself keeps per
idle relayed connection); a lone member is kept as itself, a set only from
the second on.
"""

from __future__ import annotations

from collections.abc import Mapping


class Grouped(Mapping):
    """
    Key -> a tuple of its members (read-only: L{add} and L{discard} change
    it). Members are hashable and never sets themselves.
    """

    __slots__ = ("_byKey",)

    def __init__(self):
        self._byKey = {}  # key -> its member, or a set of two or more

    def add(self, key, member):
        held = self._byKey.get(key)
        if held is None:
            self._byKey[key] = member
        elif type(held) is set:
            held.add(member)
        elif held != member:
            self._byKey[key] = {held, member}

    def discard(self, key, member):
        held = self._byKey.get(key)
        if type(held) is set:
            held.discard(member)
            if len(held) == 1:
                self._byKey[key] = held.pop()
        elif held is not None and held == member:
            del self._byKey[key]

    def __getitem__(self, key):
        held = self._byKey[key]
        return tuple(held) if type(held) is set else (held,)

    def __contains__(self, key):
        return key in self._byKey

    def __iter__(self):
        return iter(self._byKey)

    def __len__(self):
        return len(self._byKey)
