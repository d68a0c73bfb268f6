'use strict';
// The reference server of the client benchmarks (and the "Node ws" column of
// the server benchmarks): ws, permessage-deflate off, on 127.0.0.1.
//
//   node [--expose-gc] bench/node/echo_server.js     -> prints {"ws": PORT, "pid": PID}
//
// It runs until its standard input closes (the benchmark driver holds it).
// With --expose-gc, SIGUSR2 makes it collect garbage (for memory readings).
//
// Paths:
//   /        ws echoes every message back
//   /sink    counts binary messages; a text message is answered "COUNT BYTES" (and resets the count)
//   /source  a text message "N SIZE" is answered with N binary messages of SIZE bytes
//
// Every client, the raw-TCP one included, talks to these same paths, so the
// server's work is the same for all of them and a ratio between two clients
// measures only the clients. /sink and /source must never be what limits a
// client, so they skip ws's per-message work:
//   - /source writes pre-built frames in large batches straight to the socket
//     (a ws.send() per message costs about as much as a fast Python client
//     spends receiving one); the bytes are exactly what ws.send() would write.
//   - /sink does its own handshake and walks the frame headers without
//     unmasking or copying payloads (ws's receiver tops out near 1.5 GB/s
//     for 1 MiB messages, below what a raw socket can send).

const crypto = require('crypto');
const http = require('http');
const { WebSocketServer } = require('ws');

const HOST = '127.0.0.1';
const BACKLOG = 1024;
const BATCH_BYTES = 256 * 1024;
const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const EMPTY = Buffer.alloc(0);

// -- pre-built server frames -------------------------------------------------

function frameHeader(size) {
  if (size < 126) return Buffer.from([0x82, size]);
  if (size < 65536) {
    const h = Buffer.alloc(4);
    h[0] = 0x82;
    h[1] = 126;
    h.writeUInt16BE(size, 2);
    return h;
  }
  const h = Buffer.alloc(10);
  h[0] = 0x82;
  h[1] = 127;
  h.writeBigUInt64BE(BigInt(size), 2);
  return h;
}

const batches = new Map(); // size -> { batch, perBatch, frameLen }

// One buffer holding as many whole frames of `size` as fit in BATCH_BYTES (at least one).
function framesFor(size) {
  let entry = batches.get(size);
  if (entry === undefined) {
    const frame = Buffer.concat([frameHeader(size), Buffer.alloc(size, 0x61)]);
    const perBatch = Math.max(1, Math.floor(BATCH_BYTES / frame.length));
    const batch = perBatch === 1 ? frame : Buffer.concat(Array(perBatch).fill(frame));
    entry = { batch, perBatch, frameLen: frame.length };
    batches.set(size, entry);
  }
  return entry;
}

function drained(socket) {
  return new Promise((resolve) => {
    const done = () => {
      socket.off('drain', done);
      socket.off('close', done);
      resolve();
    };
    socket.on('drain', done);
    socket.on('close', done);
  });
}

// Write n frames of `size` bytes, honouring backpressure.
async function pump(socket, n, size) {
  const { batch, perBatch, frameLen } = framesFor(size);
  let left = n;
  while (left > 0 && !socket.destroyed) {
    const k = Math.min(left, perBatch);
    left -= k;
    const chunk = k === perBatch ? batch : batch.subarray(0, k * frameLen);
    if (!socket.write(chunk)) await drained(socket);
  }
}

function parseRequest(text) {
  const [n, size] = String(text).trim().split(/\s+/).map(Number);
  if (!Number.isInteger(n) || !Number.isInteger(size) || n < 0 || size < 0) return null;
  return { n, size };
}

// -- / and /source: ws ----------------------------------------------------------

function serveEcho(ws) {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
}

function serveSource(ws, socket) {
  ws.on('message', (data) => {
    const req = parseRequest(data);
    if (req === null) ws.close(1008, 'expected "N SIZE"');
    else pump(socket, req.n, req.size);
  });
}

// -- /sink: handshake and frame walking by hand ---------------------------------

function serverFrame(opcode, payload) {
  return Buffer.concat([Buffer.from([0x80 | opcode, payload.length]), payload]); // payload < 126 bytes
}

