// Options of an unbound socket throw EBADF (buffer sizes: ERR_SOCKET_BUFFER_SIZE).
import dgram from 'node:dgram';
import { attempt, finish, once } from './_log.mjs';

const socket = dgram.createSocket('udp4');
attempt('calls', 'setBroadcast', () => socket.setBroadcast(true));
attempt('calls', 'setTTL', () => socket.setTTL(5));
attempt('calls', 'setMulticastTTL', () => socket.setMulticastTTL(5));
attempt('calls', 'setMulticastLoopback', () => socket.setMulticastLoopback(false));
attempt('calls', 'setMulticastInterface', () => socket.setMulticastInterface('127.0.0.1'));
attempt('calls', 'setRecvBufferSize', () => socket.setRecvBufferSize(4096));
attempt('calls', 'getRecvBufferSize', () => socket.getRecvBufferSize());
attempt('calls', 'setSendBufferSize', () => socket.setSendBufferSize(4096));
attempt('calls', 'getSendBufferSize', () => socket.getSendBufferSize());
attempt('calls', 'address', () => socket.address());
attempt('calls', 'remoteAddress', () => socket.remoteAddress());
attempt('calls', 'disconnect', () => socket.disconnect());
socket.bind(0, '127.0.0.1');
await once(socket, 'listening');
attempt('calls', 'setBroadcast', () => socket.setBroadcast(true));
attempt('calls', 'setTTL', () => socket.setTTL(5));
attempt('calls', 'setMulticastTTL', () => socket.setMulticastTTL(5));
attempt('calls', 'setMulticastLoopback', () => socket.setMulticastLoopback(false));
attempt('calls', 'setRecvBufferSize', () => socket.setRecvBufferSize(4096));
attempt('calls', 'address', () => socket.address());
socket.close();
await once(socket, 'close');
finish();
