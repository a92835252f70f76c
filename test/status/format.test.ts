/**
 * Decoding and formatting, pure: raw map values as QEMU writes them → the decoded view, the
 * state a person needs to know, a histogram readable at a glance, and the JSON shape.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bar, classify, decodeRssView, formatHistogram, formatStatus, queueHistogram, statusJson, type StatusReport } from '../../src/status';
import { MS_RSS_KEY } from '../../src/rss';
import { EQUAL2, REPORT, ZERO } from './fixture';


test('decode: config fields, hash type names, the key in guest order, the table cut to its length', () => {
  const v = decodeRssView(EQUAL2);
  assert.deepEqual(v, {
    redirect: true,
    populateHash: false,
    hashTypes: 0x3f,
    hashTypeNames: ['IPv4', 'TCPv4', 'UDPv4', 'IPv6', 'TCPv6', 'UDPv6'],
    indirectionsLen: 128,
    defaultQueue: 0,
    key: MS_RSS_KEY.toString('hex'),
    table: EQUAL2.table,
  });
  const short = decodeRssView({ ...EQUAL2, config: Buffer.from('01003f00000008000300', 'hex') });
  assert.equal(short.indirectionsLen, 8);
  assert.equal(short.defaultQueue, 3);
  assert.deepEqual(short.table, [0, 1, 0, 1, 0, 1, 0, 1]);
});

test('states: all zero is "not configured"; populate_hash is software; redirect off; on', () => {
  assert.equal(classify(decodeRssView(ZERO), true).state, 'unconfigured');
  assert.match(classify(decodeRssView(ZERO), true).summary, /not configured yet.*ethtool -X/);
  // a zero config with a key already written is not "untouched"
  assert.equal(classify(decodeRssView({ ...ZERO, keyValue: EQUAL2.keyValue }), false).state, 'redirect-off');
  assert.equal(classify(decodeRssView({ ...EQUAL2, config: Buffer.from('01013f00000080000000', 'hex') }), false).state, 'software');
  const off = classify(decodeRssView({ ...EQUAL2, config: Buffer.from('00003f00000080000200', 'hex') }), false);
  assert.deepEqual([off.state, /queue 2/.test(off.summary)], ['redirect-off', true]);
  const on = classify(decodeRssView(EQUAL2), false);
  assert.equal(on.state, 'active');
  assert.equal(on.summary, 'on: 128 table entries, default queue 0, hash IPv4 TCPv4 UDPv4 IPv6 TCPv6 UDPv6 (0x3f)');
});

test('histogram: entries and shares per queue, idle queues of the tap included', () => {
  const weight31 = Array.from({ length: 128 }, (_, i) => (i < 96 ? 0 : 1));
  assert.deepEqual(queueHistogram(weight31, 4), [
    { queue: 0, entries: 96, share: 0.75 },
    { queue: 1, entries: 32, share: 0.25 },
    { queue: 2, entries: 0, share: 0 },
    { queue: 3, entries: 0, share: 0 },
  ]);
  assert.equal(queueHistogram([5], 2).length, 6, 'a queue past the tap count still shows');
  assert.deepEqual(queueHistogram([], 0), []);
});

test('bars: 32 cells at 100 %, eighths in between', () => {
  assert.equal(bar(1), '█'.repeat(32));
  assert.equal(bar(0.75), '█'.repeat(24));
  assert.equal(bar(0), '');
  assert.equal(bar(1 / 256), '▏');
  assert.equal(bar(0.5 + 1 / 64), '█'.repeat(16) + '▌');
  assert.deepEqual(formatHistogram(queueHistogram(Array.from({ length: 128 }, (_, i) => (i < 96 ? 0 : 1)), 3)), [
    `q0 ${'█'.repeat(24).padEnd(33)}96 (75%)`,
    `q1 ${'█'.repeat(8).padEnd(33)}32 (25%)`,
    `q2 ${''.padEnd(33)} 0 (0%)`,
  ]);
  assert.match(formatHistogram(queueHistogram([0, 1, 1], 2))[0], /1 \(33\.3%\)$/);
});


test('the human report: one block per domain, a line per fact, the histogram under the key', () => {
  assert.equal(
    formatStatus(REPORT),
    [
      'vm1  (uuid 7e43b05d-f9a6-4612-a5bc-0b6f29de939c, pid 4242, user libvirt-qemu)',
      '  net0  52:54:00:8d:c8:3b  tap vnet0  2 queues  netdev hostnet0',
      '    eBPF   prog 651  maps 539 540 541  via ebpf-rss-fds 40,41,42,43',
      "    steer  eBPF (certain): the tap runs the NIC's program on the frames it passes to QEMU",
      '    RSS    on: 128 table entries, default queue 0, hash IPv4 TCPv4 UDPv4 IPv6 TCPv6 UDPv6 (0x3f)',
      `    key    ${MS_RSS_KEY.toString('hex')}`,
      `    table  q0 ${'█'.repeat(16).padEnd(33)}64 (50%)`,
      `           q1 ${'█'.repeat(16).padEnd(33)}64 (50%)`,
      '  net1  52:54:00:8d:c8:3c  4 queues  vhost',
      '    RSS    asked for RSS but runs without eBPF: QEMU runs as uid 64055 without CAP_BPF and was given no ebpf-rss-fds; with vhost on, QEMU then does not offer RSS to the guest',
      '  net2  52:54:00:8d:c8:3d  tap vnet2  1 queue',
      '    steer  none (certain): rss is off on this NIC: QEMU offers the guest no RSS and the tap picks queues by its own flow hash',
    ].join('\n'),
  );
  assert.equal(formatStatus({ domains: [] }), 'no running QEMU has a virtio-net NIC with RSS');
  const { user: _user, ...byUid } = REPORT.domains[0];
  assert.match(formatStatus({ domains: [byUid] }), /^vm1 {2}\(uuid [^,]+, pid 4242, uid 64055\)$/m, 'a uid without an account name');
});

test('an unconfigured NIC shows no key or table; problems are listed', () => {
  const nic = { ...REPORT.domains[0].nics[0], ...classify(decodeRssView(ZERO), true), rss: decodeRssView(ZERO), histogram: queueHistogram([], 2), problems: ['something odd'] };
  const text = formatStatus({ domains: [{ ...REPORT.domains[0], nics: [nic], plainNics: [] }] });
  assert.match(text, /RSS {4}not configured yet/);
  assert.doesNotMatch(text, /key|table/);
  assert.match(text, /\n {4}! {6}something odd$/);
});

test('--json: the report as data, table as numbers, key as hex', () => {
  const j = JSON.parse(statusJson(REPORT)) as StatusReport;
  assert.deepEqual(j, JSON.parse(JSON.stringify(REPORT)));
  const nic = j.domains[0].nics[0];
  assert.equal(nic.rss!.key, MS_RSS_KEY.toString('hex'));
  assert.equal(nic.rss!.table.length, 128);
  assert.deepEqual(nic.histogram![1], { queue: 1, entries: 64, share: 0.5 });
});

test("rssOnAliases: the interfaces of libvirt's live XML whose driver says rss='on', by alias", async () => {
  const { rssOnAliases } = await import('../../src/status');
  const xml = `<domain type='qemu' id='3'><devices>
    <interface type='ethernet'><mac address='52:54:00:00:00:01'/><target dev='vnet0' managed='no'/><model type='virtio'/><driver queues='4' rss='on'/><alias name='net0'/></interface>
    <interface type='ethernet'><model type='virtio'/><driver queues='4'/><alias name='net1'/></interface>
    <interface type="ethernet"><model type="virtio"/><driver rss="on" queues="2"/><alias name="ua-extra"/></interface>
  </devices></domain>`;
  const r = rssOnAliases(xml);
  assert.deepEqual([...r.aliases].sort(), ['net0', 'ua-extra']);
  assert.equal(r.interfaces, 3);
  assert.deepEqual(rssOnAliases('<domain/>'), { aliases: new Set(), interfaces: 0 });
});
