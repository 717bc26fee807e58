// resetAndDestroy(): the peer's read fails with ECONNRESET.
import net from 'node:net';
import { finish, listen, once, sleep, watch } from './_log.mjs';

let serverSocketClosed;
const server = net.createServer((socket) => {
  watch(socket, 'server-socket', ['data', 'end', 'finish', 'close', 'error']);
  serverSocketClosed = once(socket, 'close');
});
const port = await listen(server, 0, '127.0.0.1');

const client = net.connect(port, '127.0.0.1');
watch(client, 'client', ['connect', 'end', 'finish', 'close', 'error']);
await once(client, 'connect');
await sleep(50);
client.resetAndDestroy();
await once(client, 'close');
await serverSocketClosed;
server.close();
await once(server, 'close');
finish();
