// The main flow: connect, ready, data both ways, end, finish, close on both
// sides (allowHalfOpen false: the server ends itself when the client's FIN comes).
import net from 'node:net';
import { finish, listen, once, record, watch } from './_log.mjs';

const server = net.createServer((socket) => {
  watch(socket, 'server-socket', ['data', 'end', 'finish', 'close', 'error']);
  socket.on('data', (chunk) => socket.write(String(chunk).toUpperCase()));
});
watch(server, 'server', ['listening', 'connection', 'close', 'error']);
const port = await listen(server, 0, '127.0.0.1');

const client = net.connect(port, '127.0.0.1');
watch(client, 'client', ['connect', 'ready', 'data', 'end', 'finish', 'close', 'error']);
await once(client, 'connect');
client.write('hello ');
client.end('world');
await once(client, 'close');
record('client', 'bytes', client.bytesRead, client.bytesWritten);
server.close();
await once(server, 'close');
finish();
