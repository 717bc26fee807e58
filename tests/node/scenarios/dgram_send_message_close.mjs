// bind, "listening", send (a string, a list of buffers and strings, a list of
// strings: one datagram each), "message" with rinfo, close.
import dgram from 'node:dgram';
import { bind, errorOf, finish, once, record, watch } from './_log.mjs';

const receiver = dgram.createSocket('udp4');
watch(receiver, 'receiver', ['listening', 'message', 'close', 'error']);
const port = await bind(receiver, 0, '127.0.0.1');

const sender = dgram.createSocket('udp4');
watch(sender, 'sender', ['listening', 'close', 'error']);
const send = (message) =>
  new Promise((resolve) =>
    sender.send(message, port, '127.0.0.1', (error, bytes) => {
      record('sender.calls', 'send', errorOf(error), bytes);
      resolve();
    }),
  );
await send('plain');
await once(receiver, 'message');
await send(['ab', Buffer.from('cd')]);
await once(receiver, 'message');
await send(['he', 'llo']);
await once(receiver, 'message');
sender.close();
await once(sender, 'close');
receiver.close();
await once(receiver, 'close');
finish();
