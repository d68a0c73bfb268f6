'use strict';
// Fan-out server for bench/broadcast.py: a ws server whose every connection
// is a broadcast target.
//
//   node bench/node/broadcast_server.js
//
// Prints {"port": PORT, "pid": PID} when it listens, then answers commands
// on stdin, one JSON line each:
//   count       -> {conns}: connections open now (wss.clients)
//   fill SIZE   -> {filled}: bytes sent to the newest client (the stalled
//                  one) alone, in SIZE-byte messages, until ws holds some
//                  for it: its kernel buffers are full
//   run M SIZE  -> nothing yet: broadcasts M binary messages of SIZE bytes
//                  to every client, `for (const c of wss.clients) c.send(msg)`
//   end         -> {t0, t1, held}: once the run is over; t0/t1 are
//                  CLOCK_MONOTONIC nanoseconds (the clock Python's
//                  time.monotonic_ns() reads) at the first and after the
//                  last broadcast, held the bytes ws still buffers
//                  (bufferedAmount, summed over the clients)
// Exits when stdin closes. Compression (permessage-deflate) is off.

const readline = require('readline');
const { WebSocketServer } = require('ws');

const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, backlog: 1024, perMessageDeflate: false });
wss.on('connection', (ws) => ws.on('error', () => {})); // a stalled client's reset is routine here

const now = () => process.hrtime.bigint(); // uv_hrtime: CLOCK_MONOTONIC on Linux

async function broadcast(count, size) {
  const message = Buffer.alloc(size, 120);
  const t0 = now();
  for (let i = 0; i < count; i++) {
    for (const client of wss.clients) client.send(message, { binary: true });
    // Back to the event loop after every message, as a server broadcasting
    // events as they come does: a synchronous loop of M messages would keep
    // libuv from writing what the kernel could not take at once until it is
    // over, and hold every message for every slow client at the same time.
    await new Promise(setImmediate);
  }
  const t1 = now();
  let held = 0;
  for (const client of wss.clients) held += client.bufferedAmount;
  return { t0: Number(t0), t1: Number(t1), held };
}

// Send the newest client (the stalled one) messages until ws holds some for
// it: then the kernel's buffers for it are full. ws's bufferedAmount counts
// what was written since the last turn of the event loop, so it yields every
// 64 KB to see what is really held.
const FILL_CAP = 64e6;
async function fill(size) {
  const message = Buffer.alloc(size, 120);
  const client = [...wss.clients].pop();
  let sent = 0;
  while (sent < FILL_CAP && client.bufferedAmount === 0) {
    for (let batch = 0; batch < 65536 && sent < FILL_CAP; batch += size, sent += size) client.send(message, { binary: true });
    await new Promise(setImmediate);
  }
  return { filled: sent };
}

const reply = (object) => process.stdout.write(JSON.stringify(object) + '\n');

wss.on('listening', () => {
  reply({ port: wss.address().port, pid: process.pid });
  let running = null;
  const lines = readline.createInterface({ input: process.stdin });
  lines.on('line', async (line) => {
    const [command, ...args] = line.trim().split(/\s+/);
    if (command === 'count') reply({ conns: wss.clients.size });
    else if (command === 'fill') reply(await fill(Number(args[0])));
    else if (command === 'run') running = broadcast(Number(args[0]), Number(args[1]));
    else if (command === 'end') {
      const result = running ? await running : { error: 'no run' };
      running = null;
      reply(result);
    } else reply({ error: `unknown command ${line}` });
  });
  lines.on('close', () => process.exit(0));
});
