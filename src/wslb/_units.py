"""Durations and sizes as people write them in config files ("30s", "16MiB").

Both parsers raise ValueError on anything else, leaving the wording of the
complaint to the caller, which knows the key.
"""

import math
import re

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(_NUMBER + r"\s*(ms|s|m|h|d)?")
# unit -> (multiplier, divisor), so that "100ms" is exactly 0.1
_SECONDS = {None: (1, 1), "ms": (1, 1000), "s": (1, 1), "m": (60, 1), "h": (3600, 1),
            "d": (86400, 1)}

_SIZE = re.compile(_NUMBER + r"\s*([a-z]*)", re.IGNORECASE)
_BYTES = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def _is_number(value):
    # bool is an int subclass, but `true` is never meant as a quantity.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_duration(value) -> float:
    """Seconds from a number or a string such as "500ms", "30s", "5m", "1h", "30d" or "0"."""
    if _is_number(value):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        multiplier, divisor = _SECONDS[match[2]]
        seconds = float(match[1]) * multiplier / divisor
    else:
        raise ValueError(f"not a duration: {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {value!r}")
    return seconds


def parse_size(value) -> int:
    """Whole bytes from a number or a string such as "64KiB", "16MiB", "100kB", "1MB"."""
    if _is_number(value):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        unit = match[2].lower()
        if unit not in _BYTES:
            raise ValueError(f"unknown size unit: {match[2]!r}")
        size = float(match[1]) * _BYTES[unit]
    else:
        raise ValueError(f"not a size: {value!r}")
    if not math.isfinite(size) or size < 0 or size != int(size):
        raise ValueError(f"not a whole number of bytes: {value!r}")
    return int(size)
