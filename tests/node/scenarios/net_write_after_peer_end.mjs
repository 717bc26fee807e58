// Without allowHalfOpen the socket ends itself when the peer's FIN comes; a
// write after that fails with EPIPE "ended by the other party" (callback only:
// the socket has closed).
import net from 'node:net';
import { errorOf, finish, listen, once, record, watch } from './_log.mjs';

let serverSocketDone;
const server = net.createServer((socket) => {
  watch(socket, 'server-socket', ['data', 'end', 'finish', 'close', 'error']);
  serverSocketDone = new Promise((resolve) => {
    socket.on('close', () => {
      socket.write('late', (error) => {
        record('server-socket.calls', 'write', errorOf(error));
        resolve();
      });
    });
  });
});
const port = await listen(server, 0, '127.0.0.1');

const client = net.connect(port, '127.0.0.1');
watch(client, 'client', ['connect', 'end', 'finish', 'close', 'error']);
await once(client, 'connect');
client.end();
await once(client, 'close');
await serverSocketDone;
server.close();
await once(server, 'close');
finish();
