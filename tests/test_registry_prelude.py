"""
wslb.registry.prelude: a registry script carries the prelude's definitions
its body uses, theirs too, in the prelude's order, and nothing else (each
definition costs Redis work at every call). test_registry_redis runs every
script so built against a real Redis.
"""

import pytest

from wslb.registry import redis_ops
from wslb.registry.prelude import definitions, withPrelude

PRELUDE = """\
-- the header
local P = KEYS[1]
local A, B = P .. 'a', P .. 'b'

-- a helper
local function key(id) return A .. id end
local function unused(id)
  return B .. id

end
local told = false
local function tell()
  if not told then told = true end
end
"""


def test_definitions_in_order_with_their_names():
    found = definitions(PRELUDE)
    assert [names for names, _ in found] == [["P"], ["A", "B"], ["key"], ["unused"], ["told"],
                                             ["tell"]]
    assert found[3][1] == "local function unused(id)\n  return B .. id\n\nend"


def test_a_body_gets_what_it_names_and_what_that_names():
    source = withPrelude(PRELUDE, "-- tell unused\nreturn key(ARGV[1])\n")
    assert source.splitlines()[:3] == [
        "local P = KEYS[1]", "local A, B = P .. 'a', P .. 'b'",
        "local function key(id) return A .. id end"]
    assert "unused" not in source.split("--")[0] and "told" not in source
    assert source.endswith("return key(ARGV[1])\n")
    assert "local told = false" in withPrelude(PRELUDE, "tell()")


def test_a_stray_top_level_line_is_refused():
    with pytest.raises(ValueError, match="outside any definition"):
        definitions("local P = 1\n-- a comment\n  x = 2\n")
    with pytest.raises(ValueError, match="defines nothing"):
        definitions("local\n")


def test_registry_scripts_carry_less_than_the_whole_prelude():
    def helpers(source):
        return sum(line.startswith("local function ") for line in source.splitlines())

    whole = helpers(redis_ops._text("_prelude"))
    for name in ("assign", "release", "abandon", "reconcile"):
        assert 0 < helpers(redis_ops.registryScript(name)) < whole
    assert helpers(redis_ops.registryScript("release")) < whole / 4
