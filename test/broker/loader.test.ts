/**
 * The broker's loads run off its main thread (src/broker/loader.ts: the verifier on a thread of
 * libuv's pool), at idle priority when they refill the pool: a refill's verifier time must not
 * compete with the libvirt and QEMU processes of a starting domain, nor hold up the broker's
 * answers. Real broker in this process, real BPF loads.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { getPriority } from 'node:os';
import { spawnSync } from 'node:child_process';
import { kernelBpfFds, needRoot, REPO, sawThreadAtNice, tempDir, threadNices, QEMU } from '../harness';
import { ask, ROOT, served, startTestBroker, until, type TestBroker } from './support';
import { DEFAULT_REFILL_TIMING } from '../../src/broker/pool';
import { Loader } from '../../src/broker/loader';
import { probeEmulator, type EmulatorCaps } from '../../src/emulator';
import { closeAll } from '../../src/fdpass';
import { isVirtEbpfError } from '../../src/errors';

const dir = tempDir('virt-ebpf-loader-');
let broker: TestBroker | undefined;
after(async () => {
  await broker?.close();
  dir.remove();
});

async function readyOf(b: TestBroker): Promise<number> {
  const pools = (await ask(b.socket, { v: 1, id: 9, op: 'status' })).pools as Array<{ ready: number }>;
  return pools.reduce((n, p) => n + p.ready, 0);
}

test('the pool refills off the main thread at nice 19, put back after; the main thread (handoffs) keeps normal priority; a load a request waits for still works', async () => {
  needRoot('the broker loads BPF');
  const own = getPriority();
  assert.ok(own < 19, `this test runs below nice 19 (it runs at ${own})`);
  broker = await startTestBroker({ pool: { size: 2 } }, { cacheDir: join(dir.path, 'cache') });
  const pools = async () => (await ask(broker!.socket, { v: 1, id: 9, op: 'status' })).pools as Array<{ ready: number; target: number }>;
  await ask(broker.socket, { v: 1, id: 1, op: 'prewarm', emulator: QEMU, count: 2 });
  const filled = async () => (await pools()).some((p) => p.ready === 2);
  const seen = await sawThreadAtNice(19, filled);
  assert.ok(seen, `a thread ran the refill at nice 19: ${JSON.stringify(threadNices())}`);
  await until('the pool to fill', filled, 60_000, 50);
  assert.deepEqual(threadNices().filter((t) => t.nice !== own), [], `every thread is back at nice ${own} once the refill is done`);
  assert.equal(getPriority(), own, 'the main thread (handoffs) keeps its priority');

  const got = await served(ROOT, broker.socket, { op: 'acquire', emulator: QEMU, count: 1 });
  assert.equal(got.fds.length, 4, 'a handoff from the pool');
  await until('the handoff to be refilled', async () => (await pools()).some((p) => p.ready === 2), 60_000, 50);
  // More than the pool holds: the third is loaded while the request waits (normal priority).
  const many = await served(ROOT, broker.socket, { op: 'acquire', emulator: QEMU, count: 3 });
  assert.equal(many.fds.length, 12);
  await broker.close();
  broker = undefined;
});

test('a refill waits until starts have settled: not inside the `virsh start` whose take emptied the pool', async () => {
  needRoot('the broker loads BPF');
  const b = await startTestBroker({ pool: { size: 1 } }, { cacheDir: join(dir.path, 'cache-settle') });
  try {
    await ask(b.socket, { v: 1, id: 1, op: 'prewarm', emulator: QEMU, count: 1 });
    await until('the pool to fill', async () => (await readyOf(b)) === 1, 60_000, 20);
    const t0 = Date.now();
    const got = await served(ROOT, b.socket, { op: 'acquire', emulator: QEMU, count: 1 });
    assert.equal(got.fds.length, 4);
    // A load takes ~70-150 ms here: refilled at once it would be back well before settleMs.
    await new Promise((r) => setTimeout(r, DEFAULT_REFILL_TIMING.settleMs - 300));
    assert.equal(await readyOf(b), 0, `no refill within ${DEFAULT_REFILL_TIMING.settleMs - 300} ms of the take`);
    await until('the refill after the start settled', async () => (await readyOf(b)) === 1, 60_000, 20);
    assert.ok(Date.now() - t0 >= DEFAULT_REFILL_TIMING.settleMs, 'refilled only after settleMs');
  } finally {
    await b.close();
  }
});

test('a steady stream of starts puts a refill off for at most maxDeferMs', async () => {
  needRoot('the broker loads BPF');
  // Starts "never settle" (settleMs far beyond the test); the cap still refills.
  const timing = { settleMs: 600_000, maxDeferMs: 400 };
  const b = await startTestBroker({ pool: { size: 1 } }, { cacheDir: join(dir.path, 'cache-cap'), refillTiming: timing });
  try {
    const t0 = Date.now();
    const got = await served(ROOT, b.socket, { op: 'acquire', emulator: QEMU, count: 1 }); // empty pool: loads while it waits
    assert.equal(got.fds.length, 4);
    await until('the refill once maxDeferMs ran out', async () => (await readyOf(b)) === 1, 30_000, 20);
    assert.ok(Date.now() - t0 >= timing.maxDeferMs, 'not before maxDeferMs');
  } finally {
    await b.close();
  }
});

/** A Loader of `threads` and the caps of the test QEMU for `body`; the Loader is closed after. */
async function withLoader(threads: number, body: (loader: Loader, caps: EmulatorCaps) => Promise<void>): Promise<void> {
  needRoot('the loader loads BPF');
  const { caps } = await probeEmulator(QEMU, { cacheDir: join(dir.path, 'cache') });
  const loader = new Loader({ threads });
  try {
    await body(loader, caps);
  } finally {
    await loader.close();
  }
}

