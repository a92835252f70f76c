/**
 * Who gets served, and for which emulators — against a real broker (startBroker: real resolver,
 * real probe of QEMU 10.0.2, real BPF loads) and real peers in their own processes, dropped to
 * other accounts so the broker's SO_PEERCRED check sees exactly those uid/gid pairs.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, copyFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { BROKER_VERSION, REFUSED_LINGER_MS } from '../../src/broker/server';
import { fdPlaceholder } from '../../src/broker/protocol';
import { lookupUser } from '../../src/sys/users';
import { gone, QEMU, needRoot, tempDir, trustedDir, watchFds } from '../harness';
import { Account, HOLDING_PEER, ROOT, TestBroker, ask, heldBpf, peer, progIds, served, socketsHeld, startTestBroker, until } from './support';

const MICROVM = '/usr/bin/qemu-system-x86_64-microvm';
/** QEMU's argv with one RSS NIC, as the emulator wrapper sends it in an exec-plan. */
const RSS_ARGV = ['-device', JSON.stringify({ driver: 'virtio-net-pci', rss: true, netdev: 'n0', id: 'net0' })];
const BPF_PROG_TYPE_SOCKET_FILTER = 1;
const BPF_MAP_TYPE_ARRAY = 2;

const dir = tempDir();
const cacheDir = join(dir.path, 'cache');
const qemuUser = lookupUser('libvirt-qemu');
const LIBVIRT_QEMU: Account = { uid: qemuUser.uid, gid: qemuUser.gid };
const NOBODY: Account = { uid: 65534, gid: 65534 }; // nogroup
const STRANGER: Account = { uid: 65533, gid: 65533 };
const STRANGER_IN_NOGROUP: Account = { uid: 65533, gid: 65534 };

// Copies of QEMU outside the default directories, root-owned (not under /tmp: world-writable).
const outsideDir = trustedDir('broker-outside');
const untrustedDir = trustedDir('broker-untrusted');
const outsideQemu = join(outsideDir, 'qemu-system-x86_64');
const untrustedQemu = join(untrustedDir, 'qemu-system-x86_64');

const brokers: TestBroker[] = [];
let main: TestBroker;
let leaks: () => void;

async function broker(config: Record<string, unknown>, qemuConf?: string): Promise<TestBroker> {
  const b = await startTestBroker(config, { cacheDir, qemuConf });
  brokers.push(b);
  return b;
}

before(async () => {
  needRoot('the broker loads BPF; peers drop to other accounts');
  leaks = watchFds();
  copyFileSync(QEMU, outsideQemu);
  chmodSync(outsideQemu, 0o755);
  copyFileSync(QEMU, untrustedQemu);
  chmodSync(untrustedQemu, 0o775); // group-writable: anyone in root's group could replace it
  // The group-writable copy is on the allowlist, so the trust check is what refuses it.
  main = await broker({ pool: { size: 0 }, emulatorDirs: ['/usr/bin', untrustedDir], emulators: [QEMU, MICROVM, untrustedQemu] });
});

after(async () => {
  for (const b of brokers) await b.close();
  rmSync(outsideDir, { recursive: true, force: true });
  rmSync(untrustedDir, { recursive: true, force: true });
  dir.remove();
  leaks?.();
});

