'use strict';
// Load generator for the server benchmarks: many connections from one Node
// process, so that the Python server under test is the bottleneck.
//
//   node bench/node/load.js --mode MODE --url URL [--conns N] [--duration S] [--warmup S] [--size BYTES] [--server-pid PID]
//
// URL is ws://host:port/ (a WebSocket server, ws client, permessage-deflate
// off) or tcp://host:port (a raw TCP echo server: the same exchange without
// the WebSocket handshake and framing; each message is sent as as many
// bytes as the masked client frame would take).
//
// Modes (the result is one JSON line on stdout):
//   handshake  --conns loops each open a connection and close it, again and again
//              -> {rate} connections opened and closed per second
//   echo       --conns connections each send --size bytes and wait for the echo, in a loop
//              -> {rate, p50_us, p99_us} messages per second (all connections), latency
//   hold       open --conns idle connections, print {opened}, keep them until stdin closes
//
// Every result carries cpu: the fraction of one core this process used
// during the measurement (near 1.0 means the load generator may be the limit),
// and errors: connections that failed. With --server-pid PID (Linux), the
// handshake and echo results also carry server_cpu: the CPU seconds (user +
// system, all threads, from /proc/PID/stat) that process used over the same
// window, and count: the operations counted in it (rate x duration).

const net = require('net');
const { parseArgs } = require('util');
const { performance } = require('perf_hooks');
const fs = require('fs');
const WebSocket = require('ws');

const OPEN_CONCURRENCY = 50; // connections opened at once by openMany (listen backlogs are 1024)

const now = () => performance.now(); // milliseconds

// -- connections: a tiny common interface over ws and raw TCP --------------

// A masked client frame's size: what the raw TCP client sends for a message of `size` bytes.
function clientFrameLength(size) {
  return size + (size < 126 ? 6 : size < 65536 ? 8 : 14);
}

function openWs(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 2 ** 30 });
    ws.once('error', reject);
    ws.once('open', () => {
      ws.removeListener('error', reject);
      ws.on('error', () => {});
      resolve({
        send: (payload) => ws.send(payload, { binary: true }),
        onReply: (callback) => ws.on('message', () => callback()),
        onClose: (callback) => ws.once('close', callback),
        close: () =>
          new Promise((done) => {
            ws.once('close', done);
            ws.close();
          }),
        destroy: () => ws.terminate(),
      });
    });
  });
}

function openTcp(url) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: hostname, port: Number(port), noDelay: true });
    sock.once('error', reject);
    sock.once('connect', () => {
      sock.removeListener('error', reject);
      sock.on('error', () => {});
      let expected = 0;
      let received = 0;
      let callback = () => {};
      sock.on('data', (chunk) => {
        received += chunk.length;
        // The echo of one request may come in several pieces: a reply is complete
        // once as many bytes came back as were sent.
        while (expected > 0 && received >= expected) {
          received -= expected;
          callback();
        }
      });
      resolve({
        send: (payload) => {
          expected = payload.length;
          sock.write(payload);
        },
        onReply: (cb) => {
          callback = cb;
        },
        onClose: (cb) => sock.once('close', cb),
        close: () =>
          new Promise((done) => {
            sock.once('close', done);
            sock.end();
          }),
        destroy: () => sock.destroy(),
      });
    });
  });
}

function opener(url) {
  return url.startsWith('tcp:') ? openTcp : openWs;
}

// Open `count` connections, at most OPEN_CONCURRENCY at a time.
async function openMany(url, count, stats) {
  const open = opener(url);
  const conns = [];
  let next = 0;
  async function worker() {
    while (next < count) {
      next += 1;
      try {
        conns.push(await open(url));
      } catch (err) {
        stats.errors += 1;
        stats.lastError = String(err);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(count, OPEN_CONCURRENCY) }, worker));
  return conns;
}

// -- measurement helpers ----------------------------------------------------------

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

// The measurement window: [start, end] in ms, after the warm-up; cpu is sampled over it.
function window(opts) {
  const start = now() + opts.warmup * 1000;
  return { start, end: start + opts.duration * 1000 };
}

// CPU seconds (user + system, all threads, the exited ones too) of process `pid`, from /proc.
function processCpu(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // After the ")" that ends the command name: fields 3.. of proc(5); utime and stime are 14 and 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ: 100 on Linux
}

