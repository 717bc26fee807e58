// setMulticastInterface picks where multicast leaves: with 127.0.0.1 a
// member on this host, joined on 127.0.0.1, receives.  Bad input fails as on Linux.
import dgram from 'node:dgram';
import { attempt, bind, finish, once, watch } from './_log.mjs';

const member = dgram.createSocket('udp4');
watch(member, 'member', ['message', 'close', 'error']);
const port = await bind(member, 0);
member.addMembership('239.1.2.3', '127.0.0.1');

const sender = dgram.createSocket('udp4');
watch(sender, 'sender', ['close', 'error']);
await bind(sender, 0, '127.0.0.1');
attempt('calls', 'not an address', () => sender.setMulticastInterface('nonsense'));
attempt('calls', 'an IPv6 address', () => sender.setMulticastInterface('::1'));
attempt('calls', 'not this host', () => sender.setMulticastInterface('192.0.2.1'));
attempt('calls', 'any', () => sender.setMulticastInterface('0.0.0.0'));
attempt('calls', 'loopback', () => sender.setMulticastInterface('127.0.0.1'));
sender.send('to the group', port, '239.1.2.3');
await once(member, 'message');
sender.close();
await once(sender, 'close');
member.close();
await once(member, 'close');
finish();
