"""
The data path. L{wslb.proxy.service.makeProxy} builds it; a user's
connection meets these modules in this order:

    service.py           UserFactory: a UserHandshake per accepted connection, given the
                         listener's Context (what handshakes and relays may reach)
    user_handshake.py    reads the user's request (RFC 6455 §4.2; head.py: every request
                         head, read strictly) and holds it ...
    opening.py           ... while its session opens:
      gate.py              limits (connections, per address) and allowed origins
      identity.py          the session key and cost (signing.py checks signed keys)
      router.py            the session's worker from the registry, or a place in the queue
                           (capacity.py: the largest cost any worker could take)
      worker_handshake.py  wslb's own handshake with that worker
    user_handshake.py    answers 101 with the worker's subprotocol, and hands both
                         connections (transports.takeOver) to ...
    splice.py            ... the byte relay (IRelay, interfaces.py): frames parsed by their
                         headers (frames.py), bytes forwarded (transports.writeNow)
    sessions.py          the live relays by key; reconnect graces; ended sessions closed
                         (held.py: the registry's counts this instance holds, released
                         safely however long the registry takes to answer; grouped.py:
                         both by session key, a lone connection kept without a set)
    keepalive.py         auto_ping, and ...
    idle.py              ... idle_timeout: each relay visited once per period, the
                         relays spread over it (wheel.py), so no turn visits them all
    service.py           Drain: on shutdown, users closed with 1001
    allocation.py        sessions bound before their users connect (the admin API's
                         POST /api/v1/sessions), queued like a handshake

A request that is no WebSocket upgrade, for a path a part serves, is handed
over instead:

    http_listener.py     ListenerWeb: the connection becomes Twisted's HTTP server's
                         (with the bytes read), whose resource tree is the parts mounted
                         on the listener; kept-alive requests follow (http_request.py:
                         each, its body streamed to a part that streams it)
    http_session.py      SessionProxy, the part [http] paths are mounted on: the key,
                         the session's worker (never assigned), the worker's headers
    http_exchange.py     one request through Twisted's Agent (a kept-alive pool per
                         worker) and its answer back, both bodies streamed
    queue_status.py      one of those parts: a user's place in the queue, as JSON and as
                         Server-Sent Events, and the browser client (static/wslb-client.js)
    queue_watch.py       the places of the keys this instance's streams follow, read
                         when tickets leave the queue; the estimate of the wait

errors.py holds HandshakeRefused (the HTTP answer a refused user gets);
transports.py the few uses of Twisted's transport internals (direct sends,
TCP_NODELAY, taking a connection over), each pinned by a test.
"""
