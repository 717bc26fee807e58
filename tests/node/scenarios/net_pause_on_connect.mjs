// pauseOnConnect: nothing is read, not even with a "data" listener, until resume().
import net from 'node:net';
import { finish, listen, once, record, sleep, watch } from './_log.mjs';

let serverSocket;
const server = net.createServer({ pauseOnConnect: true }, (socket) => {
  serverSocket = socket;
  record('server-socket', 'paused', socket.isPaused());
  watch(socket, 'server-socket', ['data', 'end', 'finish', 'close', 'error']);
});
const port = await listen(server, 0, '127.0.0.1');

const client = net.connect(port, '127.0.0.1');
watch(client, 'client', ['connect', 'end', 'finish', 'close', 'error']);
const clientClosed = once(client, 'close');
await once(client, 'connect');
client.end('hi');
await sleep(200);
record('server-socket', 'resume');
serverSocket.resume();
await once(serverSocket, 'close');
await clientClosed;
server.close();
await once(server, 'close');
finish();