test('root: hello and status answer; acquire 2 hands 8 real BPF fds to the peer process, described exactly', async () => {
  const hello = await served(ROOT, main.socket, { op: 'hello' });
  assert.deepEqual({ ...hello.reply, id: 0 }, { v: 1, id: 0, ok: true, op: 'hello', broker: 'virt-ebpfd', version: BROKER_VERSION, uid: 0 });
  assert.deepEqual(hello.fds, []);

  const { reply, fds } = await served(ROOT, main.socket, { op: 'acquire', emulator: QEMU, count: 2 });
  assert.equal(fds.length, 8);
  assert.deepEqual(fds.map((f) => f.kind), ['prog', 'map', 'map', 'map', 'prog', 'map', 'map', 'map']);
  assert.ok(fds.filter((f) => f.kind === 'prog').every((f) => f.type === BPF_PROG_TYPE_SOCKET_FILTER), JSON.stringify(fds));
  assert.ok(fds.filter((f) => f.kind === 'map').every((f) => f.type === BPF_MAP_TYPE_ARRAY), JSON.stringify(fds));
  const progs = progIds(fds);
  assert.equal(new Set(progs).size, 2, 'two distinct programs');
  assert.equal(new Set(fds.filter((f) => f.kind === 'map').map((f) => f.id)).size, 6, 'six distinct maps');
  assert.equal(reply.contexts.length, 2);
  reply.contexts.forEach((c: any, i: number) => {
    const mine = fds.slice(4 * i, 4 * i + 4);
    assert.deepEqual(c, {
      protocol: 'request-ebpf',
      property: { name: 'ebpf-rss-fds', type: 'list' },
      fds: 4,
      progId: mine[0].id,
      mapIds: mine.slice(1).map((f) => f.id),
    });
  });
  assert.equal(reply.propTypes.rss, 'bool');
  assert.equal(reply.propTypes.mq, 'bool');

  const status = await ask(main.socket, { v: 1, id: 9, op: 'status' });
  assert.equal(status.ok, true);
  assert.equal(status.pools.length, 1);
  assert.match(status.pools[0].emulator, /^\/usr\/bin\/qemu-system-x86_64#\d+:\d+:\d+:/, 'the pool is keyed by the build identity');
  assert.deepEqual([status.pools[0].ready, status.pools[0].target], [0, 0]);
  assert.equal(heldBpf().progs.size, 0, 'the broker kept no copy of what it handed out');
});

test('SO_PEERCRED: nobody is refused with BROKER_DENIED and gets no fds', async () => {
  for (const body of [{ op: 'hello' as const }, { op: 'acquire' as const, emulator: QEMU, count: 1 }]) {
    const o = await peer(NOBODY, main.socket, body);
    assert.equal(o.ok, false, JSON.stringify(o));
    assert.equal(o.ok === false && o.code, 'BROKER_DENIED', JSON.stringify(o));
    assert.match(o.ok === false ? o.message : '', /uid 65534 gid 65534 may not use the broker/);
  }
});

test('a refused peer that keeps its end open still reads our one line, and the broker closes its side (no fd leak)', async () => {
  const child = spawn(process.execPath, [HOLDING_PEER, String(NOBODY.uid), String(NOBODY.gid), main.socket, JSON.stringify({ v: 1, id: 7, op: 'hello' })], { stdio: ['pipe', 'pipe', 'inherit'] });
  // Counted now: the child's stdio pipes are sockets too, the peer has not connected yet.
  const before = socketsHeld();
  let out = '';
  child.stdout.on('data', (c) => (out += c));
  try {
    await until('the peer to report', () => out.includes('\n'), 10_000);
    const r = JSON.parse(out) as { received: string; eof: boolean };
    assert.match(r.received, /"code":"BROKER_DENIED"/);
    assert.equal(r.eof, true, 'the broker hung up after the line');
    await until('the broker to close its side', () => socketsHeld() <= before, REFUSED_LINGER_MS + 3_000);
  } finally {
    child.stdin.end();
    await gone(child);
  }
});

test('SO_PEERCRED: libvirt-qemu (the default account) is served through exec-plan and holds the objects its argv names; acquire is root\'s', async () => {
  const { reply, fds } = await served(LIBVIRT_QEMU, main.socket, { op: 'exec-plan', emulator: QEMU, argv: RSS_ARGV });
  assert.deepEqual(fds.map((f) => f.kind), ['prog', 'map', 'map', 'map']);
  assert.equal(reply.fds, 4);
  assert.deepEqual(JSON.parse(reply.argv[1])['ebpf-rss-fds'], [0, 1, 2, 3].map(fdPlaceholder));
  const direct = await peer(LIBVIRT_QEMU, main.socket, { op: 'acquire', emulator: QEMU, count: 1 });
  assert.equal(direct.ok === false && direct.code, 'BROKER_DENIED', JSON.stringify(direct));
});

test('allowUsers/allowGroups replace the defaults: exactly the named accounts are served', async () => {
  const users = await broker({ pool: { size: 0 }, allowUsers: ['nobody'], allowGroups: [] });
  const groups = await broker({ pool: { size: 0 }, allowUsers: [], allowGroups: ['nogroup'] });
  const verdict = async (b: TestBroker, who: Account) => {
    const o = await peer(who, b.socket, { op: 'hello' });
    return o.ok ? 'served' : o.code;
  };
  assert.deepEqual(
    {
      usersNobody: await verdict(users, NOBODY),
      usersQemu: await verdict(users, LIBVIRT_QEMU),
      usersRoot: await verdict(users, ROOT),
      groupsNobody: await verdict(groups, NOBODY),
      groupsStrangerInNogroup: await verdict(groups, STRANGER_IN_NOGROUP),
      groupsStranger: await verdict(groups, STRANGER),
      groupsQemu: await verdict(groups, LIBVIRT_QEMU),
    },
    {
      usersNobody: 'served',
      usersQemu: 'BROKER_DENIED',
      usersRoot: 'served', // root always may
      groupsNobody: 'served',
      groupsStrangerInNogroup: 'served',
      groupsStranger: 'BROKER_DENIED',
      groupsQemu: 'BROKER_DENIED',
    },
  );
});

test('qemu.conf: the user libvirt runs QEMU as is the one allowed; its group only when configured (a group admits every member)', async () => {
  const conf = join(dir.path, 'qemu.conf');
  writeFileSync(conf, '# user = "root"\nuser = "nobody"\ngroup = "nogroup"\n');
  const b = await broker({ pool: { size: 0 } }, conf);
  const nobody = await peer(NOBODY, b.socket, { op: 'exec-plan', emulator: QEMU, argv: RSS_ARGV });
  assert.equal(nobody.ok, true, JSON.stringify(nobody));
  assert.deepEqual(nobody.ok && nobody.fds.map((f) => f.kind), ['prog', 'map', 'map', 'map']);
  const inGroup = await peer(STRANGER_IN_NOGROUP, b.socket, { op: 'hello' });
  assert.equal(inGroup.ok === false && inGroup.code, 'BROKER_DENIED', JSON.stringify(inGroup));
  const withGroups = await broker({ pool: { size: 0 }, allowGroups: ['nogroup'] }, conf);
  const member = await peer(STRANGER_IN_NOGROUP, withGroups.socket, { op: 'hello' });
  assert.equal(member.ok, true, JSON.stringify(member));
  const qemu = await peer(LIBVIRT_QEMU, b.socket, { op: 'hello' });
  assert.equal(qemu.ok === false && qemu.code, 'BROKER_DENIED', 'libvirt-qemu is not the QEMU account of this host any more');
});

test('emulators: outside emulatorDirs → BROKER_DENIED, even a trusted copy of the real QEMU', async () => {
  const o = await peer(ROOT, main.socket, { op: 'acquire', emulator: outsideQemu, count: 1 });
  assert.equal(o.ok === false && o.code, 'BROKER_DENIED', JSON.stringify(o));
  assert.match(o.ok === false ? o.message : '', /not in an allowed directory/);
});

test('emulators: a group-writable copy in an allowed directory → EMULATOR_UNTRUSTED, never run', async () => {
  const o = await peer(ROOT, main.socket, { op: 'acquire', emulator: untrustedQemu, count: 1 });
  assert.equal(o.ok === false && o.code, 'EMULATOR_UNTRUSTED', JSON.stringify(o));
  assert.match(o.ok === false ? o.message : '', /writable by group or others \(mode 775\)/);
});

test('emulators: a path that does not exist → EMULATOR_NOT_FOUND', async () => {
  const o = await peer(LIBVIRT_QEMU, main.socket, { op: 'exec-plan', emulator: '/usr/bin/qemu-system-virt-ebpf-none', argv: RSS_ARGV });
  assert.equal(o.ok === false && o.code, 'EMULATOR_NOT_FOUND', JSON.stringify(o));
});

test('emulators: QEMU\'s microvm build (no request-ebpf) → EMULATOR_UNSUPPORTED with the reason', async () => {
  const o = await peer(LIBVIRT_QEMU, main.socket, { op: 'exec-plan', emulator: MICROVM, argv: RSS_ARGV });
  assert.equal(o.ok === false && o.code, 'EMULATOR_UNSUPPORTED', JSON.stringify(o));
  assert.match(o.ok === false ? o.message : '', /qemu-system-x86_64-microvm cannot take eBPF RSS fds: ./);
});

test('prewarm without a domain fills the pool of a broker that has not served that emulator yet', async () => {
  const b = await broker({ pool: { size: 2 } });
  const r = await ask(b.socket, { v: 1, id: 1, op: 'prewarm', emulator: QEMU, count: 2 });
  assert.equal(r.ok, true, JSON.stringify(r));
  await until('the pool to hold 2 ready contexts', async () => {
    const st = await ask(b.socket, { v: 1, id: 2, op: 'status' });
    return st.pools.length === 1 && st.pools[0].ready === 2;
  }, 30_000, 100);
});
