// bind() on a used port: "error" EADDRINUSE (syscall bind); the socket stays
// usable and binds elsewhere.
import dgram from 'node:dgram';
import { bind, finish, once, record, watch } from './_log.mjs';

const first = dgram.createSocket('udp4');
const port = await bind(first, 0, '127.0.0.1');
const second = dgram.createSocket('udp4');
watch(second, 'second', ['listening', 'error', 'close']);
second.on('error', (error) =>
  record('second', 'error target', error.address === '127.0.0.1' && error.port === port),
);
second.bind(port, '127.0.0.1');
await once(second, 'error');
await bind(second, 0, '127.0.0.1');
second.close();
await once(second, 'close');
first.close();
await once(first, 'close');
finish();
