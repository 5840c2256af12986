"""
The byte relay's frame parser on its own: however a stream of frames is cut
into reads, the same bytes come out, the counts add up, and what breaks a
rule is refused at the same frame.
"""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport

from wslb.metrics import TO_WORKER, Traffic
from wslb.proxy.frames import CLOSE_INVALID_PAYLOAD
from wslb.proxy.splice import Direction


class RecordingSplice:
    """What a direction tells its splice, kept for the test to read."""

    def __init__(self, maxMessageSize):
        self.maxMessageSize = maxMessageSize
        self.traffic = Traffic()
        self.activity = 0
        self.failures = []
        self.cut = False
        self.closes = []

    def fail(self, direction, code, reason, cut):
        self.failures.append(code)
        self.cut = cut

    def closeReceived(self, direction):
        self.closes.append(direction.closeCode)


def maskedFrame(opcode, payload, fin, key):
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@st.composite
def messages(draw):
    """A user's message as frames: fragments, maybe with pings between them."""
    key = draw(st.binary(min_size=4, max_size=4))
    if draw(st.booleans()):
        opcode, payload = 1, draw(st.text(max_size=300)).encode("utf-8")
    else:
        opcode, payload = 2, draw(st.binary(max_size=70000))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)])]
    frames = []
    for i, piece in enumerate(pieces):
        frames.append(maskedFrame(opcode if i == 0 else 0, piece, i == len(pieces) - 1, key))
        if draw(st.integers(0, 4)) == 0:
            frames.append(maskedFrame(9, draw(st.binary(max_size=125)), True, key))
    return b"".join(frames), len(payload)


def relay(stream, cuts, maxMessageSize=1 << 20):
    """Feed ``stream`` to a user-side direction in reads cut at ``cuts``."""
    splice = RecordingSplice(maxMessageSize)
    destination = StringTransport()
    direction = Direction(splice, StringTransport(), destination, fromUser=True)
    bounds = sorted(set(cuts) | {0, len(stream)})
    for a, b in zip(bounds, bounds[1:]):
        direction.dataReceived(stream[a:b])
    return splice, destination.value()


@settings(max_examples=200, deadline=None)
@given(st.lists(messages(), min_size=1, max_size=6), st.data())
def test_any_cut_passes_the_same_bytes(sent, data):
    stream = b"".join(frames for frames, _ in sent)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    splice, passed = relay(stream, cuts)
    assert splice.failures == []
    assert passed == stream
    assert splice.traffic.messages[TO_WORKER] == len(sent)
    assert splice.traffic.bytes[TO_WORKER] == splice.activity == sum(n for _, n in sent)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_invalid_utf8_is_refused_at_its_frame_however_cut(data):
    key = b"\x01\x02\x03\x04"
    good = maskedFrame(1, "ça va".encode(), True, key)
    # A character split between fragments, then a byte that cannot follow it.
    bad = maskedFrame(1, b"ok \xe2\x82", False, key) + maskedFrame(0, b"\x28", True, key)
    stream = good + bad
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    splice, passed = relay(stream, cuts)
    assert splice.failures == [CLOSE_INVALID_PAYLOAD]
    assert stream.startswith(passed) and len(good) <= len(passed) < len(stream)
    # The bad frame passed on only in part if its header came in an earlier
    # read than the bad byte: then that connection is dropped, not closed.
    assert splice.cut == (len(passed) > len(stream) - 7)


@given(st.integers(0, 200))
def test_a_message_too_big_is_refused_before_its_frame_passes(extra):
    key = b"\x00\x00\x00\x00"
    first = maskedFrame(2, b"a" * 1000, False, key)
    stream = first + maskedFrame(0, b"b" * (25 + extra), True, key)
    splice, passed = relay(stream, [len(first) + 1], maxMessageSize=1024)
    assert splice.failures == [1009]
    assert passed == first
