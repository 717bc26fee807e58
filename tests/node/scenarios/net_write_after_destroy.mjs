// A write after destroy(): ERR_STREAM_DESTROYED to the callback, no "error" event.
import net from 'node:net';
import { errorOf, finish, listen, once, record, watch } from './_log.mjs';

let serverSocketClosed;
const server = net.createServer((socket) => {
  watch(socket, 'server-socket', ['data', 'end', 'finish', 'close', 'error']);
  serverSocketClosed = once(socket, 'close');
});
const port = await listen(server, 0, '127.0.0.1');

const client = net.connect(port, '127.0.0.1');
watch(client, 'client', ['connect', 'end', 'finish', 'close', 'error']);
await once(client, 'connect');
client.destroy();
await new Promise((resolve) =>
  client.write('late', (error) => {
    record('client.calls', 'write', errorOf(error));
    resolve();
  }),
);
await once(client, 'close');
await serverSocketClosed;
server.close();
await once(server, 'close');
finish();
