// setTimeout: "timeout" once per idle period; reading or writing starts the next.
// Client timeline (ms): timeout 100, data 300, timeout 400, write 600, timeout 700, destroy 850.
import net from 'node:net';
import { finish, listen, once, record, sleep, watch } from './_log.mjs';

let serverSocketClosed;
const server = net.createServer((socket) => {
  watch(socket, 'server-socket', ['data', 'end', 'finish', 'close', 'error']);
  setTimeout(() => socket.write('x'), 300);
  serverSocketClosed = once(socket, 'close');
});
const port = await listen(server, 0, '127.0.0.1');

const client = new net.Socket();
watch(client, 'client', ['connect', 'data', 'timeout', 'end', 'finish', 'close', 'error']);
client.setTimeout(100);
client.connect(port, '127.0.0.1');
await once(client, 'connect');
await sleep(600);
record('client', 'writes');
client.write('a');
await sleep(250);
client.destroy();
await once(client, 'close');
await serverSocketClosed;
server.close();
await once(server, 'close');
finish();
