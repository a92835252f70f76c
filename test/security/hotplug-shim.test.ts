/**
 * The hot-plug shim inside QEMU never stalls QEMU for long and never leaks (issue: "the hot-plug
 * shim can stall QEMU"), with real QEMU 10.0.2 started as libvirt starts it (the wrapper shim,
 * libvirt's listening monitor socket) and a real broker:
 * - a broker that does not answer holds up this one device_add, boundedly, and nothing else of
 *   QEMU: its human monitor (main loop) answers meanwhile, even with an earlier device_add's fds
 *   still tracked;
 * - a line that arrives in pieces costs no CPU while QEMU waits for the rest;
 * - fds handed in for a device_add whose connection went before the reply are closed;
 * - a refusal whose reason has many characters to escape still reaches QEMU as valid JSON.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { QmpClient } from '../../src/qmp';
import { lookupUser } from '../../src/sys/users';
import type { Tap } from '../support/guest/tap';
import { PYTHON, QEMU, REPO, needRoot, tempDir } from '../harness';
import { startTestBroker, type TestBroker } from '../broker/support';
import { addNetdev, alive, bpfFdsOf, sleep, startDomainQemu, until, type DomainQemu } from '../hotplug-shim/support';

const dir = tempDir('virt-ebpf-sec-shim-');
const stateDir = join(dir.path, 'domains');
const qemuUser = lookupUser('libvirt-qemu');
let broker: TestBroker;
const taps: Tap[] = [];
const qemus: DomainQemu[] = [];
const clients: QmpClient[] = [];
const children: ChildProcess[] = [];

before(async () => {
  needRoot('the broker loads BPF, taps are created, QEMU runs as libvirt-qemu');
  mkdirSync(stateDir, { recursive: true });
  broker = await startTestBroker({ pool: { size: 1 } }, { cacheDir: join(dir.path, 'cache'), hookEnv: { stateDir } });
});

after(async () => {
  for (const c of clients) c.close();
  for (const q of qemus) await q.kill();
  for (const ch of children) ch.kill('SIGKILL');
  for (const t of taps) await t.remove();
  await broker?.close();
  dir.remove();
});

async function domain(opts: { broker?: string; extra?: string[]; real?: string } = {}): Promise<DomainQemu> {
  const uuid = randomUUID();
  const name = `sec-${uuid.slice(0, 8)}`;
  // What the hook records at prepare for an enabled domain (the wrapper then asks the broker
  // only for what the command line needs, here nothing: it sends one hello, which binds the
  // process to its domain before QEMU runs).
  writeFileSync(join(stateDir, `${uuid}.json`), JSON.stringify({ name, uuid, policy: 'strict', hotplug: true }));
  const q = await startDomainQemu({ dir: dir.path, uid: qemuUser.uid, gid: qemuUser.gid, uuid, name, broker: opts.broker ?? broker.socket, stateDir, extra: opts.extra, real: opts.real });
  qemus.push(q);
  return q;
}

async function connect(q: DomainQemu): Promise<QmpClient> {
  const c = await QmpClient.connect(q.monitor, { timeoutMs: 10_000, commandTimeoutMs: 30_000 }).catch((e: Error) => {
    throw new Error(`${e.message}; QEMU said: ${q.log().trim() || 'nothing'}`);
  });
  clients.push(c);
  return c;
}

function rssNic(id: string, netdev: string, bus: string) {
  return { driver: 'virtio-net-pci', rss: true, mq: true, vectors: 6, netdev, id, bus, addr: '0x0' };
}

/** A raw connection to a unix socket; collects what comes back. */
async function raw(path: string): Promise<{ s: net.Socket; got: () => string }> {
  const s = net.connect(path);
  let buf = '';
  s.on('data', (d) => (buf += d.toString('utf8')));
  s.on('error', () => {});
  await until(`a connection to ${path}`, () => !s.connecting, 5_000, 10);
  return { s, got: () => buf };
}

/** CPU time (user + system) a process has used, in seconds. */
function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