// Returns a function giving this process's share of a core over the window
// (and, with opts.serverPid, the server's CPU seconds over it in stats.server_cpu).
function cpuSampler(win, opts, stats) {
  let before = null;
  let serverBefore = null;
  const timer = setTimeout(() => {
    before = process.cpuUsage();
    if (opts.serverPid) serverBefore = processCpu(opts.serverPid);
  }, Math.max(0, win.start - now()));
  const endTimer = opts.serverPid
    ? setTimeout(() => {
        if (serverBefore !== null) stats.server_cpu = processCpu(opts.serverPid) - serverBefore;
      }, Math.max(0, win.end - now()))
    : null;
  return () => {
    clearTimeout(timer);
    if (endTimer !== null) clearTimeout(endTimer);
    if (before === null) return null;
    const used = process.cpuUsage(before);
    return (used.user + used.system) / 1e6 / ((win.end - win.start) / 1000);
  };
}

// -- modes -----------------------------------------------------------------------

async function handshakeMode(opts) {
  const open = opener(opts.url);
  const stats = { errors: 0 };
  const win = window(opts);
  const cpu = cpuSampler(win, opts, stats);
  let count = 0;
  async function loop() {
    while (now() < win.end) {
      const t0 = now();
      try {
        const conn = await open(opts.url);
        await conn.close();
      } catch (err) {
        stats.errors += 1;
        stats.lastError = String(err);
        continue;
      }
      if (t0 >= win.start && now() <= win.end) count += 1;
    }
  }
  await Promise.all(Array.from({ length: opts.conns }, loop));
  return { rate: count / opts.duration, count, cpu: cpu(), ...stats };
}

async function echoMode(opts) {
  const stats = { errors: 0 };
  const conns = await openMany(opts.url, opts.conns, stats);
  if (conns.length < opts.conns) throw new Error(`opened ${conns.length}/${opts.conns}: ${stats.lastError}`);
  const ws = opts.url.startsWith('ws');
  const payload = Buffer.alloc(ws ? opts.size : clientFrameLength(opts.size), 0x61);
  const win = window(opts);
  const cpu = cpuSampler(win, opts, stats);
  const latencies = [];
  let count = 0;
  await Promise.all(
    conns.map(
      (conn) =>
        new Promise((resolve) => {
          let sent = now();
          let finished = false;
          conn.onClose(() => {
            // Closed by the server mid-run: count it rather than wait forever.
            if (!finished) stats.errors += 1;
            finished = true;
            resolve();
          });
          conn.onReply(() => {
            if (finished) return;
            const t = now();
            if (sent >= win.start && t <= win.end) {
              count += 1;
              latencies.push(t - sent);
            }
            if (t >= win.end) {
              finished = true;
              resolve();
              return;
            }
            sent = t;
            conn.send(payload);
          });
          conn.send(payload);
        })
    )
  );
  const used = cpu();
  await Promise.all(conns.map((c) => c.close()));
  latencies.sort((a, b) => a - b);
  const us = (ms) => (ms === null ? null : ms * 1000);
  return {
    rate: count / opts.duration,
    count,
    p50_us: us(percentile(latencies, 50)),
    p99_us: us(percentile(latencies, 99)),
    cpu: used,
    ...stats,
  };
}

async function holdMode(opts) {
  const stats = { errors: 0 };
  const conns = await openMany(opts.url, opts.conns, stats);
  process.stdout.write(JSON.stringify({ opened: conns.length, ...stats }) + '\n');
  await new Promise((resolve) => {
    process.stdin.on('end', resolve);
    process.stdin.on('error', resolve);
    process.stdin.resume();
  });
  for (const conn of conns) conn.destroy();
  return null;
}

const MODES = { handshake: handshakeMode, echo: echoMode, hold: holdMode };

async function main() {
  const { values } = parseArgs({
    options: {
      mode: { type: 'string' },
      url: { type: 'string' },
      conns: { type: 'string', default: '1' },
      duration: { type: 'string', default: '1' },
      warmup: { type: 'string', default: '0.2' },
      size: { type: 'string', default: '32' },
      'server-pid': { type: 'string' },
    },
  });
  const run = MODES[values.mode];
  if (!run || !values.url) {
    console.error(`usage: node load.js --mode ${Object.keys(MODES).join('|')} --url ws://... | tcp://...`);
    process.exit(2);
  }
  const opts = {
    url: values.url,
    conns: Number(values.conns),
    duration: Number(values.duration),
    warmup: Number(values.warmup),
    size: Number(values.size),
    serverPid: values['server-pid'] ? Number(values['server-pid']) : null,
  };
  const result = await run(opts);
  if (result !== null) process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
