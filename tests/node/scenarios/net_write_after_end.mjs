// A write after end(): the callback gets ERR_STREAM_WRITE_AFTER_END, which is
// also emitted as "error" and destroys the socket.
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
client.end(() => {
  record('client.calls', 'end', null);
  client.write('late', (error) => record('client.calls', 'write', errorOf(error)));
});
await once(client, 'close');
await serverSocketClosed;
server.close();
await once(server, 'close');
finish();
