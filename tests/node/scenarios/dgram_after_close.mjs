// After close, everything throws ERR_SOCKET_DGRAM_NOT_RUNNING, close() too.
import dgram from 'node:dgram';
import { attempt, bind, finish, once, watch } from './_log.mjs';

const socket = dgram.createSocket('udp4');
watch(socket, 'socket', ['listening', 'close', 'error']);
await bind(socket, 0, '127.0.0.1');
socket.close();
await once(socket, 'close');
attempt('calls', 'close', () => socket.close());
attempt('calls', 'send', () => socket.send('x', 9, '127.0.0.1'));
attempt('calls', 'bind', () => socket.bind(0));
attempt('calls', 'address', () => socket.address());
finish();
