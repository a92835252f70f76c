/**
 * The hot-plug shim (shims/qmp-preload.c, loaded into QEMU by the wrapper) with real QEMU
 * 10.0.2, a real broker and real taps, a monitor client of ours in libvirt's place: what passes
 * unchanged, what a hot-plugged RSS NIC gets, what strict and fallback do without a broker, a
 * reconnect, and lines that arrive in pieces or several at once. libvirt itself drives the same
 * path in test/hotplug/; here the client is ours so each rule is checked on its own.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { readCmdline } from '../../src/sys/proc';
import net from 'node:net';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { QmpClient } from '../../src/qmp';
import { lookupUser } from '../../src/sys/users';
import { createTap, type Tap } from '../support/guest/tap';
import { hotplugShimCheck } from '../../src/doctor';
import { mapsShowShim } from '../../src/doctor/hotplug-shim';
import { gone, needRoot, tempDir } from '../harness';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { startTestBroker, type TestBroker } from '../broker/support';
import { addNetdev as addNetdevTo, alive, bpfFdsOf, sleep, startDomainQemu, until, type DomainQemu } from './support';

const dir = tempDir('virt-ebpf-hotplug-shim-');
const stateDir = join(dir.path, 'domains');
const qemuUser = lookupUser('libvirt-qemu');
let broker: TestBroker;
const taps: Tap[] = [];
const qemus: DomainQemu[] = [];
const clients: QmpClient[] = [];

before(async () => {
  needRoot('the broker loads BPF, taps are created, QEMU runs as libvirt-qemu');
  mkdirSync(stateDir, { recursive: true });
  broker = await startTestBroker({ pool: { size: 1 } }, { cacheDir: join(dir.path, 'cache'), hookEnv: { stateDir } });
});

after(async () => {
  for (const c of clients) c.close();
  for (const q of qemus) await q.kill();
  for (const t of taps) await t.remove();
  await broker?.close();
  dir.remove();
});

async function domain(policy: 'strict' | 'fallback' = 'strict', brokerSocket?: string, hotplug = true): Promise<{ q: DomainQemu; uuid: string; name: string }> {
  const uuid = randomUUID();
  const name = `hs-${uuid.slice(0, 8)}`;
  writeFileSync(join(stateDir, `${uuid}.json`), JSON.stringify({ name, uuid, policy, hotplug }));
  const q = await startDomainQemu({ dir: dir.path, uid: qemuUser.uid, gid: qemuUser.gid, uuid, name, broker: brokerSocket ?? broker.socket, stateDir });
  qemus.push(q);
  return { q, uuid, name };
}

async function connect(q: DomainQemu): Promise<QmpClient> {
  const c = await QmpClient.connect(q.monitor, { timeoutMs: 10_000, commandTimeoutMs: 20_000 }).catch((e: Error) => {
    throw new Error(`${e.message}; QEMU (pid ${q.pid}) said: ${q.log().trim() || 'nothing'}`);
  });
  clients.push(c);
  return c;
}

function addNetdev(c: QmpClient, id: string, queues: number): Promise<number> {
  return addNetdevTo(c, id, queues, taps);
}

function rssNic(id: string, netdev: string, bus: string, extra: Record<string, unknown> = {}) {
  return { driver: 'virtio-net-pci', rss: true, mq: true, vectors: 10, netdev, id, bus, addr: '0x0', ...extra };
}

async function devices(c: QmpClient): Promise<string[]> {
  const list = await c.execute<Array<{ name: string }>>('qom-list', { path: '/machine/peripheral' });
  return list.map((p) => p.name).filter((n) => n.startsWith('net'));
}

const shimLoaded = (pid: number) => mapsShowShim(readFileSync(`/proc/${pid}/maps`, 'utf8'));

test('pass-through: the shim is in QEMU, the monitor is libvirt\'s own socket; greeting, commands, events and fds pass unchanged', async () => {
  const { q } = await domain();
  const c = await connect(q);
  assert.ok(shimLoaded(q.pid), 'the wrapper loaded the shim into QEMU');
  assert.ok(readCmdline(q.pid)?.includes('socket,id=charmonitor,fd=30,server=on,wait=off'), 'QEMU listens on libvirt\'s socket as libvirt asked');
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

test('device_add of a virtio-net NIC with rss on: the broker\'s program and maps become QEMU\'s fds, named by number in the line; others untouched', async () => {
  const { q } = await domain();
  const c = await connect(q);
  await addNetdev(c, 'hostnet1', 4);
  await c.execute('device_add', rssNic('net1', 'hostnet1', 'pci.1'));
  assert.deepEqual(bpfFdsOf(q.pid), { progs: 1, maps: 3 }, 'one program and three maps for the RSS NIC');
  assert.match(q.log(), /device_add net1: eBPF RSS fds \d+,\d+,\d+,\d+/);

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

test('a failing device_add closes the fds it was given (QEMU keeps none of them)', async () => {
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

/** How many sockets a process holds (QEMU's monitor connections, and the shim's to the broker). */
function socketsOf(pid: number): number {
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:')) n++;
    } catch {
      /* closed meanwhile */
    }
  }
  return n;
}

