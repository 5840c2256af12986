"""
A registry script's source: its body after the part of the prelude it uses.

Every registry script is one self-contained EVAL, so the prelude's
definitions (``lua/_prelude.lua``: key names, helpers) run again at each
call, a closure or a string built for each one. Whole, that was a third of
what Redis spends on a connection's assign and release (callgrind: about
110,000 of 555,000 instructions a connection) for the handful of helpers
each script calls. So a script gets only the definitions its body names,
and those they name, in the prelude's order; a Lua local can only name the
locals defined before it, so the order keeps every one of them defined.
"""

from __future__ import annotations

import re

# A top-level definition: "local function name(" or "local a, b = ...".
_DEFINITION = re.compile(r"local\s+(?:function\s+(\w+)|([\w\s,]+?)\s*=)")
_NAME = re.compile(r"[A-Za-z_]\w*")
_COMMENT = re.compile(r"--.*")


def definitions(prelude):
    """
    (names defined, source) of each top-level definition of ``prelude``, in
    order. A definition runs from its ``local`` at the start of a line to the
    next line that starts another one or a comment; nothing else may stand
    at the top level.
    """
    found = []
    current = None  # the lines of the definition being read
    for line in prelude.splitlines():
        if line.startswith("local"):
            match = _DEFINITION.match(line)
            if match is None:
                raise ValueError(f"a prelude line defines nothing it names: {line!r}")
            current = [line]
            names = match.group(1) or match.group(2)
            found.append(([name.strip() for name in names.split(",")], current))
        elif line.startswith("--"):
            current = None
        elif current is not None:
            current.append(line)
        elif line.strip():
            raise ValueError(f"a prelude line outside any definition: {line!r}")
    return [(names, "\n".join(lines).rstrip()) for names, lines in found]


def _named(source):
    return set(_NAME.findall(_COMMENT.sub("", source)))


def withPrelude(prelude, body):
    """``body`` after the definitions of ``prelude`` it needs."""
    needed = _named(body)
    kept = []
    for names, source in reversed(definitions(prelude)):
        if needed.intersection(names):
            kept.append(source)
            needed |= _named(source)
    return "\n".join(reversed(kept)) + "\n" + body
