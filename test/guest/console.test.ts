/**
 * Pure parsers of the guest console, against a transcript recorded from the real fixture
 * (Debian 6.1 kernel, ethtool 6.1, QEMU 10 virtio-net with rss=on, 4 queues) and hand-made
 * edge cases. No root, no QEMU.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  ConsoleParser,
  DEFAULT_SCRIPT,
  fixtureQemuArgs,
  guestCmdline,
  parseConsoleBlocks,
  parseEthtoolChannels,
  parseEthtoolRss,
  parseEthtoolStats,
  type ConsoleEvent,
} from '../support/guest';
import { isVirtEbpfError } from '../../src/errors';
import { REPO } from '../harness';
import { HASH_TYPES_ALL, rssHashInput, toeplitz } from '../../src/rss';

const TRANSCRIPT = readFileSync(join(REPO, 'test', 'guest', 'data', 'console-6.1.0-56.txt'), 'utf8');

test('recorded transcript: blocks in order with labels, commands and exit codes; CRs gone', () => {
  const blocks = parseConsoleBlocks(TRANSCRIPT);
  assert.deepEqual(
    blocks.map((b) => [b.label, b.rc]),
    [['boot', 0], ['channels', 0], ['set-equal', 0], ['show-equal', 0], ['set-weight', 0], ['show-weight', 0], ['stats', 0], ['h1', 0], ['fail', 3]],
  );
  assert.equal(blocks[2].command, 'ethtool -X eth0 equal 2');
  assert.equal(blocks[2].output, '');
  assert.equal(blocks[8].output, 'oops');
  assert.ok(blocks.every((b) => !b.output.includes('\r')));
});

test('chunking does not matter: byte-by-byte feeding gives the same events', () => {
  const whole = new ConsoleParser();
  const a = [...whole.feed(TRANSCRIPT), ...whole.end()];
  const bytewise = new ConsoleParser();
  const b: ConsoleEvent[] = [];
  for (const ch of TRANSCRIPT) b.push(...bytewise.feed(ch));
  b.push(...bytewise.end());
  assert.deepEqual(b, a);
  assert.equal(a.filter((e) => e.kind === 'ready').length, 1);
  // The power-off block never ends: its BEGIN is reported, the kernel's last words are not lost.
  assert.deepEqual(a.filter((e) => e.kind === 'begin').at(-1), { kind: 'begin', label: 'poweroff', command: 'poweroff -f' });
});

test('kernel lines outside blocks are plain lines; a BEGIN inside an open block keeps the old lines', () => {
  const p = new ConsoleParser();
  const ev = [
    ...p.feed('[ 1.0] hello\n=== VEBPF BEGIN a $ x ===\npartial\n=== VEBPF BEGIN b $ y ===\nout\n=== VEBPF END a rc=0 ===\n'),
    ...p.feed('=== VEBPF END b rc=1 ===\n=== VEBPF POWEROFF ===\ntail-without-newline'),
    ...p.end(),
  ];
  assert.deepEqual(ev, [
    { kind: 'line', text: '[ 1.0] hello' },
    { kind: 'begin', label: 'a', command: 'x' },
    { kind: 'line', text: 'partial' },
    { kind: 'begin', label: 'b', command: 'y' },
    // An END with another label is output of the open block, not a marker.
    { kind: 'block', block: { label: 'b', command: 'y', output: 'out\n=== VEBPF END a rc=0 ===', rc: 1 } },
    { kind: 'poweroff' },
    { kind: 'line', text: 'tail-without-newline' },
  ]);
});

test('ethtool -x after "equal 2": 128 entries alternating 0,1, a 40-byte key, toeplitz', () => {
  const show = parseConsoleBlocks(TRANSCRIPT).find((b) => b.label === 'show-equal')!;
  const rss = parseEthtoolRss(show.output);
  assert.equal(rss.iface, 'eth0');
  assert.equal(rss.rings, 4);
  assert.equal(rss.size, 128);
  assert.deepEqual(rss.table, Array.from({ length: 128 }, (_, i) => i % 2));
  assert.equal(rss.key?.length, 80);
  assert.equal(rss.hashFunc, 'toeplitz');
  assert.deepEqual(rss.hashFuncs, { toeplitz: true, xor: false, crc32: false });
});

test('ethtool -x after "weight 3 1": 96 entries of queue 0 then 32 of queue 1', () => {
  const rss = parseEthtoolRss(parseConsoleBlocks(TRANSCRIPT).find((b) => b.label === 'show-weight')!.output);
  assert.deepEqual(rss.table, [...Array(96).fill(0), ...Array(32).fill(1)]);
});

test('ethtool -x without key or hash function (other drivers) and malformed tables', () => {
  const rss = parseEthtoolRss('RX flow hash indirection table for ens3 with 2 RX ring(s):\n    0:      0     1     0     1\nRSS hash key:\nOperation not supported\n');
  assert.deepEqual(rss, { iface: 'ens3', rings: 2, size: 4, table: [0, 1, 0, 1], hashFuncs: {} });
  assert.throws(() => parseEthtoolRss('Cannot get RX ring count: Operation not supported'), (e) => isVirtEbpfError(e, 'GUEST_OUTPUT'));
  assert.throws(
    () => parseEthtoolRss('RX flow hash indirection table for eth0 with 2 RX ring(s):\n    0:  0 1\n    8:  0 1\n'),
    (e) => isVirtEbpfError(e, 'GUEST_OUTPUT') && /row starts at 8, expected 2/.test(e.message),
  );
});

test('ethtool -S: per-queue packets for both naming schemes', () => {
  const stats = parseEthtoolStats(parseConsoleBlocks(TRANSCRIPT).find((b) => b.label === 'stats')!.output);
  assert.equal(stats.rxPackets.length, 4);
  assert.equal(stats.txPackets.length, 4);
  assert.equal(stats.stats['rx_queue_0_kicks'] > 0, true);
  const newer = parseEthtoolStats('NIC statistics:\n     rx0_packets: 5\n     rx1_packets: 7\n     tx0_packets: 1\n     rx_bytes: 99\n');
  assert.deepEqual([newer.rxPackets, newer.txPackets], [[5, 7], [1]]);
  assert.throws(() => parseEthtoolStats('no stats available'), (e) => isVirtEbpfError(e, 'GUEST_OUTPUT'));
});

test('ethtool -l: maximums and current counts, n/a left out', () => {
  const ch = parseEthtoolChannels(parseConsoleBlocks(TRANSCRIPT).find((b) => b.label === 'channels')!.output);
  assert.deepEqual(ch, { max: { combined: 4 }, current: { combined: 4 } });
});

test('kernel command line: base64 script, options, limits', () => {
  assert.equal(guestCmdline(), 'console=ttyS0 panic=1');
  const line = guestCmdline({ script: ['@a echo "x y" = $z', 'true'], then: 'poweroff', ip: '10.0.0.2/30', extra: ['quiet'] });
  const m = /^console=ttyS0 panic=1 vebpf\.script=(\S+) vebpf\.then=poweroff vebpf\.ip=10\.0\.0\.2\/30 quiet$/.exec(line);
  assert.ok(m, line);
  assert.equal(Buffer.from(m[1], 'base64').toString(), '@a echo "x y" = $z\ntrue\n');
  assert.throws(() => guestCmdline({ script: ['two\nlines'] }), (e) => isVirtEbpfError(e, 'USAGE'));
  assert.throws(() => guestCmdline({ script: ['@bad/label x'] }), (e) => isVirtEbpfError(e, 'USAGE'));
  assert.throws(() => guestCmdline({ script: Array(100).fill('echo a fairly long command line') }), (e) => isVirtEbpfError(e, 'USAGE') && /limit is 2047/.test(e.message));
  assert.throws(() => guestCmdline({ ip: '10.0.0.2' }), (e) => isVirtEbpfError(e, 'USAGE'));
});

test('the default script in TypeScript is the one scripts/guest/init runs', () => {
  const init = readFileSync(join(REPO, 'scripts', 'guest', 'init'), 'utf8');
  const m = /default_script='([^']*)'/.exec(init);
  assert.ok(m, 'init defines default_script');
  assert.deepEqual(m[1].split('\n'), [...DEFAULT_SCRIPT]);
});

test('QEMU argv: multiqueue tap and device, vectors 2n+2, vCPUs as given', () => {
  const argv = fixtureQemuArgs({ kernel: 'k', initrd: 'i', append: 'a b', tap: 'vebpfg3', queues: 4, rss: true, mac: '52:54:00:00:00:01', memoryMb: 256, smp: 4 });
  const at = (flag: string): string => argv[argv.indexOf(flag) + 1];
  assert.equal(at('-netdev'), 'tap,id=n0,ifname=vebpfg3,script=no,downscript=no,vhost=off,queues=4');
  assert.equal(at('-device'), 'virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,mq=on,vectors=10,rss=on');
  assert.equal(at('-append'), 'a b');
  assert.equal(at('-smp'), '4');
  assert.equal(at('-machine'), 'q35,accel=tcg');
});

test('reference Toeplitz hash matches the published RSS verification vectors', () => {
  const key = Buffer.from('6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa', 'hex');
  const ipv4L4Input = (src: string, dst: string, sport: number, dport: number): Buffer =>
    rssHashInput({ family: 4, proto: 'udp', src, dst, sport, dport }, HASH_TYPES_ALL)!.input;
  // Source 66.9.149.187:2794 → destination 161.142.100.80:1766.
  assert.equal(toeplitz(key, ipv4L4Input('66.9.149.187', '161.142.100.80', 2794, 1766)), 0x51ccc178);
  assert.equal(toeplitz(key, ipv4L4Input('66.9.149.187', '161.142.100.80', 2794, 1766).subarray(0, 8)), 0x323e8fc2);
  // Source 199.92.111.2:14230 → destination 65.69.140.83:4739.
  assert.equal(toeplitz(key, ipv4L4Input('199.92.111.2', '65.69.140.83', 14230, 4739)), 0xc626b0ea);
});