test('a netdev_add connects to the broker early: the rss device_add after it plans on that connection, another line lets it go', async () => {
  // QEMU finds the broker through a link that goes once the early connection is made: the
  // device_add can then reach the broker only on that connection.
  const link = join(dir.path, `early-${randomUUID().slice(0, 8)}.sock`);
  symlinkSync(broker.socket, link);
  const { q } = await domain('strict', link);
  const c = await connect(q);
  const before = socketsOf(q.pid);
  await addNetdev(c, 'hostnet1', 2);
  await until('the shim\'s early connection', () => socketsOf(q.pid) === before + 1, 5_000, 10);
  rmSync(link);
  await c.execute('device_add', rssNic('net1', 'hostnet1', 'pci.1'));
  assert.deepEqual(bpfFdsOf(q.pid), { progs: 1, maps: 3 }, 'the device-plan went on the connection made at netdev_add');
  assert.equal(socketsOf(q.pid), before, 'that connection closed with its reply');

  symlinkSync(broker.socket, link);
  await addNetdev(c, 'hostnet2', 2);
  await until('the shim\'s early connection', () => socketsOf(q.pid) === before + 1, 5_000, 10);
  await c.execute('device_add', { driver: 'virtio-net-pci', mq: true, netdev: 'hostnet2', id: 'net2', bus: 'pci.2', addr: '0x0' });
  assert.equal(socketsOf(q.pid), before, 'a line the broker is not asked about lets the early connection go');
  assert.deepEqual(bpfFdsOf(q.pid), { progs: 1, maps: 3 });
  rmSync(link);
});

test('an early connection the broker let go (its idle timeout) is not a failure: the device-plan goes on a new connection', async () => {
  const idle = await startTestBroker({ pool: { size: 1 }, limits: { idleTimeoutMs: 100 } }, { cacheDir: join(dir.path, 'cache'), hookEnv: { stateDir } });
  try {
    const { q } = await domain('strict', idle.socket);
    const c = await connect(q);
    await addNetdev(c, 'hostnet1', 2);
    await sleep(1_500); // the broker closes a connection idle for 100 ms at its next check (at most 1 s)
    await c.execute('device_add', rssNic('net1', 'hostnet1', 'pci.1'));
    assert.deepEqual(bpfFdsOf(q.pid), { progs: 1, maps: 3 });
    assert.doesNotMatch(q.log(), /refused|cannot reach/);
  } finally {
    await idle.close();
  }
});

/** Holds the account's connection slots with unfinished lines, each renewed before the broker may take it for a newcomer, until told on stdin. */
const SLOT_HOLDER = `
import select, socket, sys, time
def fill():
    socks = []
    for _ in range(int(sys.argv[2])):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sys.argv[1])
        s.send(b'{"v":1')
        socks.append(s)
    return socks
socks = fill()
print('ready', flush=True)
while not select.select([sys.stdin], [], [], 0.5)[0]:
    fresh = fill()
    for s in socks:
        s.close()
    socks = fresh
`;

