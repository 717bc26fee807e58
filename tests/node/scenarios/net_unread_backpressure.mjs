// A socket nobody reads reads up to its high-water mark (16 KiB in Node 20,
// plus the last read of at most 64 KiB), then stops: the sender's write waits
// until the reader flows.
import net from 'node:net';
import { finish, listen, once, record, sleep, watch } from './_log.mjs';

const size = 32 * 1024 * 1024;
let serverSocket;
const server = net.createServer((socket) => {
  serverSocket = socket;
  watch(socket, 'server-socket', ['end', 'finish', 'close', 'error']);
});
const port = await listen(server, 0, '127.0.0.1');

const client = net.connect(port, '127.0.0.1');
watch(client, 'client', ['connect', 'end', 'finish', 'close', 'error']);
const clientClosed = once(client, 'close');
await once(client, 'connect');
let written = false;
client.end(Buffer.alloc(size), () => {
  written = true;
});
await sleep(300);
const read = serverSocket.bytesRead;
const limit = serverSocket.readableHighWaterMark + 64 * 1024;
const bounded = read > 0 && read < limit;
record('server-socket', 'read some, less than the high-water mark and a read', bounded);
record('client', 'all written', written);
let total = 0;
serverSocket.on('data', (chunk) => {
  total += chunk.length;
});
await once(serverSocket, 'close');
record('server-socket', 'received everything', total === size);
await clientClosed;
server.close();
await once(server, 'close');
finish();
