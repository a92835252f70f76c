/**
 * The fault campaign, on the real things (`virt-ebpf install`, the installed broker, libvirtd,
 * QEMU under TCG): the broker killed with SIGKILL in the middle of a prepare, an exec-plan, an
 * acquire, a hot-plug and a refill; libvirtd restarted during a start; a domain's QEMU killed;
 * /run/virt-ebpf removed; bpffs unmounted; the probe cache on a full filesystem. Each ends the
 * same way: no running domain lost, the next start of an enabled domain gets its fds, and the
 * broker holds exactly its pool again.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PYTHON, needRoot, tempDir } from '../harness';
import { readManifest } from '../../src/install/manifest';
import { DEFAULT_PATHS } from '../../src/install/plan';
import { readCmdline } from '../../src/sys/proc';
import { brokerRequest } from '../../src/broker/client';
import { BrokerChild, installForReal } from '../coldstart/fixture';
import { bpfFds, cli, CONN, defineEnabled, domainState, domainXml, qemuPid, removeDomain, runAsync, testDomains, virsh, virshTry, waitFor } from '../coldstart/libvirt';

const PREFIX = `vebpf-fault-${process.pid}-`;
const name = (what: string) => PREFIX + what;
const CACHE = '/var/cache/virt-ebpf/probe';
let scratch: { path: string; remove(): void };
let broker: BrokerChild;
/** Domains that must survive every fault. */
const keepers = [name('keeper-a'), name('keeper-b')];

/** A broker config in the scratch dir (the default socket: the wrapper under libvirt uses it). */
function brokerWith(pool: { size: number; maxReservedPerDomain?: number }): BrokerChild {
  const file = join(scratch.path, `config-${pool.size}-${pool.maxReservedPerDomain ?? 'd'}.json`);
  writeFileSync(file, JSON.stringify({ policy: 'strict', pool }));
  return new BrokerChild({ args: ['--config', file] });
}

async function useBroker(pool: { size: number; maxReservedPerDomain?: number }): Promise<number> {
  await broker?.stop();
  broker = brokerWith(pool);
  await broker.start();
  return pool.size;
}

function brokerProgs(): number {
  return broker.pid ? bpfFds(broker.pid).filter((f) => f.kind === 'prog').length : 0;
}

function define(what: string, nics: number): string {
  const n = name(what);
  if (domainState(n) === 'undefined') defineEnabled(n, domainXml({ name: n, nics: Array.from({ length: nics }, () => ({ rss: true, queues: 2 })) }), scratch.path);
  return n;
}

/** Poll /proc (every ms or so) until a process's argv matches; its pid, or undefined on timeout. */
async function whenProcess(match: (argv: string[]) => boolean, timeoutMs: number): Promise<number | undefined> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    for (const pid of readdirSync('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      const argv = readCmdline(pid);
      if (argv && match(argv)) return Number(pid);
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  return undefined;
}

function startAsync(n: string) {
  return runAsync('virsh', ['-q', '-c', CONN, 'start', n], { timeoutMs: 120_000 });
}

/**
 * What every fault must leave: the keepers running on the same QEMU, the broker answering with
 * exactly its pool (and nothing reserved), and a fresh start of an enabled domain getting its
 * program and maps.
 */
async function healthy(fault: string, poolSize: number, qemus: Map<string, number>): Promise<void> {
  for (const k of keepers) {
    assert.equal(domainState(k), 'running', `${fault}: ${k} was lost`);
    assert.equal(qemuPid(k), qemus.get(k), `${fault}: ${k} runs on another QEMU now`);
  }
  const next = define('next', 1);
  const r = virshTry('start', next);
  assert.equal(r.status, 0, `${fault}: the next start failed: ${r.stderr.trim()}`);
  try {
    const held = bpfFds(qemuPid(next));
    assert.deepEqual(held.map((f) => f.kind), ['prog', 'map', 'map', 'map'], `${fault}: the next start's QEMU holds ${held.length} BPF fds`);
  } finally {
    virshTry('destroy', next);
  }
  await waitFor(`${fault}: the broker to hold its pool (${poolSize}) and nothing else (holds ${brokerProgs()})`, 30_000, () => brokerProgs() === poolSize);
}

async function startKeepers(): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const k of keepers) {
    define(k.slice(PREFIX.length), 1);
    if (domainState(k) !== 'running') virsh('start', k);
    out.set(k, qemuPid(k));
  }
  return out;
}

