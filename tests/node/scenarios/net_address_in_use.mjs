// A second server on a used port: "error" EADDRINUSE (syscall listen), not listening.
import net from 'node:net';
import { finish, listen, once, record, sleep, watch } from './_log.mjs';

const first = net.createServer();
const port = await listen(first, 0, '127.0.0.1');
const second = net.createServer();
watch(second, 'second', ['listening', 'error', 'close']);
second.on('error', (error) =>
  record('second', 'error target', error.address === '127.0.0.1' && error.port === port),
);
second.listen(port, '127.0.0.1');
await once(second, 'error');
await sleep(10);
record('second', 'listening?', second.listening);
first.close();
await once(first, 'close');
finish();
