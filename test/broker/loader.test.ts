/**
 * The broker loads on a thread of its own (src/broker/loader.ts), at idle priority when it
 * refills the pool: a refill's verifier time must not compete with the libvirt and QEMU
 * processes of a starting domain, nor hold up the broker's answers. Real broker in this
 * process, real BPF loads.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { getPriority } from 'node:os';
import { spawnSync } from 'node:child_process';
import { needRoot, REPO, tempDir, QEMU } from '../harness';
import { ask, ROOT, served, startTestBroker, until, type TestBroker } from './support';
import { DEFAULT_REFILL_TIMING } from '../../src/broker/pool';
import { Loader } from '../../src/broker/loader';
import { probeEmulator } from '../../src/emulator';
import { closeAll } from '../../src/fdpass';

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

/** nice of each thread of this process (the in-process broker), by comm. */
function threadNice(): Array<{ comm: string; nice: number }> {
  return readdirSync('/proc/self/task').map((tid) => {
    const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { comm: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')), nice: Number(rest[16]) };
  });
}

test('the pool refills on the loader thread at nice 19; the main thread (handoffs) keeps normal priority; a load a request waits for still works', async () => {
  needRoot('the broker loads BPF');
  broker = await startTestBroker({ pool: { size: 2 } }, { cacheDir: join(dir.path, 'cache') });
  const pools = async () => (await ask(broker!.socket, { v: 1, id: 9, op: 'status' })).pools as Array<{ ready: number; target: number }>;
  await ask(broker.socket, { v: 1, id: 1, op: 'prewarm', emulator: QEMU, count: 2 });
  await until('the pool to fill in the background', async () => (await pools()).some((p) => p.ready === 2), 60_000, 50);
  const niced = threadNice().filter((t) => t.nice === 19);
  assert.equal(niced.length, 1, `one idle-priority loader thread: ${JSON.stringify(threadNice())}`);
  assert.equal(getPriority(), 0, 'the main thread (handoffs) keeps its priority');

  const got = await served(ROOT, broker.socket, { op: 'acquire', emulator: QEMU, count: 1 });
  assert.equal(got.fds.length, 4, 'a handoff from the pool');
  await until('the handoff to be refilled', async () => (await pools()).some((p) => p.ready === 2), 60_000, 50);
  // More than the pool holds: the third is loaded while the request waits (normal priority).
  const many = await served(ROOT, broker.socket, { op: 'acquire', emulator: QEMU, count: 3 });
  assert.equal(many.fds.length, 12);
  await until('the loader to be idle again', () => threadNice().some((t) => t.nice === 19), 60_000, 50);
  await broker.close(); // one broker (one loader thread) in this process at a time
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

test('a loader thread with nothing to load for idleMs ends (an idle broker is its main thread); the next load starts one again', async () => {
  needRoot('the loader loads BPF');
  const { caps } = await probeEmulator(QEMU, { cacheDir: join(dir.path, 'cache') });
  const loader = new Loader(2, 300);
  try {
    const first = await loader.load(caps, 'rss', true);
    assert.equal(first.fds.length, 4);
    closeAll(first.fds);
    assert.equal(loader.running, 1, 'one thread for one load');
    await until('the idle loader thread to end', () => loader.running === 0, 10_000, 20);
    const again = await Promise.all([loader.load(caps, 'rss', true), loader.load(caps, 'rss', false)]);
    assert.deepEqual(again.map((c) => c.fds.length), [4, 4], 'loads after the retirement work');
    again.forEach((c) => closeAll(c.fds));
    assert.equal(loader.running, 2);
    await until('both idle threads to end', () => loader.running === 0, 10_000, 20);
  } finally {
    await loader.close();
  }
});

test('a load on the main thread of a process with loader threads does not abort it (libbpf\'s print hook is process-wide)', () => {
  needRoot('loading BPF needs CAP_BPF');
  const child = join(REPO, 'dist', 'test', 'fixtures', 'broker', 'main-thread-load.js');
  const r = spawnSync(process.execPath, [child, QEMU, join(dir.path, 'main-thread-cache')], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.signal, null, `the process died of ${r.signal}: ${r.stderr.split('\n').slice(0, 3).join(' | ')}`);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'ok');
});
