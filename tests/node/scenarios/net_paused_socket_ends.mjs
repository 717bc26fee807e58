// pause() stops "data", not reading: an empty stream still ends and closes.
import net from 'node:net';
import { finish, listen, once, record, watch } from './_log.mjs';

let serverSocketClosed;
const server = net.createServer((socket) => {
  watch(socket, 'server-socket', ['data', 'end', 'finish', 'close', 'error']);
  socket.pause();
  record('server-socket', 'paused', socket.isPaused());
  serverSocketClosed = once(socket, 'close');
});
const port = await listen(server, 0, '127.0.0.1');

const client = net.connect(port, '127.0.0.1');
watch(client, 'client', ['connect', 'end', 'finish', 'close', 'error']);
await once(client, 'connect');
client.end();
await once(client, 'close');
await serverSocketClosed;
server.close();
await once(server, 'close');
finish();