before(async () => {
  needRoot('installs into system paths, kills the broker and libvirtd, unmounts bpffs');
  scratch = tempDir('vebpf-faults-');
  installForReal();
});

after(async () => {
  for (const n of testDomains(PREFIX)) removeDomain(n);
  await broker?.stop();
  if (readManifest(DEFAULT_PATHS.manifest)) cli('uninstall', '--force');
  scratch?.remove();
});

test('kill -9 of the broker during a prepare (a 12-NIC reservation loading)', { timeout: 300_000 }, async () => {
  const pool = await useBroker({ size: 1 });
  const qemus = await startKeepers();
  const big = define('big', 12);
  const start = startAsync(big);
  const hook = await whenProcess((a) => a[0].endsWith('vebpf-hook') && a.includes(big) && a.includes('prepare'), 30_000);
  assert.ok(hook, 'the hook\'s prepare was not seen');
  await broker.crash();
  const r = await start;
  assert.notEqual(r.status, 0, 'strict: a start whose prepare lost the broker is refused');
  assert.match(r.stderr, /virt-ebpf: .*BROKER_UNREACHABLE/);
  await broker.start();
  await healthy('kill -9 during prepare', pool, qemus);
});

test('kill -9 of the broker during an exec-plan (12 NICs loading, nothing reserved)', { timeout: 300_000 }, async () => {
  const pool = await useBroker({ size: 1, maxReservedPerDomain: 0 });
  const qemus = await startKeepers();
  const big = define('big', 12);
  const start = startAsync(big);
  const wrapper = await whenProcess((a) => a[0].endsWith('vebpf-wrapper') && a.some((x) => x.includes(big)), 30_000);
  assert.ok(wrapper, 'the wrapper was not seen');
  await broker.crash();
  const r = await start;
  assert.notEqual(r.status, 0, 'strict: QEMU does not start without its fds');
  assert.equal(domainState(big), 'shut off');
  await broker.start();
  await healthy('kill -9 during exec-plan', pool, qemus);
});

test('kill -9 of the broker during an acquire (16 contexts loading) and during a hot-plug', { timeout: 300_000 }, async () => {
  const pool = await useBroker({ size: 0 });
  const qemus = await startKeepers();
  const probe = join(scratch.path, 'acquire.py');
  writeFileSync(probe, 'import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(b\'{"v":1,"id":1,"op":"acquire","emulator":"/usr/bin/qemu-system-x86_64","count":16}\\n\')\nprint(s.recv(100))\n');
  const acquiring = runAsync(PYTHON, [probe, broker.socket]);
  await waitFor('the broker to be loading the 16 contexts', 30_000, () => brokerProgs() >= 2);
  await broker.crash();
  await acquiring;
  await broker.start();
  // A hot-plug whose device-plan the broker never answers: stopped, then killed.
  const nic = join(scratch.path, 'nic.xml');
  writeFileSync(nic, "<interface type='ethernet'><model type='virtio'/><driver queues='2' rss='on'/></interface>\n");
  process.kill(broker.pid!, 'SIGSTOP');
  const attach = runAsync('virsh', ['-q', '-c', CONN, 'attach-device', keepers[0], nic, '--live']);
  await new Promise((r) => setTimeout(r, 1500));
  await broker.crash();
  const r = await attach;
  assert.notEqual(r.status, 0, 'strict: the NIC is refused without its fds');
  assert.match(r.stderr, /virt-ebpf: /);
  await broker.start();
  await healthy('kill -9 during acquire and hot-plug', pool, qemus);
});

