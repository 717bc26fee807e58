// The gateway benchmark's wisp-js client (benchmarks/gateway.py): bulk streams
// with the data pattern of benchmarks/bench_pattern.py, checked without hashing.
//
// Usage: node bench_client.mjs '<plan as JSON>'
// A plan is {"mode": "wisp" | "tcp", "url": "ws://..." (wisp), "version": 1 | 2,
//            "host", "port", "streams": [{"tag", "upload", "download"}],
//            "sequential": bool, "stall": seconds}.
// "wisp" goes through the wisp-js client library; "tcp" is the baseline, the
// same streams over node:net (to the target directly or through a TCP relay).
// A stream sends a 24-byte header (upload, download, tag: big-endian uint64),
// its upload in 64 KiB writes (subarrays of a prebuilt buffer, no copy), and
// reads until the stream closes, comparing every piece it gets with the
// pattern (one memcmp).  Byte i of stream t is BLOCK[(t + i) % PERIOD], BLOCK
// being SHA-256 of the counters 0, 1, ... (4 bytes big-endian) end to end.
//
// Start protocol: prints {"ready": true} once connected, waits for a line on
// stdin, moves the streams, prints {"elapsed", "streams": [{"tag", "status",
// "received", "bad", "seconds", "first"}]} and exits when stdin closes.
import { createHash } from "node:crypto";
import net from "node:net";
import { client } from "@mercuryworkshop/wisp-js/client";

const plan = JSON.parse(process.argv[2]);
const PERIOD = 1 << 20;
const CHUNK = 64 * 1024;
const WINDOW = 4 << 20;
const SMALL = 4096;
const stall = (plan.stall ?? 10) * 1000;

const BIG = Buffer.alloc(PERIOD + WINDOW);
{
  const counter = Buffer.alloc(4);
  for (let i = 0; i < PERIOD / 32; i++) {
    counter.writeUInt32BE(i);
    createHash("sha256").update(counter).digest().copy(BIG, i * 32);
  }
  for (let at = PERIOD; at < BIG.length; at += PERIOD) BIG.copy(BIG, at, 0, PERIOD);
}

function slice(tag, offset, size) {
  const at = (tag + offset) % PERIOD;
  return BIG.subarray(at, at + size);
}

function request(spec) {
  const head = Buffer.alloc(24);
  head.writeBigUInt64BE(BigInt(spec.upload), 0);
  head.writeBigUInt64BE(BigInt(spec.download), 8);
  head.writeBigUInt64BE(BigInt(spec.tag), 16);
  return spec.upload <= SMALL ? Buffer.concat([head, slice(spec.tag % PERIOD, 0, spec.upload)]) : head;
}

// The writes of a stream: the header (with a small upload), then 64 KiB pieces.
function writes(spec) {
  const tag = spec.tag % PERIOD;
  const out = [request(spec)];
  if (spec.upload > SMALL) {
    for (let offset = 0; offset < spec.upload; offset += CHUNK) {
      out.push(slice(tag, offset, Math.min(CHUNK, spec.upload - offset)));
    }
  }
  return out;
}

class Tracker {
  constructor(spec) {
    this.tag = spec.tag % PERIOD;
    this.spec = spec;
    this.offset = 0;
    this.bad = null;
    this.first = null;
    this.started = performance.now();
    this.progress = this.started;
  }

  check(data) {
    const now = performance.now();
    if (this.first === null) this.first = (now - this.started) / 1000;
    this.progress = now;
    for (let at = 0; at < data.length; at += WINDOW) {
      const piece = data.subarray(at, Math.min(data.length, at + WINDOW));
      const expected = slice(this.tag, this.offset, piece.length);
      if (this.bad === null && Buffer.compare(piece, expected) !== 0) {
        let i = 0;
        while (piece[i] === expected[i]) i++;
        this.bad = this.offset + i;
      }
      this.offset += piece.length;
    }
  }

  result(status, reason = null) {
    if (status === "ok" && this.offset !== this.spec.download) status = "short";
    return {
      tag: this.spec.tag,
      status,
      reason,
      received: this.offset,
      bad: this.bad,
      seconds: (performance.now() - this.started) / 1000,
      first: this.first,
    };
  }
}

// Calls abort() once nothing moved for `stall` ms; returns the timer to clear.
function watchdog(tracker, abort) {
  return setInterval(() => {
    if (performance.now() - tracker.progress > stall) abort();
  }, Math.min(1000, stall / 4));
}

function runWispStream(conn, spec, pieces) {
  return new Promise((resolve) => {
    const tracker = new Tracker(spec);
    const stream = conn.create_stream(plan.host, plan.port, "tcp");
    let done = false;
    const end = (status, reason = null) => {
      if (done) return;
      done = true;
      clearInterval(timer);
      resolve(tracker.result(status, reason));
    };
    const timer = watchdog(tracker, () => {
      stream.close(0x02);
      end("stalled");
    });
    stream.onmessage = (data) => tracker.check(data);
    // Any reason: the byte count and the target's report tell a cut stream.
    stream.onclose = (reason) => end("ok", reason);
    for (const piece of pieces) stream.send(piece);
  });
}

function runTcpStream(spec, pieces) {
  return new Promise((resolve) => {
    const tracker = new Tracker(spec);
    let done = false;
    const end = (status) => {
      if (done) return;
      done = true;
      clearInterval(timer);
      resolve(tracker.result(status));
    };
    const socket = net.connect({ host: plan.host, port: plan.port, noDelay: true }, () => {
      for (const piece of pieces) socket.write(piece);
    });
    const timer = watchdog(tracker, () => {
      socket.destroy();
      end("stalled");
    });
    socket.on("data", (data) => tracker.check(data));
    socket.on("error", (error) => end(`error: ${error}`));
    socket.on("close", () => end("ok"));
  });
}

async function runAll(run) {
  const pieces = plan.streams.map(writes);
  const started = performance.now();
  let streams;
  if (plan.sequential) {
    streams = [];
    for (const [i, spec] of plan.streams.entries()) streams.push(await run(spec, pieces[i]));
  } else {
    streams = await Promise.all(plan.streams.map((spec, i) => run(spec, pieces[i])));
  }
  return { elapsed: (performance.now() - started) / 1000, streams };
}

// Lines from the orchestrator: the go, then the end of stdin.
const input = { text: "", ended: false, waiters: [] };
process.stdin.setEncoding("utf8");
process.stdin.on("data", (text) => {
  input.text += text;
  input.waiters.splice(0).forEach((wake) => wake());
});
process.stdin.on("end", () => {
  input.ended = true;
  input.waiters.splice(0).forEach((wake) => wake());
});

async function until(condition) {
  while (!condition()) await new Promise((wake) => input.waiters.push(wake));
}

async function go() {
  process.stdout.write(JSON.stringify({ ready: true }) + "\n");
  await until(() => input.text.includes("\n") || input.ended);
}

let result;
if (plan.mode === "wisp") {
  const conn = new client.ClientConnection(plan.url, { wisp_version: plan.version ?? 2 });
  await new Promise((resolve, reject) => {
    conn.onopen = resolve;
    conn.onclose = () => reject(new Error("websocket closed before open"));
    conn.onerror = () => reject(new Error("websocket error"));
  });
  await go();
  result = await runAll((spec, pieces) => runWispStream(conn, spec, pieces));
  result.version = conn.wisp_version;
  process.stdout.write(JSON.stringify(result) + "\n");
  await until(() => input.ended);
  conn.close();
} else {
  await go();
  result = await runAll(runTcpStream);
  process.stdout.write(JSON.stringify(result) + "\n");
  await until(() => input.ended);
}
process.exit(0);
