/**
 * The reference RSS, without a kernel: Toeplitz on Microsoft's published verification vectors,
 * which fields feed the hash under which hash types, the queue decisions of QEMU's program
 * (redirect off, no hash, modulo, past the table), and the byte layout of QEMU's map values.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  decodeRssConfig,
  describeFlow,
  encodeRssConfig,
  HASH_TYPE,
  HASH_TYPES_ALL,
  HASH_TYPES_LINUX_DEFAULT,
  hashTypeNames,
  keyFromMapValue,
  keyToMapValue,
  MS_RSS_KEY,
  parseIpv6,
  referenceQueue,
  rssHashInput,
  toeplitz,
  type Flow,
  type RssState,
} from '../../src/rss';
import { isVirtEbpfError } from '../../src/errors';

// Microsoft, "Verifying the RSS Hash Calculation": destination, source, IP-only hash, with-ports hash.
const V4 = [
  ['161.142.100.80', 1766, '66.9.149.187', 2794, 0x323e8fc2, 0x51ccc178],
  ['65.69.140.83', 4739, '199.92.111.2', 14230, 0xd718262a, 0xc626b0ea],
  ['12.22.207.184', 38024, '24.19.198.95', 12898, 0xd2d0a5de, 0x5c2b394a],
  ['209.142.163.6', 2217, '38.27.205.30', 48228, 0x82989176, 0xafc7327f],
  ['202.188.127.2', 1303, '153.39.163.191', 44251, 0x5d1809c5, 0x10e828a2],
] as const;
const V6 = [
  ['3ffe:2501:200:3::1', 1766, '3ffe:2501:200:1fff::7', 2794, 0x2cc18cd5, 0x40207d3d],
  ['ff02::1', 4739, '3ffe:501:8::260:97ff:fe40:efab', 14230, 0x0f0c461c, 0xdde51bbf],
  ['fe80::200:f8ff:fe21:67cf', 38024, '3ffe:1900:4545:3:200:f8ff:fe21:67cf', 44251, 0x4b61e985, 0x02d1feef],
] as const;

function hashOf(flow: Flow, types: number): number {
  const hi = rssHashInput(flow, types);
  assert.ok(hi, `no hash input for ${describeFlow(flow)}`);
  return toeplitz(MS_RSS_KEY, hi.input);
}

test('Microsoft verification suite, IPv4: addresses only and with TCP ports', () => {
  for (const [dst, dport, src, sport, ip, tcp] of V4) {
    const flow: Flow = { family: 4, proto: 'tcp', src, dst, sport, dport };
    assert.equal(hashOf(flow, HASH_TYPE.IPv4), ip, `${src} → ${dst}`);
    assert.equal(hashOf(flow, HASH_TYPE.IPv4 | HASH_TYPE.TCPv4), tcp, `${src}:${sport} → ${dst}:${dport}`);
    // UDP uses the same fields under UDPv4
    assert.equal(hashOf({ ...flow, proto: 'udp' }, HASH_TYPE.UDPv4), tcp);
  }
});

test('Microsoft verification suite, IPv6: addresses only and with TCP ports', () => {
  for (const [dst, dport, src, sport, ip, tcp] of V6) {
    const flow: Flow = { family: 6, proto: 'tcp', src, dst, sport, dport };
    assert.equal(hashOf(flow, HASH_TYPE.IPv6), ip, `${src} → ${dst}`);
    assert.equal(hashOf(flow, HASH_TYPES_ALL), tcp, `${src}:${sport} → ${dst}:${dport}`);
  }
});

test('hash input follows the enabled types: ports only for TCP/UDP with their type on, never for fragments', () => {
  const tcp: Flow = { family: 4, proto: 'tcp', src: '10.0.0.1', dst: '10.0.0.2', sport: 1, dport: 2 };
  assert.equal(rssHashInput(tcp, HASH_TYPES_LINUX_DEFAULT)?.kind, 'ipv4-tcp');
  assert.equal(rssHashInput(tcp, HASH_TYPES_LINUX_DEFAULT)?.input.length, 12);
  assert.equal(rssHashInput(tcp, HASH_TYPE.IPv4 | HASH_TYPE.UDPv4)?.kind, 'ipv4', 'TCPv4 off: addresses only');
  assert.equal(rssHashInput(tcp, HASH_TYPE.TCPv4)?.kind, 'ipv4-tcp', 'TCPv4 alone suffices for TCP');
  assert.equal(rssHashInput({ ...tcp, proto: 'udp' }, HASH_TYPE.TCPv4), null, 'UDP with only TCPv4: no hash');
  assert.equal(rssHashInput({ ...tcp, fragment: true }, HASH_TYPES_LINUX_DEFAULT)?.kind, 'ipv4');
  assert.equal(rssHashInput({ ...tcp, fragment: true }, HASH_TYPE.TCPv4), null);
  assert.equal(rssHashInput({ family: 4, proto: 47, src: '10.0.0.1', dst: '10.0.0.2' }, HASH_TYPES_ALL)?.kind, 'ipv4');
  assert.equal(rssHashInput(tcp, HASH_TYPE.IPv6 | HASH_TYPE.TCPv6), null, 'IPv6 types do not cover IPv4');
  const v6: Flow = { family: 6, proto: 'udp', src: '::1', dst: '::2', sport: 1, dport: 2 };
  assert.equal(rssHashInput(v6, HASH_TYPES_LINUX_DEFAULT)?.input.length, 36);
  assert.equal(rssHashInput(v6, HASH_TYPE.IPv6 | HASH_TYPE.UDP_EX)?.kind, 'ipv6', 'UDP_EX alone does not add ports');
  assert.throws(() => rssHashInput({ ...tcp, sport: 70000 }, HASH_TYPES_ALL), (e) => isVirtEbpfError(e, 'USAGE'));
});

test('IPv6 text forms parse to the right 16 bytes; bad ones are refused', () => {
  assert.equal(parseIpv6('::').toString('hex'), '0'.repeat(32));
  assert.equal(parseIpv6('::1').toString('hex'), '0'.repeat(31) + '1');
  assert.equal(parseIpv6('3ffe:501:8::260:97ff:fe40:efab').toString('hex'), '3ffe0501000800000260' + '97fffe40efab');
  assert.equal(parseIpv6('::ffff:192.0.2.1').toString('hex'), '00000000000000000000ffffc0000201');
  assert.equal(parseIpv6('1:2:3:4:5:6:7:8').toString('hex'), '00010002000300040005000600070008');
  for (const bad of ['1::2::3', '1:2:3:4:5:6:7', '1:2:3:4:5:6:7:8:9', '12345::', 'g::1', '1:2:3:4:5:6:7::8']) {
    assert.throws(() => parseIpv6(bad), (e) => isVirtEbpfError(e, 'USAGE'), bad);
  }
});

test('hash type names in bit order, unknown bits named by number', () => {
  assert.deepEqual(hashTypeNames(0x3f), ['IPv4', 'TCPv4', 'UDPv4', 'IPv6', 'TCPv6', 'UDPv6']);
  assert.deepEqual(hashTypeNames(HASH_TYPES_ALL), ['IPv4', 'TCPv4', 'UDPv4', 'IPv6', 'TCPv6', 'UDPv6', 'IP_EX', 'TCP_EX', 'UDP_EX']);
  assert.deepEqual(hashTypeNames(0x401), ['IPv4', 'bit10']);
  assert.deepEqual(hashTypeNames(0), []);
});

const table = Array.from({ length: 128 }, (_, i) => i % 3);
const on: RssState = { config: { redirect: true, populateHash: false, hashTypes: HASH_TYPES_LINUX_DEFAULT, indirectionsLen: 128, defaultQueue: 2 }, key: MS_RSS_KEY, table };
const flow: Flow = { family: 4, proto: 'tcp', src: '66.9.149.187', dst: '161.142.100.80', sport: 2794, dport: 1766 };

test('queue decisions: table[hash % len]; redirect off, no covering hash type, and an index past the table use the default queue', () => {
  const s = referenceQueue(flow, on);
  assert.deepEqual(s, { queue: table[0x51ccc178 % 128], hash: 0x51ccc178, input: 'ipv4-tcp', index: 0x51ccc178 % 128, path: 'table' });
  assert.equal(referenceQueue(flow, { ...on, config: { ...on.config, indirectionsLen: 7 } }).index, 0x51ccc178 % 7, 'modulo, not a mask');
  assert.deepEqual(referenceQueue(flow, { ...on, config: { ...on.config, redirect: false } }), { queue: 2, hash: 0, path: 'redirect-off' });
  assert.deepEqual(referenceQueue({ ...flow, proto: 'udp' }, { ...on, config: { ...on.config, hashTypes: HASH_TYPE.TCPv4 } }), { queue: 2, hash: 0, path: 'no-hash' });
  // eBPF's x % 0 is x: the hash itself indexes the 128-entry map and misses.
  assert.deepEqual(referenceQueue(flow, { ...on, config: { ...on.config, indirectionsLen: 0 } }), { queue: 2, hash: 0x51ccc178, input: 'ipv4-tcp', index: 0x51ccc178, path: 'past-table' });
  // An all-zero key hashes everything to 0, which indexes entry 0 like any hash (QEMU 10).
  assert.deepEqual(referenceQueue(flow, { ...on, key: Buffer.alloc(40) }), { queue: table[0], hash: 0, input: 'ipv4-tcp', index: 0, path: 'table' });
});

test('map values: config packs little-endian to 10 bytes; the key map holds the first word byte-swapped', () => {
  const cfg = { redirect: true, populateHash: false, hashTypes: 0x3f, indirectionsLen: 128, defaultQueue: 0 };
  // What QEMU wrote after `ethtool -X eth0 equal 2` in a Debian 6.1 guest.
  assert.equal(encodeRssConfig(cfg).toString('hex'), '01003f00000080000000');
  assert.deepEqual(decodeRssConfig(encodeRssConfig(cfg)), cfg);
  const stored = keyToMapValue(MS_RSS_KEY);
  assert.equal(stored.subarray(0, 4).toString('hex'), 'da565a6d');
  assert.ok(stored.subarray(4).equals(MS_RSS_KEY.subarray(4)));
  assert.ok(keyFromMapValue(stored).equals(MS_RSS_KEY));
  assert.ok(MS_RSS_KEY.subarray(0, 4).toString('hex') === '6d5a56da', 'the constant itself is untouched');
});

test('flows describe themselves in one line', () => {
  assert.equal(describeFlow(flow), 'tcp4 66.9.149.187:2794 → 161.142.100.80:1766');
  assert.equal(describeFlow({ family: 6, proto: 'udp', src: '::1', dst: '::2', sport: 5, dport: 6, fragment: true }), 'udp6 [::1]:5 → [::2]:6 (fragment)');
  assert.equal(describeFlow({ family: 4, proto: 47, src: '10.0.0.1', dst: '10.0.0.2' }), 'ip4 proto 47 10.0.0.1 → 10.0.0.2');
});
