// Data nobody reads holds "end" back (and so the close, and server.close());
// a "data" listener added later gets the data, then "end", and all closes.
import net from 'node:net';
import { finish, listen, once, record, sleep, watch } from './_log.mjs';

let serverSocket;
let serverSocketClosed;
const server = net.createServer((socket) => {
  serverSocket = socket;
  serverSocketClosed = once(socket, 'close');
  watch(socket, 'server-socket', ['end', 'finish', 'close', 'error']);
});
watch(server, 'server', ['connection', 'close']);
const port = await listen(server, 0, '127.0.0.1');

const client = net.connect(port, '127.0.0.1');
watch(client, 'client', ['connect', 'data', 'end', 'finish', 'close', 'error']);
const clientClosed = once(client, 'close');
await once(client, 'connect');
client.end('hello');
await sleep(200);
const count = await new Promise((resolve) => server.getConnections((_, n) => resolve(n)));
record('server', 'connections', count);
let closed = false;
server.close(() => {
  closed = true;
});
await sleep(100);
record('server', 'closed yet', closed);
record('server-socket', 'adds a data listener');
watch(serverSocket, 'server-socket', ['data']);
await once(server, 'close');
await serverSocketClosed;
await clientClosed;
finish();
