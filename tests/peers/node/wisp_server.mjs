// Runs the wisp-js Wisp server on loopback for the tunnel tests and benchmarks.
//
// Usage: node wisp_server.mjs '{"motd": "...", "version": 2}'
// Listens on 127.0.0.1 on a port the kernel picks, allows loopback
// destinations (the tests' targets live there) and prints {"port": N} once
// it accepts connections.  Runs until killed.
import http from "node:http";
import { server as wisp, logging } from "@mercuryworkshop/wisp-js/server";

const settings = JSON.parse(process.argv[2] || "{}");
logging.set_level(logging.NONE);
wisp.options.allow_loopback_ips = true;
wisp.options.allow_private_ips = true;
wisp.options.wisp_version = settings.version ?? 2;
wisp.options.wisp_motd = settings.motd ?? null;

const server = http.createServer((request, response) => {
  response.writeHead(200, { "Content-Type": "text/plain" });
  response.end("wisp-js test server\n");
});
server.on("upgrade", (request, socket, head) => {
  wisp.routeRequest(request, socket, head);
});
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + "\n");
});
