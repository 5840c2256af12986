"""
The blocks of docs/aws.md that tests run: each is the fenced block right
after a ``<!-- tested: NAME -->`` line, so a test reads exactly what an
operator copies, and the guide cannot drift from what is tested.
"""

import re
import tomllib
from pathlib import Path

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "aws.md"
_BLOCK = re.compile(
    r"^(?P<indent> *)<!-- tested: (?P<name>[\w-]+) -->\n(?P=indent)```[\w-]*\n"
    r"(?P<body>.*?)^(?P=indent)```$", re.MULTILINE | re.DOTALL)


def blocks():
    """Every tested block of the guide, by name (a block inside a list item dedented)."""
    found = {}
    for match in _BLOCK.finditer(GUIDE.read_text()):
        assert match["name"] not in found, f"two blocks named {match['name']} in {GUIDE}"
        indent = len(match["indent"])
        found[match["name"]] = "".join(
            line[indent:] for line in match["body"].splitlines(keepends=True))
    return found


def block(name):
    """The text of the guide's block ``name``."""
    found = blocks()
    assert name in found, f"{GUIDE} has no block marked <!-- tested: {name} -->"
    return found[name]


def toml(name):
    return tomllib.loads(block(name))
