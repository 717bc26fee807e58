// Write callbacks come in order, then end's; "finish" after the last write.
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
client.write('1', (error) => record('client.calls', 'write 1', errorOf(error)));
client.write('2', (error) => record('client.calls', 'write 2', errorOf(error)));
client.end('3', () => record('client.calls', 'end', null));
await once(client, 'close');
await serverSocketClosed;
server.close();
await once(server, 'close');
finish();