test('an early connection the broker refused when it came (the account full) does not refuse the device_add after it', async () => {
  const tight = await startTestBroker({ pool: { size: 1 }, limits: { maxConnectionsPerUid: 2, maxConnectionsPerProcess: 2 } }, { cacheDir: join(dir.path, 'cache'), hookEnv: { stateDir } });
  try {
    const { q } = await domain('strict', tight.socket);
    const c = await connect(q);
    const holder = spawn('setpriv', ['--reuid', String(qemuUser.uid), '--regid', String(qemuUser.gid), '--clear-groups', '/usr/bin/python3', '-c', SLOT_HOLDER, tight.socket, '2'], { stdio: ['pipe', 'pipe', 'inherit'] });
    try {
      await once(holder.stdout!, 'data');
      await addNetdev(c, 'hostnet1', 2); // the shim's early connection is refused: the account's 2 slots are held
    } finally {
      holder.stdin!.end();
      await gone(holder);
    }
    await c.execute('device_add', rssNic('net1', 'hostnet1', 'pci.1'));
    assert.deepEqual(bpfFdsOf(q.pid), { progs: 1, maps: 3 }, 'the device-plan went on a new connection once the refusal was read');
  } finally {
    await tight.close();
  }
});

test('broker down, fallback: device_add goes through unchanged (QEMU\'s own RSS), with a warning in the log', async () => {
  const { q } = await domain('fallback', join(dir.path, 'no-broker.sock'));
  const c = await connect(q);
  await addNetdev(c, 'hostnet1', 2);
  await c.execute('device_add', rssNic('net1', 'hostnet1', 'pci.1'));
  assert.deepEqual(await devices(c), ['net1']);
  assert.deepEqual(bpfFdsOf(q.pid), { progs: 0, maps: 0 });
  assert.match(q.log(), /policy is fallback: net1 is added without eBPF RSS/);
  // A virtio-net device_add that says nothing of rss is not the broker's to plan outside the
  // host-wide mode: it is not even sent (nothing about it in the log, no wait for a broker).
  await addNetdev(c, 'hostnet2', 2);
  await c.execute('device_add', { driver: 'virtio-net-pci', mq: true, netdev: 'hostnet2', id: 'net2', bus: 'pci.2', addr: '0x0' });
  assert.deepEqual((await devices(c)).sort(), ['net1', 'net2']);
  assert.doesNotMatch(q.log(), /net2/);
});

test('doctor sees the shim in every running domain with hot-plug on, and names one without it', async () => {
  const { q } = await domain();
  await connect(q);
  const off = await domain('strict', undefined, false);
  await connect(off.q);
  assert.equal(shimLoaded(off.q.pid), false, 'hotplug off: QEMU runs without the shim');
  const ok = hotplugShimCheck(stateDir);
  assert.equal(ok.verdict, 'ok', ok.detail);
  // The same QEMU, now recorded as hot-plug on (as after `enable --hotplug on` without a restart).
  writeFileSync(join(stateDir, `${off.uuid}.json`), JSON.stringify({ name: off.name, uuid: off.uuid, policy: 'strict', hotplug: true }));
  const bad = hotplugShimCheck(stateDir);
  assert.equal(bad.verdict, 'fail');
  assert.match(bad.detail, new RegExp(`${off.name} \\(QEMU pid ${off.q.pid}\\)`));
  assert.doesNotMatch(bad.detail, new RegExp(`QEMU pid ${q.pid}\\)`));
  assert.match(bad.fix ?? '', /start it again/);
});

/** A domain with two tap netdevs (hostnet1, hostnet2) added by a first connection, which then goes. */
async function twoNetdevsThenGone(): Promise<DomainQemu> {
  const { q } = await domain();
  const c = await connect(q);
  await addNetdev(c, 'hostnet1', 2);
  await addNetdev(c, 'hostnet2', 2);
  c.close();
  await sleep(100);
  return q;
}

