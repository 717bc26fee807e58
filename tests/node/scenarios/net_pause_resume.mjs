// pause() in a "data" listener holds further data (and the FIN behind it)
// until resume().
import net from 'node:net';
import { finish, listen, once, record, sleep, watch } from './_log.mjs';

let serverSocketClosed;
const server = net.createServer((socket) => {
  watch(socket, 'server-socket', ['data', 'end', 'finish', 'close', 'error']);
  socket.once('data', () => {
    socket.pause();
    record('server-socket', 'paused', socket.isPaused());
    setTimeout(() => {
      record('server-socket', 'resume');
      socket.resume();
    }, 300);
  });
  serverSocketClosed = once(socket, 'close');
});
const port = await listen(server, 0, '127.0.0.1');

const client = net.connect(port, '127.0.0.1');
watch(client, 'client', ['connect', 'end', 'finish', 'close', 'error']);
await once(client, 'connect');
client.write('one');
await sleep(100);
client.end('two');
await once(client, 'close');
await serverSocketClosed;
server.close();
await once(server, 'close');
finish();
