// Nothing listens: "error" ECONNREFUSED (syscall connect, the address tried), close(true).
import net from 'node:net';
import { finish, listen, once, record, watch } from './_log.mjs';

const probe = net.createServer();
const port = await listen(probe, 0, '127.0.0.1');
probe.close();
await once(probe, 'close');

const client = net.connect(port, '127.0.0.1');
watch(client, 'client', ['connect', 'ready', 'end', 'finish', 'close', 'error']);
client.on('error', (error) =>
  record('client', 'error target', error.address === '127.0.0.1' && error.port === port),
);
await once(client, 'close');
finish();
