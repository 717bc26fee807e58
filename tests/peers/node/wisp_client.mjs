// Drives real client libraries against a gateway and prints what arrived as JSON.
//
// Usage: node wisp_client.mjs '<plan as JSON>'
// A plan is {"mode": "wisp" | "wsproxy", "url": ..., "version": 1 | 2,
//            "streams": [{"type": "tcp" | "udp", "host", "port", "upload", "download",
//                          "datagrams"}],
//            "sequential": true to run the streams one after another (optional)}.
// A TCP stream sends a 16-byte header (upload and download sizes, big-endian
// uint64), then `upload` bytes, and reads until the stream closes; the test's
// target server answers with `download` bytes.  Each result carries the
// SHA-256 of the bytes sent and received and the close reason.
import { createHash } from "node:crypto";
import { randomBytes } from "node:crypto";
import net from "node:net";
import WebSocket from "ws";
import { client } from "@mercuryworkshop/wisp-js/client";

const plan = JSON.parse(process.argv[2]);
const CHUNK = 64 * 1024;

function header(upload, download) {
  const buffer = Buffer.alloc(16);
  buffer.writeBigUInt64BE(BigInt(upload), 0);
  buffer.writeBigUInt64BE(BigInt(download), 8);
  return buffer;
}

function payload(size) {
  return randomBytes(size);
}

// A TCP stream's upload, made (and hashed) before the clock starts, so that
// the timings of both modes measure the transfer and not the client's work.
function prepareUpload(spec) {
  const up = createHash("sha256");
  const chunks = [];
  let left = spec.upload ?? 0;
  while (left > 0) {
    const chunk = payload(Math.min(CHUNK, left));
    up.update(chunk);
    chunks.push(chunk);
    left -= chunk.length;
  }
  return { chunks, up: up.digest("hex") };
}

function runWispStream(conn, spec, upload) {
  return new Promise((resolve) => {
    const down = createHash("sha256");
    const up = createHash("sha256");
    let received = 0;
    const stream = conn.create_stream(spec.host, spec.port, spec.type);
    const result = { type: spec.type };
    if (spec.type === "udp") {
      const datagrams = [];
      let echoed = 0;
      stream.onmessage = (data) => {
        down.update(data);
        received += data.length;
        echoed += 1;
        if (echoed === spec.datagrams) {
          stream.close(0x02);
          resolve({ ...result, echoed, up: up.digest("hex"), down: down.digest("hex"), received });
        }
      };
      stream.onclose = (reason) => resolve({ ...result, echoed, reason, received });
      for (let i = 0; i < spec.datagrams; i++) {
        const datagram = payload(1 + ((i * 997) % 1400));
        datagrams.push(datagram);
        up.update(datagram);
        stream.send(datagram);
      }
      return;
    }
    stream.onmessage = (data) => {
      down.update(data);
      received += data.length;
    };
    stream.onclose = (reason) => {
      resolve({ ...result, reason, received, up: upload.up, down: down.digest("hex") });
    };
    stream.send(header(spec.upload, spec.download));
    for (const chunk of upload.chunks) stream.send(chunk);
  });
}

async function runWisp() {
  const conn = new client.ClientConnection(plan.url, { wisp_version: plan.version });
  await new Promise((resolve, reject) => {
    conn.onopen = resolve;
    conn.onclose = () => reject(new Error("websocket closed before open"));
    conn.onerror = () => reject(new Error("websocket error"));
  });
  const info = { version: conn.wisp_version, motd: conn.server_motd ?? null };
  const uploads = plan.streams.map(prepareUpload);
  const started = performance.now();
  const streams = await runAll((spec, i) => runWispStream(conn, spec, uploads[i]));
  info.elapsed_ms = performance.now() - started;
  conn.close();
  return { ...info, streams };
}

function runWsproxy() {
  return new Promise((resolve) => {
    const spec = plan.streams[0];
    const ws = new WebSocket(plan.url, ["binary"]);
    ws.binaryType = "nodebuffer";
    const down = createHash("sha256");
    const up = createHash("sha256");
    let received = 0;
    ws.on("open", () => {
      ws.send(header(spec.upload, spec.download));
      let left = spec.upload;
      while (left > 0) {
        const chunk = payload(Math.min(CHUNK, left));
        up.update(chunk);
        ws.send(chunk);
        left -= chunk.length;
      }
    });
    ws.on("message", (data) => {
      down.update(data);
      received += data.length;
    });
    ws.on("unexpected-response", (_, response) => {
      resolve({ status: response.statusCode });
    });
    ws.on("error", (error) => resolve({ error: String(error) }));
    ws.on("close", (code) => {
      resolve({
        protocol: ws.protocol,
        streams: [{ code, received, up: up.digest("hex"), down: down.digest("hex") }],
      });
    });
  });
}

// The baseline: the same transfers over plain kernel TCP, no gateway, with
// the same 64 KiB writes as on a Wisp stream.
function runTcpStream(spec, upload) {
  return new Promise((resolve) => {
    const down = createHash("sha256");
    let received = 0;
    const socket = net.connect(spec.port, spec.host, () => {
      socket.write(header(spec.upload, spec.download));
      for (const chunk of upload.chunks) socket.write(chunk);
    });
    socket.on("data", (data) => {
      down.update(data);
      received += data.length;
    });
    socket.on("close", () => resolve({ received, up: upload.up, down: down.digest("hex") }));
  });
}

// All streams at once, or one after another with each one's duration in
// "ms" when the plan says "sequential" (the connect-latency benchmark).
async function runAll(run) {
  if (!plan.sequential) return Promise.all(plan.streams.map(run));
  const results = [];
  for (const [i, spec] of plan.streams.entries()) {
    const started = performance.now();
    const result = await run(spec, i);
    results.push({ ...result, ms: performance.now() - started });
  }
  return results;
}

async function runTcp() {
  const uploads = plan.streams.map(prepareUpload);
  const started = performance.now();
  const streams = await runAll((spec, i) => runTcpStream(spec, uploads[i]));
  return { elapsed_ms: performance.now() - started, streams };
}

const modes = { wsproxy: runWsproxy, wisp: runWisp, tcp: runTcp };
const result = await modes[plan.mode]();
process.stdout.write(JSON.stringify(result) + "\n");
process.exit(0);