// Counts the messages of one /sink connection, reading only frame headers.
class SinkCounter {
  constructor(socket) {
    this.socket = socket;
    this.pending = EMPTY; // the start of a header (or a control frame) cut by a read
    this.skip = 0; // payload bytes of the current data frame still to pass over
    this.frameEnds = false; // the current data frame is its message's last
    this.text = false; // the current message is text (a command), not binary (counted)
    this.count = 0;
    this.bytes = 0;
  }

  feed(chunk) {
    const data = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    this.pending = EMPTY;
    let pos = 0;
    while (pos < data.length) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, data.length - pos);
        this.skip -= n;
        pos += n;
        if (this.skip === 0) this.endFrame();
        continue;
      }
      const used = this.frame(data, pos);
      if (used === 0) {
        this.pending = data.subarray(pos);
        return;
      }
      pos += used;
    }
  }

  // Parse the frame starting at pos: the bytes consumed, or 0 if more are needed.
  frame(data, pos) {
    const avail = data.length - pos;
    if (avail < 2) return 0;
    const fin = (data[pos] & 0x80) !== 0;
    const opcode = data[pos] & 0x0f;
    let length = data[pos + 1] & 0x7f;
    let size = 2;
    if (length === 126) {
      if (avail < 4) return 0;
      length = data.readUInt16BE(pos + 2);
      size = 4;
    } else if (length === 127) {
      if (avail < 10) return 0;
      length = Number(data.readBigUInt64BE(pos + 2));
      size = 10;
    }
    const masked = (data[pos + 1] & 0x80) !== 0;
    if (masked) size += 4;
    if (opcode >= 8) {
      if (avail < size + length) return 0; // control frames are handled whole
      const key = data.subarray(pos + size - (masked ? 4 : 0), pos + size);
      this.control(opcode, key, data.subarray(pos + size, pos + size + length));
      return size + length;
    }
    if (avail < size) return 0;
    if (opcode !== 0) this.text = opcode === 1;
    this.frameEnds = fin;
    this.bytes += this.text ? 0 : length;
    this.skip = length;
    if (length === 0) this.endFrame();
    return size;
  }

  endFrame() {
    if (!this.frameEnds) return;
    if (this.text) {
      this.socket.write(serverFrame(0x1, Buffer.from(`${this.count} ${this.bytes}`)));
      this.count = 0;
      this.bytes = 0;
    } else {
      this.count += 1;
    }
  }

  control(opcode, key, payload) {
    const data = Buffer.from(payload);
    for (let i = 0; i < data.length && key.length === 4; i++) data[i] ^= key[i & 3];
    if (opcode === 0x9) {
      this.socket.write(serverFrame(0xa, data)); // ping -> pong
    } else if (opcode === 0x8) {
      this.socket.end(serverFrame(0x8, data.subarray(0, 2))); // close -> echo the code, then FIN
    }
  }
}

function serveSink(req, socket, head) {
  const key = req.headers['sec-websocket-key'];
  if (!key || req.headers['sec-websocket-version'] !== '13') {
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    return;
  }
  const accept = crypto.createHash('sha1').update(key + GUID).digest('base64');
  socket.setNoDelay(true);
  socket.on('error', () => {});
  socket.write(
    'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      `Sec-WebSocket-Accept: ${accept}\r\n\r\n`
  );
  const counter = new SinkCounter(socket);
  socket.on('data', (chunk) => counter.feed(chunk));
  if (head.length) counter.feed(head);
}

// -- server --------------------------------------------------------------------------

function startWs() {
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 2 ** 30 });
  const server = http.createServer((req, res) => {
    res.writeHead(426, { 'Content-Type': 'text/plain' });
    res.end('WebSocket only\n');
  });
  server.on('upgrade', (req, socket, head) => {
    const path = new URL(req.url, 'http://x').pathname;
    if (path === '/sink') {
      serveSink(req, socket, head);
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on('error', () => {}); // a client that vanishes is routine here
      if (path === '/source') serveSource(ws, socket);
      else serveEcho(ws);
    });
  });
  return listen(server);
}

function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: HOST, port: 0, backlog: BACKLOG }, () => resolve(server.address().port));
  });
}

async function main() {
  const port = await startWs();
  process.stdout.write(JSON.stringify({ ws: port, pid: process.pid }) + '\n');
  // SIGUSR2 collects garbage (with --expose-gc) so that RSS readings don't count dead objects.
  process.on('SIGUSR2', () => global.gc && global.gc());
  // The driver closes our stdin to stop us (and we stop if it dies).
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