test('the client reconnects (libvirtd restart): QEMU greets it again and hot-plug works on the new connection', async () => {
  const q = await twoNetdevsThenGone();
  const c2 = await connect(q);
  assert.equal(c2.greeting.version.major, 10);
  await c2.execute('device_add', rssNic('net1', 'hostnet1', 'pci.1'));
  assert.deepEqual(bpfFdsOf(q.pid), { progs: 1, maps: 3 });
  c2.close();
  await sleep(100);
  const c3 = await connect(q);
  await c3.execute('device_add', rssNic('net2', 'hostnet2', 'pci.2'));
  assert.deepEqual(bpfFdsOf(q.pid), { progs: 2, maps: 6 }, 'a third connection too');
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

test('lines that are not commands (blank lines) pass; the next connection gets its own replies', async () => {
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

test('a device_add that arrives in pieces, and commands that arrive several in one write', async () => {
  const q = await twoNetdevsThenGone();
  const add = (id: string, netdev: string, bus: string, rid: string) => JSON.stringify({ execute: 'device_add', arguments: rssNic(id, netdev, bus), id: rid }) + '\r\n';
  const one = add('net1', 'hostnet1', 'pci.1', 'split');
  const s = net.connect(q.monitor);
  let buf = '';
  s.on('data', (d) => (buf += d.toString('utf8')));
  await until('the raw session to connect', () => !s.connecting, 5_000, 10);
  s.write('{"execute":"qmp_capabilities"}\r\n');
  s.write(one.slice(0, 40));
  await sleep(300); // QEMU waits for the rest of the line before it reads any of it
  s.write(one.slice(40));
  await until('the split device_add\'s reply', () => buf.includes('"split"'), 10_000, 10);
  assert.match(buf, /"return": \{\}, "id": "split"/);
  s.write('{"execute":"query-status","id":"p1"}\r\n' + add('net2', 'hostnet2', 'pci.2', 'p2') + '{"execute":"query-name","id":"p3"}\r\n');
  await until('three replies', () => buf.includes('"p3"'), 10_000, 10);
  s.destroy();
  assert.match(buf, /"id": "p1"[\s\S]*"return": \{\}, "id": "p2"[\s\S]*"id": "p3"/, 'in order, each answered');
  assert.deepEqual(bpfFdsOf(q.pid), { progs: 2, maps: 6 }, 'both RSS NICs got their fds');
  assert.match(q.log(), /device_add net2: eBPF RSS fds/);
});

test('an RSS NIC on the command line: the wrapper shim puts the broker\'s fds in; every other argument passes byte for byte', async () => {
  const tap = await createTap({ user: 'libvirt-qemu' });
  taps.push(tap);
  const uuid = randomUUID();
  const name = `hs-ünï"q\\${uuid.slice(0, 4)}`;
  writeFileSync(join(stateDir, `${uuid}.json`), JSON.stringify({ name, uuid, policy: 'strict', hotplug: true }));
  const netdev = JSON.stringify({ type: 'tap', id: 'hn0', ifname: tap.name, script: 'no', downscript: 'no', vhost: false, queues: 4 });
  const device = { driver: 'virtio-net-pci', netdev: 'hn0', id: 'net0', mq: true, vectors: 10, rss: true, bus: 'pci.1', addr: '0x0' };
  const q = await startDomainQemu({ dir: dir.path, uid: qemuUser.uid, gid: qemuUser.gid, uuid, name, broker: broker.socket, stateDir, extra: ['-netdev', netdev, '-device', JSON.stringify(device)] });
  qemus.push(q);
  await connect(q);
  assert.deepEqual(bpfFdsOf(q.pid), { progs: 1, maps: 3 });
  const argv = readCmdline(q.pid)!;
  assert.equal(argv[argv.indexOf('-name') + 1], `guest=${name},debug-threads=on`, 'a name with UTF-8, a quote and a backslash is untouched');
  assert.equal(argv[argv.indexOf('-netdev') + 1], netdev);
  const dev = JSON.parse(argv[argv.indexOf('-device', argv.indexOf('-netdev')) + 1]) as Record<string, unknown>;
  const fds = dev['ebpf-rss-fds'] as string[];
  assert.equal(fds.length, 4);
  assert.deepEqual({ ...dev, 'ebpf-rss-fds': undefined }, { ...device, 'ebpf-rss-fds': undefined }, 'the device otherwise as it was');
  for (const f of fds) assert.match(readlinkSync(`/proc/${q.pid}/fd/${f}`), /^anon_inode:bpf-(prog|map)$/, `fd ${f} is QEMU's eBPF object`);
});
