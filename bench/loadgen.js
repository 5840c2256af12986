// The benchmark's load generator (node `ws`), driven by bench/run.py.
//
//   node bench/loadgen.js '<JSON spec>'
//
// Spec fields (all modes): urls (list; connection i uses urls[i % n]),
// connections, warmup and duration (seconds), limit (seconds: hard bound on
// the whole run), keys ("none" | "fixed" | "fresh") and prefix (session keys
// sent as ?session=...); ca (optional: a PEM file that wss:// servers' certificates
// must chain to).
//
// Modes:
//   pingpong  every connection keeps `inflight` messages of `size` bytes
//             (`binary` or text) outstanding; counts echoes and round trips.
//   connect   `connections` loops, each: handshake, one 32 B echo, close, again.
//             keys "fixed": loop i always uses key PREFIX-i (a reconnect to
//             its worker); "fresh": a new key every time; "none": no key.
//   idle      opens `connections` (at most `concurrency` handshakes at once),
//             one echo each, prints "EVENT held", holds them until a line
//             "release" arrives on stdin, then closes them (and reports the
//             pings they received while held).
//   http      `connections` loops, each on its own kept-alive connection (node's
//             http.Agent): GET /session/bench with X-WSLB-Session PREFIX-i, the
//             answer read whole, again. Before the warm-up, loop i opens and
//             closes a WebSocket with ?session=PREFIX-i (wslb's HTTP reaches
//             only sessions the WebSocket started). Counts answers a second.
//   crowd     `users` users arrive evenly spread over `spread` seconds (0: all
//             at once), user i with key PREFIX-i; each waits (however long:
//             queued) for its handshake and then holds its connection.
//             Prints "EVENT settled {ms, opened, refused}" once every user is in
//             or was refused ("EVENT refused {status}" for each refusal), keeps every
//             user's handshake time (ms from its arrival), and on a line
//             "release" on stdin closes them all. A line "mark" notes the time:
//             the result tells the users in before it from those after.
//
// Output, one line each: "EVENT measure-start {}", "EVENT measure-end {}"
// (bracketing the measured window, so the runner can read CPU counters), and
// finally "RESULT {json}".
'use strict';

const fs = require('fs');
const http = require('http');
const { performance } = require('perf_hooks');
const WebSocket = require('ws');

const spec = JSON.parse(process.argv[2]);
const CLIENT_OPTIONS = { perMessageDeflate: false, handshakeTimeout: 10000, maxPayload: 0 };
if (spec.ca) CLIENT_OPTIONS.ca = fs.readFileSync(spec.ca);
const MAX_SAMPLES = 2000000;
const CLOSE_WAIT_MS = 5000;

function say(kind, name, data, then) {
  process.stdout.write(`${kind} ${name ? name + ' ' : ''}${JSON.stringify(data || {})}\n`, then);
}