test('kill -9 of the broker during a refill', { timeout: 300_000 }, async () => {
  const pool = await useBroker({ size: 10 });
  const qemus = await startKeepers();
  brokerRequest({ op: 'prewarm', emulator: '/usr/bin/qemu-system-x86_64', count: 1 }, { socket: broker.socket }); // fill the pool of this build
  await waitFor('the pool to fill', 60_000, () => brokerProgs() === pool);
  // An 8-NIC start takes 8 ready contexts; once starts have settled the pool refills them.
  const more = define('more8', 8);
  virsh('start', more);
  const seen: number[] = [];
  const deadline = Date.now() + 30_000;
  for (let n = brokerProgs(); !(n > pool - 8 && n < pool); n = brokerProgs()) {
    seen.push(n);
    assert.ok(Date.now() < deadline, `no refill under way: the broker held ${seen.slice(-20).join(' ')} programs`);
    await new Promise((r) => setTimeout(r, 5));
  }
  await broker.crash();
  virsh('destroy', more);
  await broker.start();
  await healthy('kill -9 during a refill', pool, qemus);
});

test('libvirtd restarted during a start', { timeout: 300_000 }, async () => {
  const pool = await useBroker({ size: 1 });
  const qemus = await startKeepers();
  const big = define('big2', 4);
  const start = startAsync(big);
  const wrapper = await whenProcess((a) => a.some((x) => x.includes(big)) && (a[0].endsWith('vebpf-wrapper') || a[0].endsWith('qemu-system-x86_64')), 30_000);
  assert.ok(wrapper, 'the start was not seen');
  spawnSync('pkill', ['-x', 'libvirtd']);
  await waitFor('libvirtd to exit', 30_000, () => spawnSync('pgrep', ['-x', 'libvirtd']).status !== 0);
  execFileSync('libvirtd', ['-d']);
  await waitFor('libvirtd to answer again', 30_000, () => virshTry('version').status === 0);
  await start;
  if (domainState(big) === 'running') virsh('destroy', big);
  await healthy('libvirtd restart during a start', pool, qemus);
});

test('a domain\'s QEMU killed', { timeout: 300_000 }, async () => {
  const pool = await useBroker({ size: 1 });
  const qemus = await startKeepers();
  const victim = define('victim', 2);
  virsh('start', victim);
  process.kill(qemuPid(victim), 'SIGKILL');
  await waitFor('libvirt to see the QEMU gone', 30_000, () => domainState(victim) === 'shut off');
  await healthy('QEMU killed', pool, qemus);
});

test('/run/virt-ebpf removed under a running broker', { timeout: 300_000 }, async () => {
  const pool = await useBroker({ size: 1 });
  const qemus = await startKeepers();
  rmSync('/run/virt-ebpf', { recursive: true, force: true });
  await waitFor('the broker to listen on its socket again', 15_000, () => existsSync('/run/virt-ebpf/broker.sock'));
  await healthy('/run/virt-ebpf removed', pool, qemus);
});

test('bpffs unmounted', { timeout: 300_000 }, async () => {
  const pool = await useBroker({ size: 1 });
  const qemus = await startKeepers();
  execFileSync('umount', ['/sys/fs/bpf']);
  try {
    await healthy('bpffs unmounted', pool, qemus);
  } finally {
    execFileSync('mount', ['-t', 'bpf', 'bpf', '/sys/fs/bpf']);
  }
});

test('the probe cache on a full filesystem', { timeout: 300_000 }, async () => {
  await broker?.stop();
  mkdirSync(CACHE, { recursive: true, mode: 0o700 });
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16k,mode=0700', 'vebpf-full', CACHE]);
  try {
    spawnSync('dd', ['if=/dev/zero', `of=${join(CACHE, 'filler')}`, 'bs=4k', 'count=64']);
    const pool = await useBroker({ size: 1 });
    const qemus = await startKeepers();
    await healthy('a full probe cache', pool, qemus);
    assert.deepEqual(readdirSync(CACHE), ['filler'], 'nothing half-written was left in the cache');
  } finally {
    await broker.stop();
    execFileSync('umount', [CACHE]);
  }
});
