// connect(): binds first ("listening"), then "connect"; sends without an
// address; connecting again and disconnecting twice fail with Node's codes.
import dgram from 'node:dgram';
import { attempt, bind, finish, once, record, watch } from './_log.mjs';

const receiver = dgram.createSocket('udp4');
watch(receiver, 'receiver', ['message', 'close', 'error']);
const port = await bind(receiver, 0, '127.0.0.1');

const socket = dgram.createSocket('udp4');
watch(socket, 'socket', ['listening', 'connect', 'close', 'error']);
attempt('calls', 'remoteAddress', () => socket.remoteAddress());
socket.connect(port, '127.0.0.1');
await once(socket, 'connect');
record('calls', 'remote port', socket.remoteAddress().port === port);
attempt('calls', 'connect again', () => socket.connect(port, '127.0.0.1'));
socket.send('x');
await once(receiver, 'message');
attempt('calls', 'disconnect', () => socket.disconnect());
attempt('calls', 'remoteAddress', () => socket.remoteAddress());
attempt('calls', 'disconnect again', () => socket.disconnect());
socket.close();
await once(socket, 'close');
receiver.close();
await once(receiver, 'close');
finish();
