// Many workers in one process, for bench/scale.py: every port given is one
// worker (a `ws` server answering GET /health and echoing messages), and each
// keeps a worker-side count of its open sessions and the most it ever had,
// so the bench can tell whether any worker got more users than its capacity.
//
//   node bench/crowdworker.js '{"firstPort": 30000, "count": 2000, "controlPort": 29999}'
//
// GET http://127.0.0.1:<controlPort>/stats answers
//   {"open": total open sessions, "maxPerPort": {port: most at once, ...} (ports that had any)}
// GET /end?n=N ends N open sessions as a worker does when its user is done:
// it closes the connection with code 4000 (wslb's end_close_code), and the
// session no longer counts from that moment. It prints "EVENT listening {}"
// once every port listens.
'use strict';

const http = require('http');
const WebSocket = require('ws');

const spec = JSON.parse(process.argv[2]);
const open = new Map(); // port -> Set of the sockets of its open sessions
const most = new Map(); // port -> most sessions open at once

function worker(port) {
  const server = http.createServer((request, response) => {
    response.writeHead(request.url === '/health' ? 200 : 404, { 'Content-Type': 'application/json' });
    response.end('{}');
  });
  const wss = new WebSocket.Server({ server, perMessageDeflate: false });
  wss.on('connection', (socket) => {
    if (!open.has(port)) open.set(port, new Set());
    const here = open.get(port);
    here.add(socket);
    most.set(port, Math.max(most.get(port) || 0, here.size));
    socket.on('message', (data, binary) => socket.send(data, { binary }));
    socket.on('close', () => here.delete(socket));
    socket.on('error', () => {});
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
}

function stats() {
  let total = 0;
  for (const sockets of open.values()) total += sockets.size;
  return { open: total, maxPerPort: Object.fromEntries(most) };
}

function end(n) {
  let ended = 0;
  for (const sockets of open.values()) {
    for (const socket of sockets) {
      if (ended === n) return ended;
      sockets.delete(socket);
      socket.close(4000, 'done');
      ended++;
    }
  }
  return ended;
}

async function main() {
  const ports = Array.from({ length: spec.count }, (_, i) => spec.firstPort + i);
  for (let i = 0; i < ports.length; i += 200) {
    await Promise.all(ports.slice(i, i + 200).map(worker));
  }
  const control = http.createServer((request, response) => {
    const url = new URL(request.url, 'http://control');
    const answer = url.pathname === '/end' ? { ended: end(Number(url.searchParams.get('n'))) }
      : stats();
    response.writeHead(200, { 'Content-Type': 'application/json' });
    response.end(JSON.stringify(answer));
  });
  control.listen(spec.controlPort, '127.0.0.1', () => {
    process.stdout.write('EVENT listening {}\n');
  });
}

main().catch((error) => {
  process.stderr.write(`crowdworker: ${error.stack || error}\n`);
  process.exit(1);
});
