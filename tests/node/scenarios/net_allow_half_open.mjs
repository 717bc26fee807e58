// allowHalfOpen: the server reads to the client's FIN, then still writes and ends.
import net from 'node:net';
import { finish, listen, once, record, watch } from './_log.mjs';

let serverSocketClosed;
const server = net.createServer({ allowHalfOpen: true }, (socket) => {
  watch(socket, 'server-socket', ['data', 'end', 'finish', 'close', 'error']);
  let received = '';
  socket.on('data', (chunk) => {
    received += chunk;
  });
  socket.on('end', () => {
    record('server-socket', 'readyState', socket.readyState);
    socket.write(`got ${received}`);
    socket.end();
  });
  serverSocketClosed = once(socket, 'close');
});
const port = await listen(server, 0, '127.0.0.1');

const client = net.connect(port, '127.0.0.1');
watch(client, 'client', ['connect', 'data', 'end', 'finish', 'close', 'error']);
await once(client, 'connect');
client.end('question');
record('client.calls', 'readyState', client.readyState);
await once(client, 'close');
await serverSocketClosed;
server.close();
await once(server, 'close');
finish();
