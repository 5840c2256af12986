// A fast echo worker for the benchmark: node `ws`, so the worker is never the
// bottleneck when measuring a proxy in front of it.
//
//   node bench/echo.js PORT
//
// GET /health answers 200 (wslb's health check); GET /session/<anything>
// answers a small JSON naming the session wslb said (X-WSLB-Session), on
// kept-alive connections (the HTTP row); a WebSocket on any path echoes every
// message, text or binary, unchanged. Prints "listening" once
// ready. Listens on 127.0.0.1 only.
'use strict';

const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node echo.js PORT');
  process.exit(2);
}

const server = http.createServer((req, res) => {
  if (req.url.startsWith('/session/')) {
    const body = JSON.stringify({ session: req.headers['x-wslb-session'] || null });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
    return;
  }
  const ok = req.url === '/health';
  res.writeHead(ok ? 200 : 404, { 'content-type': 'application/json' });
  res.end(ok ? '{"ok": true}' : '{"ok": false}');
});
server.keepAliveTimeout = 60000; // longer than any proxy keeps an idle connection

const wss = new WebSocketServer({
  server,
  perMessageDeflate: false,
  maxPayload: 64 * 1024 * 1024,
  // Accept the first offered subprotocol, as wslb's own echo worker does.
  handleProtocols: (protocols) => protocols.values().next().value || false,
});

wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});

server.listen(port, '127.0.0.1', () => console.log('listening'));
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
