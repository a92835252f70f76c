/**
 * The live side without QEMU: QEMU's own RSS program, loaded here as root, opened again by id,
 * fed crafted frames with BPF_PROG_TEST_RUN, and compared with the reference under several
 * configurations written into its maps by id — RSS on with various tables and hash types,
 * steering off, a short table, an all-zero key. Proves the frames, the map layouts and the
 * reference agree with the kernel's execution of the real program.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { loadRss, mapInfo, mapLookup, mapUpdate, openMapById, openProgById, progInfo, progTestRun, type RssContext } from '../../src/bpf';
import { encodeRssConfig, HASH_TYPE, HASH_TYPES_ALL, HASH_TYPES_LINUX_DEFAULT, keyToMapValue, MS_RSS_KEY, referenceQueue, type RssConfig } from '../../src/rss';
import { buildFrame, formatVerification, generateFlows, verifyProgram } from '../../src/verify';
import { readRssMaps } from '../../src/status';
import { isVirtEbpfError } from '../../src/errors';
import { needRoot, watchFds } from '../harness';
import { rssObject } from '../bpf/fixture';

let ctx: RssContext;
let checkFds: () => void;

before(async () => {
  needRoot('loads BPF and opens BPF objects by id');
  checkFds = watchFds();
  ctx = loadRss(await rssObject());
});

after(() => {
  ctx?.close();
  checkFds?.();
});

function configure(config: RssConfig, key: Buffer, table: readonly number[]): void {
  const [c, k, t] = ctx.fds.slice(1).map((f) => f.fd);
  mapUpdate(c, 0, encodeRssConfig(config));
  mapUpdate(k, 0, keyToMapValue(key));
  table.forEach((q, i) => {
    const v = Buffer.alloc(2);
    v.writeUInt16LE(q);
    mapUpdate(t, i, v);
  });
}

const ON: RssConfig = { redirect: true, populateHash: false, hashTypes: HASH_TYPES_LINUX_DEFAULT, indirectionsLen: 128, defaultQueue: 0 };
const flows = generateFlows(256, 7);

test('by id: the program and its maps are the ones loaded, and the program lists exactly those maps', () => {
  const prog = openProgById(ctx.progId);
  try {
    const info = progInfo(prog.fd);
    assert.equal(info.id, ctx.progId);
    assert.equal(info.type, 1, 'socket filter');
    assert.match(info.name, /^tun_rss_steerin/, 'the kernel keeps 15 characters of the name');
    assert.deepEqual([...info.mapIds].sort((a, b) => a - b), [...ctx.mapIds].sort((a, b) => a - b));
  } finally {
    prog.close();
  }
  const shapes = ctx.mapIds.map((id) => {
    const m = openMapById(id);
    try {
      const i = mapInfo(m.fd);
      return [i.id === id, i.valueSize, i.maxEntries, i.flags];
    } finally {
      m.close();
    }
  });
  assert.deepEqual(shapes, [
    [true, 10, 1, 0x400],
    [true, 40, 1, 0x400],
    [true, 2, 128, 0x400],
  ]);
});

test('a fresh context reads all zero: the program sends every flow to queue 0', () => {
  const raw = readRssMaps(ctx.mapIds as [number, number, number]);
  assert.ok(raw.config.equals(Buffer.alloc(10)) && raw.keyValue.equals(Buffer.alloc(40)));
  assert.deepEqual(raw.table, new Array(128).fill(0));
  const v = verifyProgram({ progId: ctx.progId, mapIds: ctx.mapIds as [number, number, number] }, flows.slice(0, 32));
  assert.equal(v.state, 'unconfigured');
  assert.equal(v.agreed, 32);
  assert.deepEqual(v.perQueue, [{ queue: 0, live: 32, reference: 32 }]);
  const text = formatVerification({ ...v, domain: { pid: 1, name: 'vm' }, nic: { id: 'net0' }, seed: 7 });
  assert.match(text, /^vm net0 \(prog \d+, seed 7, \d+ ms\): 32\/32 flows agree with the reference$/m);
  assert.match(text, /note: the guest has not configured RSS: every flow takes the default-queue path/);
});

const cases: Array<{ name: string; config: RssConfig; key?: Buffer; table: number[]; spread?: number }> = [
  { name: 'RSS on, 4 queues round robin, Linux default types', config: ON, table: Array.from({ length: 128 }, (_, i) => i % 4), spread: 4 },
  { name: 'RSS on, weight 3:1 table', config: ON, table: Array.from({ length: 128 }, (_, i) => (i < 96 ? 0 : 1)), spread: 2 },
  { name: 'all hash types, table of 8 queues', config: { ...ON, hashTypes: HASH_TYPES_ALL }, table: Array.from({ length: 128 }, (_, i) => (i * 5) % 8), spread: 8 },
  { name: 'addresses only (IPv4 | IPv6)', config: { ...ON, hashTypes: HASH_TYPE.IPv4 | HASH_TYPE.IPv6 }, table: Array.from({ length: 128 }, (_, i) => i % 4), spread: 4 },
  { name: 'TCP types only: UDP and others fall to the default queue', config: { ...ON, hashTypes: HASH_TYPE.TCPv4 | HASH_TYPE.TCPv6, defaultQueue: 3 }, table: Array.from({ length: 128 }, (_, i) => i % 3) },
  { name: 'a 7-entry table (modulo, not mask)', config: { ...ON, indirectionsLen: 7 }, table: [0, 1, 2, 3, 0, 1, 2, ...new Array(121).fill(9)] },
  { name: 'steering off: the default queue', config: { ...ON, redirect: false, defaultQueue: 2 }, table: Array.from({ length: 128 }, (_, i) => i % 4) },
  { name: 'no table length: past the table, the default queue', config: { ...ON, indirectionsLen: 0, defaultQueue: 1 }, table: Array.from({ length: 128 }, (_, i) => i % 4) },
  { name: 'an all-zero key: every hash is 0, entry 0 (not the default queue)', config: { ...ON, defaultQueue: 3 }, key: Buffer.alloc(40), table: [2, ...new Array(127).fill(1)] },
];

for (const c of cases) {
  test(`live program = reference on 256 flows: ${c.name}`, () => {
    configure(c.config, c.key ?? MS_RSS_KEY, c.table);
    const v = verifyProgram({ progId: ctx.progId, mapIds: ctx.mapIds as [number, number, number], queues: 4 }, flows);
    const bad = v.checks.filter((x) => !x.agree).slice(0, 3);
    assert.equal(v.agreed, 256, `disagreements: ${JSON.stringify(bad)}`);
    assert.equal(v.stable, true);
    if (c.spread) {
      // the flows really are spread: every queue of the table gets some
      assert.equal(v.perQueue.filter((q) => q.live > 0).length, c.spread, JSON.stringify(v.perQueue));
    }
  });
}

test('the key map holds the first word swapped: reading it back gives the same bytes QEMU would write', () => {
  configure(ON, MS_RSS_KEY, new Array(128).fill(0));
  const k = openMapById(ctx.mapIds[1]);
  try {
    assert.equal(mapLookup(k.fd, 0, 40).toString('hex'), 'da565a6d' + MS_RSS_KEY.subarray(4).toString('hex'));
  } finally {
    k.close();
  }
});

test('the published IPv4 vector steers through the live program as the reference says', () => {
  const table = Array.from({ length: 128 }, (_, i) => i % 5);
  configure(ON, MS_RSS_KEY, table);
  const flow = { family: 4 as const, proto: 'tcp' as const, src: '66.9.149.187', dst: '161.142.100.80', sport: 2794, dport: 1766 };
  const prog = openProgById(ctx.progId);
  try {
    const got = progTestRun(prog.fd, buildFrame(flow)).retval;
    const ref = referenceQueue(flow, { config: ON, key: MS_RSS_KEY, table });
    assert.equal(ref.hash, 0x51ccc178);
    assert.equal(got, table[0x51ccc178 % 128]);
    assert.equal(got, ref.queue);
  } finally {
    prog.close();
  }
});

test('a program id that does not exist is BPF_NOT_FOUND', () => {
  assert.throws(() => openProgById(0x7ffffff0), (e) => isVirtEbpfError(e, 'BPF_NOT_FOUND'));
  assert.throws(() => openMapById(0x7ffffff0), (e) => isVirtEbpfError(e, 'BPF_NOT_FOUND'));
});
