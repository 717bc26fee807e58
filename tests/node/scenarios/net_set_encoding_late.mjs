// setEncoding after the data was read into the buffer: what is buffered is
// decoded too, characters split across reads arrive whole.
import net from 'node:net';
import { finish, listen, once, record, sleep, watch } from './_log.mjs';

const server = net.createServer(async (socket) => {
  const bytes = Buffer.from('héllo €');
  for (let index = 0; index < bytes.length; index += 1) {
    socket.write(bytes.subarray(index, index + 1));
    await sleep(2);
  }
  socket.end();
});
const port = await listen(server, 0, '127.0.0.1');

const client = net.connect(port, '127.0.0.1');
watch(client, 'client', ['connect', 'end', 'finish', 'close', 'error']);
await once(client, 'connect');
await sleep(100);
client.setEncoding('utf8');
let allStrings = true;
client.on('data', (chunk) => {
  allStrings &&= typeof chunk === 'string';
});
watch(client, 'client', ['data']);
await once(client, 'close');
record('client', 'all strings', allStrings);
server.close();
await once(server, 'close');
finish();