function urlFor(i, key) {
  const base = spec.urls[i % spec.urls.length];
  return key === null ? base : `${base}${base.includes('?') ? '&' : '?'}session=${key}`;
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function latencyMicros(samples) {
  const sorted = Float64Array.from(samples).sort();
  const us = (ms) => (ms === null ? null : Math.round(ms * 1000));
  return {
    p50_us: us(percentile(sorted, 50)),
    p99_us: us(percentile(sorted, 99)),
    max_us: us(sorted.length ? sorted[sorted.length - 1] : null),
  };
}

let finished = false;
function finish(result) {
  if (finished) return;
  finished = true;
  // Exit once the line is out: a pipe takes a long one in several writes.
  say('RESULT', '', result, () => process.exit(0));
}

// Whatever happens, stop within the limit.
setTimeout(() => {
  say('RESULT', '', { error: `hard time limit of ${spec.limit} s reached` });
  process.exit(3);
}, (spec.limit || 120) * 1000).unref();

// Schedule the measured window from now; returns its bounds (ms, performance.now()).
function measuredWindow() {
  const start = performance.now() + spec.warmup * 1000;
  const end = start + spec.duration * 1000;
  setTimeout(() => say('EVENT', 'measure-start'), start - performance.now());
  setTimeout(() => say('EVENT', 'measure-end'), end - performance.now());
  return { start, end };
}

// Close every socket and wait (bounded) for them to go.
function closeAll(sockets, then) {
  let open = 0;
  const done = () => { if (--open === 0) then(); };
  for (const ws of sockets) {
    if (ws.readyState === WebSocket.CLOSED) continue;
    open++;
    ws.once('close', done);
    if (ws.readyState === WebSocket.OPEN) ws.close();
    else ws.terminate();
  }
  if (open === 0) then();
  else setTimeout(then, CLOSE_WAIT_MS).unref();
}

function payloadOf(size, binary) {
  if (!binary) return Buffer.alloc(size, 'x');
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (i * 31 + 7) & 0xff;
  return b;
}

// Open `count` sockets, at most `concurrency` handshakes at once; calls
// onOpen(ws, i) for each that opens and then(sockets, failures) when all tried.
function openMany(count, concurrency, keyOf, onOpen, then) {
  const sockets = [];
  let next = 0;
  let settled = 0;
  let failures = 0;
  let lastError = null;
  const start = () => {
    if (next >= count) return;
    const i = next++;
    const ws = new WebSocket(urlFor(i, keyOf(i)), CLIENT_OPTIONS);
    let opened = false;
    ws.on('error', (e) => { lastError = e.message; });
    ws.once('open', () => { opened = true; sockets.push(ws); onOpen(ws, i, settle); });
    ws.once('close', () => { if (!opened) { failures++; settle(); } });
  };
  function settle() {
    settled++;
    if (settled === count) then(sockets, failures, lastError);
    else start();
  }
  for (let k = 0; k < Math.min(concurrency, count); k++) start();
}

function pingpong() {
  const payload = payloadOf(spec.size, spec.binary);
  const inflight = spec.inflight || 1;
  const samples = [];
  let count = 0;
  let bytes = 0;
  let errors = 0;
  openMany(spec.connections, 100, () => null, (ws, i, settle) => settle(), (sockets, failures, lastError) => {
    if (failures) {
      closeAll(sockets, () => finish({ error: `${failures} connections failed: ${lastError}` }));
      return;
    }
    const win = measuredWindow();
    let outstanding = 0;
    let ending = false;
    const end = () => {
      if (ending) return;
      ending = true;
      closeAll(sockets, () => finish({
        mode: 'pingpong', messages: count, seconds: spec.duration,
        msg_per_s: count / spec.duration, mb_per_s: bytes / spec.duration / 1e6,
        errors, ...latencyMicros(samples),
      }));
    };
    for (const ws of sockets) {
      const sentAt = [];
      const send = () => { sentAt.push(performance.now()); outstanding++; ws.send(payload, { binary: !!spec.binary }); };
      ws.on('message', (data) => {
        const now = performance.now();
        const t0 = sentAt.shift();
        outstanding--;
        if (now >= win.start && now < win.end) {
          count++;
          bytes += data.length;
          if (samples.length < MAX_SAMPLES) samples.push(now - t0);
        }
        if (now < win.end) send();
        else if (outstanding === 0) end();
      });
      ws.on('close', () => { if (!ending) { errors++; } });
      for (let k = 0; k < inflight; k++) send();
    }
    // Echoes still outstanding after the window (a stalled proxy) do not hold us.
    setTimeout(end, win.end - performance.now() + CLOSE_WAIT_MS).unref();
  });
}

function connect() {
  const payload = payloadOf(32, false);
  const samples = [];
  let count = 0;
  let failures = 0;
  let lastError = null;
  let seq = 0;
  let running = spec.connections;
  const win = measuredWindow();
  const keyOf = (i) => (spec.keys === 'fixed' ? `${spec.prefix}-${i}`
    : spec.keys === 'fresh' ? `${spec.prefix}-${i}-${seq++}` : null);
  const loop = (i) => {
    if (performance.now() >= win.end) {
      if (--running === 0) {
        finish({
          mode: 'connect', connections: count, seconds: spec.duration,
          conn_per_s: count / spec.duration, failures, last_error: lastError,
          ...latencyMicros(samples),
        });
      }
      return;
    }
    const t0 = performance.now();
    const ws = new WebSocket(urlFor(i, keyOf(i)), CLIENT_OPTIONS);
    let echoed = false;
    ws.on('error', (e) => { lastError = e.message; });
    ws.once('open', () => ws.send(payload));
    ws.once('message', () => { echoed = true; ws.close(); });
    ws.once('close', () => {
      const now = performance.now();
      if (!echoed) {
        if (now >= win.start && now < win.end) failures++;
        setTimeout(() => loop(i), 20); // no hot loop against a refusing target
        return;
      }
      if (now >= win.start && now < win.end) {
        count++;
        if (samples.length < MAX_SAMPLES) samples.push(now - t0);
      }
      setImmediate(() => loop(i));
    });
  };
  for (let i = 0; i < spec.connections; i++) loop(i);
}

function idle() {
  const payload = payloadOf(32, false);
  const started = performance.now();
  let dropped = 0;
  let pings = 0;
  let holding = false;
  openMany(spec.connections, spec.concurrency || 100, () => null, (ws, i, settle) => {
    let echoed = false;
    ws.on('ping', () => { if (holding) pings++; }); // ws answers each with a pong itself
    ws.once('message', () => { echoed = true; settle(); });
    ws.once('close', () => { if (!echoed) settle(); else if (holding) dropped++; });
    ws.send(payload);
  }, (sockets, failures, lastError) => {
    const openSeconds = (performance.now() - started) / 1000;
    holding = true;
    say('EVENT', 'held', { held: sockets.length, failures, last_error: lastError });
    let input = '';
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (chunk) => {
      input += chunk;
      if (!input.includes('release')) return;
      holding = false;
      closeAll(sockets, () => finish({
        mode: 'idle', held: sockets.length, failures, dropped, last_error: lastError,
        open_seconds: openSeconds, pings,
      }));
    });
  });
}

