// server.close() stops accepting at once but emits "close" only after the
// open connection closed; closing again fails with ERR_SERVER_NOT_RUNNING.
import net from 'node:net';
import { errorOf, finish, listen, once, record, watch } from './_log.mjs';

let serverSocketClosed;
const server = net.createServer((socket) => {
  watch(socket, 'server-socket', ['data', 'end', 'finish', 'close', 'error']);
  serverSocketClosed = once(socket, 'close');
});
watch(server, 'server', ['connection', 'close', 'error']);
const port = await listen(server, 0, '127.0.0.1');

const accepted = once(server, 'connection');
const client = net.connect(port, '127.0.0.1');
watch(client, 'client', ['connect', 'end', 'finish', 'close', 'error']);
const clientClosed = once(client, 'close');
await once(client, 'connect');
await accepted;
const count = await new Promise((resolve) => server.getConnections((_, n) => resolve(n)));
record('server', 'connections', count);
const closed = new Promise((resolve) =>
  server.close((error) => {
    record('server.calls', 'close', errorOf(error));
    resolve();
  }),
);
record('server', 'listening?', server.listening);
const secondClose = new Promise((resolve) =>
  server.close((error) => {
    record('server.calls2', 'close again', errorOf(error));
    resolve();
  }),
);

const late = net.connect(port, '127.0.0.1');
watch(late, 'late-client', ['connect', 'close', 'error']);
await once(late, 'close');

client.end();
await closed;
await secondClose;
await serverSocketClosed;
await clientClosed;
finish();