test('a broker that never answers holds up that device_add boundedly, and nothing else of QEMU: its main loop answers meanwhile', async () => {
  const stub = join(dir.path, 'stub.sock');
  // It relays two requests: the wrapper's hello at start and the first device_add.
  const child = spawn(PYTHON, [join(REPO, 'test/security/stub-broker.py'), stub, broker.socket, '2'], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  let stubOut = '';
  child.stdout!.on('data', (d) => (stubOut += d));
  await until('the stub broker', () => stubOut.includes('ready'), 10_000, 20);
  const hmpDir = join(dir.path, 'hmp');
  mkdirSync(hmpDir, { recursive: true });
  chownSync(hmpDir, qemuUser.uid, qemuUser.gid); // QEMU binds it, as the QEMU account
  const hmp = join(hmpDir, 'hmp.sock');
  const q = await domain({ broker: stub, extra: ['-monitor', `unix:${hmp},server=on,wait=off`] });
  const c = await connect(q);
  await addNetdev(c, 'hostnet1', 2, taps);
  await addNetdev(c, 'hostnet2', 2, taps);
  c.close(); // QEMU's monitor takes one client at a time
  await sleep(100);
  // An RSS device_add the stub relays to the broker: QEMU takes its fds. Its id is one QEMU
  // writes back spelled otherwise ("a\/b" comes back as "a/b").
  const first = await raw(q.monitor);
  first.s.write('{"execute":"qmp_capabilities"}\n' + JSON.stringify({ execute: 'device_add', arguments: rssNic('net1', 'hostnet1', 'pci.1') }).replace(/}$/, ',"id":"a\\/b"}') + '\n');
  await until('the first device_add\'s reply', () => first.got().includes('"a/b"'), 15_000, 20);
  assert.deepEqual(bpfFdsOf(q.pid), { progs: 1, maps: 3 });
  first.s.destroy();
  await sleep(100);
  // The second one waits for a broker that never answers.
  const second = await raw(q.monitor);
  second.s.write('{"execute":"qmp_capabilities"}\n' + JSON.stringify({ execute: 'device_add', arguments: rssNic('net2', 'hostnet2', 'pci.2'), id: 'stuck' }) + '\n');
  await until('the stub to hold the second request', () => stubOut.includes('holding'), 10_000, 20);
  const t0 = Date.now();
  const h = await raw(hmp);
  h.s.write('info status\n');
  await until('the human monitor to answer while the device_add waits', () => /VM status/.test(h.got()), 20_000, 10);
  const hmpMs = Date.now() - t0;
  assert.ok(hmpMs < 2_000, `QEMU's main loop stalled ${hmpMs} ms behind a broker call`);
  assert.ok(!second.got().includes('"stuck"'), 'the device_add was still waiting for the broker');
  // Bounded: the broker's silence ends in the policy (strict: refused with our reason).
  await until('the stuck device_add to be answered', () => second.got().includes('"stuck"'), 20_000, 50);
  const reply = second.got().split('\n').find((l) => l.includes('"stuck"'))!;
  assert.match(reply, /"error".*virt-ebpf: .*no reply within/);
  for (const x of [second, h]) x.s.destroy();
  assert.ok(alive(q.pid));
});

test('a device_add line that arrives in pieces costs QEMU no CPU while it waits for the rest', async () => {
  const q = await domain();
  const c = await connect(q);
  await addNetdev(c, 'hostnet1', 2, taps);
  c.close();
  await sleep(100);
  const r = await raw(q.monitor);
  r.s.write('{"execute":"qmp_capabilities"}\n');
  await until('capabilities', () => r.got().includes('"return"'), 10_000, 10);
  const line = JSON.stringify({ execute: 'device_add', arguments: rssNic('net1', 'hostnet1', 'pci.1'), id: 'pieces' }) + '\n';
  r.s.write(line.slice(0, 30));
  await sleep(200);
  const cpu0 = cpuSeconds(q.pid);
  await sleep(1500);
  const used = cpuSeconds(q.pid) - cpu0;
  r.s.write(line.slice(30));
  await until('the device_add in pieces to be answered', () => r.got().includes('"pieces"'), 15_000, 20);
  r.s.destroy();
  assert.ok(used < 0.5, `QEMU used ${used.toFixed(2)} s of CPU in 1.5 s waiting for the rest of a line`);
});

