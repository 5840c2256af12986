"""
Autobahn formats the arguments of its debug log calls eagerly: a pformat of
its settings on every connection, click-coloured qualified names on every
read and write, whether or not anything logs at debug level. On the relay
that was about a third of the CPU per message (bench/profile-50conn.txt).
wslb never logs autobahn at debug level, so those formatters are replaced
with a cheap one; the debug lines, if someone enables them, lose those fields.
"""

import autobahn.twisted.websocket
import autobahn.websocket.protocol


def _unformatted(*args, **kwargs):
    return ""


def skipDebugFormatting():
    for module in (autobahn.twisted.websocket, autobahn.websocket.protocol):
        module.hltype = _unformatted
        module.hlval = _unformatted
    autobahn.websocket.protocol.pformat = _unformatted