function crowd() {
  const started = performance.now();
  const sockets = [];
  const handshakes = []; // [user, ms its handshake took, ms since start when it opened]
  const refused = {}; // HTTP status (or "error") -> users
  let markedAt = null;
  let settled = 0;
  const settle = () => {
    if (++settled === spec.users) {
      say('EVENT', 'settled', { ms: performance.now() - started, opened: handshakes.length, refused });
    }
  };
  // A queued user waits as long as the queue holds it (the spec's limit).
  const options = { ...CLIENT_OPTIONS, handshakeTimeout: spec.limit * 1000 };
  const arrive = (i) => {
    const t0 = performance.now();
    const ws = new WebSocket(urlFor(i, `${spec.prefix}-${i}`), options);
    let done = false;
    ws.on('error', () => {});
    ws.once('unexpected-response', (request, response) => {
      done = true;
      refused[response.statusCode] = (refused[response.statusCode] || 0) + 1;
      say('EVENT', 'refused', { status: response.statusCode });
      response.resume();
      ws.terminate();
      settle();
    });
    ws.once('open', () => {
      done = true;
      const now = performance.now();
      handshakes.push([i, now - t0, now - started]);
      sockets.push(ws);
      settle();
    });
    ws.once('close', () => {
      if (!done) { done = true; refused.error = (refused.error || 0) + 1; settle(); }
    });
  };
  for (let i = 0; i < spec.users; i++) {
    setTimeout(() => arrive(i), (spec.spread * 1000 * i) / spec.users);
  }
  let input = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => {
    input += chunk;
    if (markedAt === null && input.includes('mark')) markedAt = performance.now() - started;
    if (!input.includes('release')) return;
    closeAll(sockets, () => finish({
      mode: 'crowd', users: spec.users, opened: handshakes.length, refused,
      marked_at_ms: markedAt, handshakes,
    }));
  });
}

function httpRequests() {
  const samples = [];
  let count = 0;
  let failures = 0;
  let lastError = null;
  const keyOf = (i) => `${spec.prefix}-${i}`;
  const agent = new http.Agent({ keepAlive: true, maxSockets: spec.connections });
  let socketsOpened = 0;
  openMany(spec.connections, 100, keyOf, (ws, i, settle) => settle(), (sockets, failed, failure) => {
    closeAll(sockets, () => {
      if (failed) { finish({ error: `${failed} sessions failed to open: ${failure}` }); return; }
      const win = measuredWindow();
      let running = spec.connections;
      const loop = (i) => {
        if (performance.now() >= win.end) {
          if (--running === 0) {
            agent.destroy();
            finish({
              mode: 'http', requests: count, seconds: spec.duration,
              req_per_s: count / spec.duration, sockets_opened: socketsOpened,
              failures, last_error: lastError, ...latencyMicros(samples),
            });
          }
          return;
        }
        const t0 = performance.now();
        const url = new URL(spec.urls[i % spec.urls.length].replace(/^ws/, 'http'));
        const request = http.get({
          host: url.hostname, port: url.port, path: '/session/bench', agent,
          headers: { 'X-WSLB-Session': keyOf(i) },
        }, (response) => {
          response.resume();
          response.on('end', () => {
            const now = performance.now();
            if (now >= win.start && now < win.end) {
              if (response.statusCode === 200) {
                count++;
                if (samples.length < MAX_SAMPLES) samples.push(now - t0);
              } else {
                failures++;
                lastError = `status ${response.statusCode}`;
              }
            }
            setImmediate(() => loop(i));
          });
        });
        request.on('socket', (socket) => {
          if (!socket.benchCounted) { socket.benchCounted = true; socketsOpened++; }
        });
        request.on('error', (e) => {
          lastError = e.message;
          if (performance.now() < win.end) failures++;
          setTimeout(() => loop(i), 20);
        });
      };
      for (let i = 0; i < spec.connections; i++) loop(i);
    });
  });
}

({ pingpong, connect, idle, crowd, http: httpRequests })[spec.mode]();