test('fds handed in for a device_add whose connection goes before its reply are closed again', async () => {
  const q = await domain();
  for (let i = 0; i < 3; i++) {
    const r = await raw(q.monitor);
    r.s.write('{"execute":"qmp_capabilities"}\n' + JSON.stringify({ execute: 'device_add', arguments: rssNic(`net${i}`, 'no-such-netdev', 'pci.1'), id: `gone-${i}` }) + '\n');
    await until('the shim to ask the broker', () => (q.log().match(/eBPF RSS fds|refused/g) ?? []).length > i, 10_000, 5);
    r.s.destroy();
  }
  await sleep(2_500);
  const c = await connect(q); // a reconnect, as libvirtd after a restart
  await c.execute('query-status');
  await until('QEMU to hold none of the fds it never used', () => bpfFdsOf(q.pid).progs === 0 && bpfFdsOf(q.pid).maps === 0, 10_000, 100);
});

test('a strict refusal whose reason has thousands of characters to escape still reaches QEMU as valid JSON; the monitor keeps working', async () => {
  // The wrapper names the real QEMU by a path of control characters (each becomes \u00XX in
  // JSON); once QEMU runs, the path goes: the broker's refusal names it.
  const base = join(dir.path, 'q');
  let path = base;
  mkdirSync(base, { recursive: true });
  for (let i = 0; i < 12; i++) {
    path = join(path, '\u0001'.repeat(200));
    mkdirSync(path, { recursive: true, mode: 0o755 });
  }
  const real = join(path, '"qemu"');
  symlinkSync(QEMU, real);
  const q = await domain({ real });
  const c = await connect(q);
  await addNetdev(c, 'hostnet1', 2, taps);
  rmSync(join(base, '\u0001'.repeat(200)), { recursive: true, force: true });
  await assert.rejects(c.execute('device_add', rssNic('net1', 'hostnet1', 'pci.1')), /virt-ebpf: /);
  assert.equal((await c.execute<{ status: string }>('query-status')).status, 'prelaunch', 'the monitor stream is intact');
  assert.deepEqual(bpfFdsOf(q.pid), { progs: 0, maps: 0 });
});

test('broker down, strict: only a device_add that asks for rss is refused — a disk whose id says "rss" is added', async () => {
  const q = await domain({ broker: join(dir.path, 'no-broker.sock') });
  const c = await connect(q);
  await c.execute('blockdev-add', { driver: 'null-co', 'node-name': 'rssdisk' });
  await c.execute('device_add', { driver: 'virtio-blk-pci', drive: 'rssdisk', id: 'rss-disk', bus: 'pci.1', addr: '0x0' });
  const names = (await c.execute<Array<{ name: string }>>('qom-list', { path: '/machine/peripheral' })).map((p) => p.name);
  assert.ok(names.includes('rss-disk'), `the disk was refused: ${names.join(', ')}; QEMU said: ${q.log().slice(-300)}`);
});

test('an RSS device_add that succeeds without using its fds (a backend that cannot steer) leaves none of them in QEMU', async () => {
  const q = await domain();
  const c = await connect(q);
  await c.execute('netdev_add', { type: 'user', id: 'slirp1' });
  await c.execute('device_add', rssNic('net1', 'slirp1', 'pci.1'));
  assert.match(q.log(), /device_add net1: eBPF RSS fds/, 'the broker gave it fds');
  await until('QEMU to hold none of the fds it did not use', () => bpfFdsOf(q.pid).progs === 0 && bpfFdsOf(q.pid).maps === 0, 10_000, 100);
});

test('a broker that answers one byte a second never holds the device_add past the bound', async () => {
  const stub = join(dir.path, 'trickle.sock');
  const child = spawn(PYTHON, [join(REPO, 'test/security/stub-broker.py'), stub, broker.socket, '0', 'trickle'], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  let stubOut = '';
  child.stdout!.on('data', (d) => (stubOut += d));
  await until('the stub broker', () => stubOut.includes('ready'), 10_000, 20);
  const q = await domain({ broker: stub });
  const c = await connect(q);
  await addNetdev(c, 'hostnet1', 2, taps);
  const t0 = Date.now();
  await assert.rejects(c.execute('device_add', rssNic('net1', 'hostnet1', 'pci.1')), /virt-ebpf: .*no reply within/);
  const waited = Date.now() - t0;
  assert.ok(waited < 12_000, `QEMU's monitor was held ${waited} ms by a broker that trickles`);
});
