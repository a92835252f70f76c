/**
 * The QMP interposer (shims/interposer.py) between a monitor client and real QEMU 10.0.2, with
 * a real broker and real taps: what passes through unchanged, what a hot-plugged RSS NIC gets,
 * what strict and fallback do without a broker, and that no kill -9 of ours and no reconnect
 * ever costs the client its connection. libvirt itself drives the same path in
 * test/hotplug/; here the client is ours so each rule is checked on its own.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { QmpClient } from '../../src/qmp';
import { lookupUser } from '../../src/sys/users';
import type { Tap } from '../../src/guest/tap';
import { interposerCheck } from '../../src/doctor';
import { needRoot, tempDir } from '../harness';
import { startTestBroker, type TestBroker } from '../broker/support';
import { addNetdev as addNetdevTo, alive, bpfFdsOf, interposerPids, interposerReady, replaced, sleep, startDomainQemu, until, type DomainQemu } from './support';

const dir = tempDir('virt-ebpf-interposer-');
const stateDir = join(dir.path, 'domains');
const qemuUser = lookupUser('libvirt-qemu');
let broker: TestBroker;
const taps: Tap[] = [];
const qemus: DomainQemu[] = [];
const clients: QmpClient[] = [];

before(async () => {
  needRoot('the broker loads BPF, taps are created, QEMU runs as libvirt-qemu');
  mkdirSync(stateDir, { recursive: true });
  broker = await startTestBroker({ pool: { size: 1 } }, { cacheDir: join(dir.path, 'cache') });
});

after(async () => {
  for (const c of clients) c.close();
  for (const q of qemus) await q.kill();
  for (const t of taps) await t.remove();
  await broker?.close();
  dir.remove();
});

async function domain(policy: 'strict' | 'fallback' = 'strict', brokerSocket?: string): Promise<{ q: DomainQemu; uuid: string; name: string }> {
  const uuid = randomUUID();
  const name = `ip-${uuid.slice(0, 8)}`;
  writeFileSync(join(stateDir, `${uuid}.json`), JSON.stringify({ name, uuid, policy, hotplug: true }));
  const q = await startDomainQemu({ dir: dir.path, uid: qemuUser.uid, gid: qemuUser.gid, uuid, name, broker: brokerSocket ?? broker.socket, stateDir });
  qemus.push(q);
  return { q, uuid, name };
}

async function connect(q: DomainQemu): Promise<QmpClient> {
  const c = await QmpClient.connect(q.monitor, { timeoutMs: 10_000, commandTimeoutMs: 20_000 });
  clients.push(c);
  return c;
}

function addNetdev(c: QmpClient, id: string, queues: number): Promise<void> {
  return addNetdevTo(c, id, queues, taps);
}

function rssNic(id: string, netdev: string, bus: string, extra: Record<string, unknown> = {}) {
  return { driver: 'virtio-net-pci', rss: true, mq: true, vectors: 10, netdev, id, bus, addr: '0x0', ...extra };
}

async function devices(c: QmpClient): Promise<string[]> {
  const list = await c.execute<Array<{ name: string }>>('qom-list', { path: '/machine/peripheral' });
  return list.map((p) => p.name).filter((n) => n.startsWith('net'));
}

test('pass-through: QEMU greeting, commands, events and the fds the client sends reach QEMU unchanged', async () => {
  const { q } = await domain();
  const c = await connect(q);
  await interposerReady(q.pid);
  assert.equal(c.greeting.version.major, 10, 'the greeting is QEMU\'s own');
  const st = await c.execute<{ status: string }>('query-status');
  assert.equal(st.status, 'prelaunch');
  const resumed = c.waitForEvent('RESUME', 10_000);
  await c.execute('cont');
  await resumed;
  await addNetdev(c, 'hostnet0', 2);
  const netdevs = await c.execute<string>('human-monitor-command', { 'command-line': 'info network' });
  assert.match(netdevs, /hostnet0/, 'netdev_add with the tap fds the client passed by getfd worked');
  assert.deepEqual(bpfFdsOf(q.pid), { progs: 0, maps: 0 }, 'nothing was added to QEMU');
});

test('device_add of a virtio-net NIC with rss on: the broker\'s program and maps go to QEMU under getfd names; others untouched', async () => {
  const { q } = await domain();
  const c = await connect(q);
  await addNetdev(c, 'hostnet1', 4);
  await c.execute('device_add', rssNic('net1', 'hostnet1', 'pci.1'));
  assert.deepEqual(bpfFdsOf(q.pid), { progs: 1, maps: 3 }, 'one program and three maps for the RSS NIC');
  assert.match(q.log(), /device_add net1: eBPF RSS fds virt-ebpf-hp-net1-/);

  await addNetdev(c, 'hostnet2', 2);
  await c.execute('device_add', { driver: 'virtio-net-pci', mq: true, netdev: 'hostnet2', id: 'net2', bus: 'pci.2', addr: '0x0' });
  assert.deepEqual(bpfFdsOf(q.pid), { progs: 1, maps: 3 }, 'a NIC without rss is left alone');

  await addNetdev(c, 'hostnet3', 2);
  await assert.rejects(c.execute('device_add', { ...rssNic('net3', 'hostnet3', 'pci.3'), 'ebpf-rss-fds': ['nope-0', 'nope-1', 'nope-2', 'nope-3'] }),
    /nope-0/, 'a device_add that names its own fds reaches QEMU as it is (QEMU refuses unknown names)');

  for (const [i, bus] of [[4, 'pci.4'], [5, 'pci.5']] as const) {
    await addNetdev(c, `hostnet${i}`, 2);
    await c.execute('device_add', rssNic(`net${i}`, `hostnet${i}`, bus));
  }
  assert.deepEqual(bpfFdsOf(q.pid), { progs: 3, maps: 9 }, 'three RSS NICs, four fds each');
  assert.deepEqual((await devices(c)).sort(), ['net1', 'net2', 'net4', 'net5']);
  const leftover = await c.execute<string>('human-monitor-command', { 'command-line': 'info network' });
  assert.match(leftover, /net1/);
});

test('a failing device_add closes the fds it was given (QEMU keeps no named eBPF fd)', async () => {
  const { q } = await domain();
  const c = await connect(q);
  await assert.rejects(c.execute('device_add', rssNic('net1', 'no-such-netdev', 'pci.1')), /no-such-netdev|netdev/i);
  await until('QEMU to drop the unused eBPF fds', () => bpfFdsOf(q.pid).progs === 0 && bpfFdsOf(q.pid).maps === 0, 5_000);
});

test('broker down, strict: device_add fails with our one-line message, QEMU keeps running, nothing is added', async () => {
  const { q } = await domain('strict', join(dir.path, 'no-broker.sock'));
  const c = await connect(q);
  await addNetdev(c, 'hostnet1', 2);
  await assert.rejects(c.execute('device_add', rssNic('net1', 'hostnet1', 'pci.1')), (e: Error) => {
    assert.match(e.message, /virt-ebpf: cannot reach the virt-ebpf broker .*BROKER_UNREACHABLE.*virt-ebpf broker/);
    return true;
  });
  assert.equal((await c.execute<{ status: string }>('query-status')).status, 'prelaunch');
  assert.deepEqual(await devices(c), []);
  assert.ok(alive(q.pid));
});

test('broker down, fallback: device_add goes through unchanged (QEMU\'s own RSS), with a warning in the log', async () => {
  const { q } = await domain('fallback', join(dir.path, 'no-broker.sock'));
  const c = await connect(q);
  await addNetdev(c, 'hostnet1', 2);
  await c.execute('device_add', rssNic('net1', 'hostnet1', 'pci.1'));
  assert.deepEqual(await devices(c), ['net1']);
  assert.deepEqual(bpfFdsOf(q.pid), { progs: 0, maps: 0 });
  assert.match(q.log(), /policy is fallback: net1 is added without eBPF RSS/);
});

test('kill -9 of the relay, then of the keeper: the client stays connected, a new one takes over, hot-plug keeps working', async () => {
  const { q } = await domain();
  const c = await connect(q);
  const first = await interposerReady(q.pid);
  assert.equal(interposerCheck().verdict, 'ok');
  process.kill(first.relay, 'SIGKILL');
  await replaced(q.pid, 'relay', first.relay);
  assert.equal((await c.execute<{ status: string }>('query-status')).status, 'prelaunch', 'commands still answered');
  const second = await interposerReady(q.pid);
  assert.equal(second.keeper, first.keeper, 'the keeper started the new relay');
  process.kill(second.keeper, 'SIGKILL');
  await replaced(q.pid, 'keeper', second.keeper);
  await addNetdev(c, 'hostnet1', 2);
  await c.execute('device_add', rssNic('net1', 'hostnet1', 'pci.1'));
  assert.deepEqual(bpfFdsOf(q.pid), { progs: 1, maps: 3 });
  // Both at once: no relay is left, yet the connection is not closed (QEMU holds copies).
  const third = await interposerReady(q.pid);
  process.kill(third.relay, 'SIGKILL');
  process.kill(third.keeper, 'SIGKILL');
  await sleep(300);
  assert.ok(alive(q.pid), 'QEMU lives');
  assert.equal(c.closed, false, 'the client never saw EOF');
  const doctor = interposerCheck();
  assert.equal(doctor.verdict, 'fail', 'doctor names the unserved monitor');
  assert.match(doctor.detail, new RegExp(`QEMU pid ${q.pid}\\)`));
  assert.match(doctor.fix ?? '', /virsh destroy/);
});

test('the client reconnects (libvirtd restart): a greeting again, qmp_capabilities answered, hot-plug works on the new connection', async () => {
  const { q } = await domain();
  const c1 = await connect(q);
  await addNetdev(c1, 'hostnet1', 2);
  c1.close();
  await sleep(100);
  const c2 = await connect(q);
  assert.equal(c2.greeting.version.major, 10);
  assert.equal((await c2.execute<{ status: string }>('query-status')).status, 'prelaunch');
  await c2.execute('device_add', rssNic('net1', 'hostnet1', 'pci.1'));
  assert.deepEqual(bpfFdsOf(q.pid), { progs: 1, maps: 3 });
  // The relay restarted after the reconnect still knows the greeting.
  process.kill((await interposerReady(q.pid)).relay, 'SIGKILL');
  await sleep(300);
  c2.close();
  await sleep(100);
  const c3 = await connect(q);
  assert.equal(c3.greeting.version.major, 10);
  assert.equal((await c3.execute<{ status: string }>('query-status')).status, 'prelaunch');
});

/** A raw monitor connection: lines in, lines out, nothing checked (what a sloppy client sends). */
async function rawSession(path: string, lines: string[], wantReplies: number): Promise<string[]> {
  const s = net.connect(path);
  let buf = '';
  s.on('data', (c) => (buf += c.toString('utf8')));
  await until('the raw session to connect', () => !s.connecting, 5_000, 10);
  for (const l of lines) s.write(l);
  await until(`${wantReplies} lines back`, () => buf.split('\n').filter(Boolean).length >= wantReplies, 10_000, 10);
  s.destroy();
  return buf.split('\n').filter(Boolean);
}

test('lines that are not commands (blank lines) do not shift which reply goes to which libvirt connection', async () => {
  const { q } = await domain();
  const got = await rawSession(q.monitor, ['{"execute":"qmp_capabilities"}\r\n', '\r\n', '   \r\n', '\r\n', '{"execute":"query-status","id":"raw-1"}\r\n'], 3);
  assert.match(got[0], /"QMP"/);
  assert.match(got[2], /"raw-1"/);
  await sleep(100);
  // A reconnected client must get its own replies: no stale entry may swallow them.
  const c = await connect(q);
  assert.equal((await c.execute<{ status: string }>('query-status')).status, 'prelaunch');
  assert.equal((await c.execute<{ status: string }>('query-status')).status, 'prelaunch');
});

test('QEMU exits: relay and keeper exit with it', async () => {
  const { q } = await domain();
  const c = await connect(q);
  await interposerReady(q.pid);
  await c.execute('quit').catch(() => {});
  await until('QEMU to exit', () => !alive(q.pid), 10_000);
  await until('the interposer to exit', () => {
    const p = interposerPids(q.pid);
    return p.relay.length === 0 && p.keeper.length === 0;
  }, 10_000);
});