test('at most `threads` loads at once; a load a request waits for goes before queued refills', async () => {
  await withLoader(2, async (two, caps) => {
    const loads = [two.load(caps, 'rss', true), two.load(caps, 'rss', true), two.load(caps, 'rss', true)];
    assert.equal(two.running, 2, 'two of three under way');
    const got = await Promise.all(loads);
    assert.deepEqual(got.map((c) => c.fds.length), [4, 4, 4]);
    got.forEach((c) => closeAll(c.fds));
    assert.equal(two.running, 0);
  });
  await withLoader(1, async (one, caps) => {
    const order: string[] = [];
    const mark = (name: string, p: Promise<{ fds: import('../../src/fdpass').OwnedFd[] }>) =>
      p.then((c) => {
        order.push(name);
        closeAll(c.fds);
      });
    await Promise.all([mark('refill 1', one.load(caps, 'rss', false)), mark('refill 2', one.load(caps, 'rss', false)), mark('start', one.load(caps, 'rss', true))]);
    assert.deepEqual(order, ['refill 1', 'start', 'refill 2'], 'the start waited only for the refill already under way');
  });
});

test('close() refuses what is queued and under way, and resolves once the load under way ended with its fds closed', async () => {
  needRoot('the loader loads BPF');
  const { caps } = await probeEmulator(QEMU, { cacheDir: join(dir.path, 'cache') });
  const loader = new Loader({ threads: 1 });
  const held = kernelBpfFds();
  // A refill: its thread is at nice 19 exactly while bpf_object__load runs (niced-load.c).
  const under = loader.load(caps, 'rss', false);
  const queued = loader.load(caps, 'rss', true);
  assert.equal(loader.running, 1);
  assert.ok(await sawThreadAtNice(19, () => false, 30_000), 'the load is in libbpf when close() is called');
  const refused = [under, queued].map((p) => assert.rejects(p, (e: unknown) => isVirtEbpfError(e, 'BROKER_INTERNAL')));
  await loader.close();
  await Promise.all(refused);
  assert.equal(loader.running, 0, 'close() waited for the load under way');
  assert.equal(kernelBpfFds(), held, 'its fds were closed, not handed to anyone');
  await assert.rejects(loader.load(caps, 'rss', true), (e: unknown) => isVirtEbpfError(e, 'BROKER_INTERNAL'), 'a closed loader loads nothing');
});

test('a broker whose threads could not come back from nice 19 (no CAP_SYS_NICE, RLIMIT_NICE 0): refills run at its own priority, no thread is left idle, the loads give their fds, the operator is told once', () => {
  needRoot('dropping CAP_SYS_NICE from a root child');
  const child = join(REPO, 'dist', 'test', 'fixtures', 'broker', 'nice-stuck.js');
  const drop = ['--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-sys_nice'];
  const r = spawnSync('prlimit', ['--nice=0', 'setpriv', ...drop, process.execPath, child, QEMU, join(dir.path, 'nice-stuck-cache')], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { fds: number[]; warnings: Array<{ message: string; meta: { remedy?: string } }>; nices: number[] };
  assert.deepEqual(out.fds, [4, 4, 4]);
  assert.equal(out.warnings.length, 1, JSON.stringify(out.warnings));
  assert.match(out.warnings[0].message, /could not come back from a refill's idle priority: refills run at the broker's own priority/);
  assert.match(out.warnings[0].meta.remedy ?? '', /LimitNICE=\+0/);
  assert.deepEqual([...new Set(out.nices)], [getPriority()], 'every thread at the priority it started with');
});

test('a load on the main thread of a process whose loads run on the pool\'s threads does not abort it (libbpf\'s print hook is process-wide)', () => {
  needRoot('loading BPF needs CAP_BPF');
  const child = join(REPO, 'dist', 'test', 'fixtures', 'broker', 'main-thread-load.js');
  const r = spawnSync(process.execPath, [child, QEMU, join(dir.path, 'main-thread-cache')], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.signal, null, `the process died of ${r.signal}: ${r.stderr.split('\n').slice(0, 3).join(' | ')}`);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'ok');
});
