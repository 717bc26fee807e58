// Nobody reads either socket: both still see the other's FIN ("end" for an
// empty stream), end themselves and close; getConnections() drops to 0 and
// server.close() completes.
import net from 'node:net';
import { finish, listen, once, record, watch } from './_log.mjs';

let serverSocketClosed;
const server = net.createServer((socket) => {
  watch(socket, 'server-socket', ['end', 'finish', 'close', 'error']);
  serverSocketClosed = once(socket, 'close');
});
watch(server, 'server', ['connection', 'close']);
const port = await listen(server, 0, '127.0.0.1');

const client = net.connect(port, '127.0.0.1');
watch(client, 'client', ['connect', 'end', 'finish', 'close', 'error']);
await once(client, 'connect');
client.end();
await once(client, 'close');
await serverSocketClosed;
const count = await new Promise((resolve) => server.getConnections((_, n) => resolve(n)));
record('server', 'connections', count);
server.close();
await once(server, 'close');
finish();
