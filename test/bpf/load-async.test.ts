/**
 * The broker's way to load (loadRssAsync): the verifier on a thread of libuv's pool at a nice
 * value, the calling thread free meanwhile, several loads at once. Real kernel, real QEMU
 * object. libbpf is bound quiet in this process, as in the broker: its print callback belongs
 * to one thread, and the pool's threads would call it.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { getPriority } from 'node:os';
import { join } from 'node:path';
import { loadRssAsync, validateRssObject } from '../../src/bpf';
import { quietLibbpf } from '../../src/bpf/libbpf';
import { bpfFdInfo } from '../../src/fdpass';
import { getCloexec } from '../../src/sys/libc';
import { isVirtEbpfError } from '../../src/errors';
import { kernelBpfFds, needRoot, REPO, sawThreadAtNice, threadNices, watchFds } from '../harness';
import { rssObject } from './fixture';
import { findInsn } from './mutate';

quietLibbpf();
let obj: Buffer;
const checkLeaks = watchFds();
before(async () => {
  obj = await rssObject();
});
after(() => checkLeaks());

test('loadRssAsync: the calling thread goes on during the load (a synchronous load would hold it for the whole verifier run)', async () => {
  needRoot('loading BPF programs needs CAP_BPF');
  const object = validateRssObject(obj);
  (await loadRssAsync(object, 0)).close(); // libbpf bound, its first object opened: not timed
  let settled = false;
  let turns = 0;
  const t0 = process.hrtime.bigint();
  const loading = loadRssAsync(object, 0).finally(() => (settled = true));
  const returnedAfter = Number(process.hrtime.bigint() - t0) / 1e6;
  while (!settled) {
    turns++;
    await new Promise((r) => setImmediate(r));
  }
  const tookMs = Number(process.hrtime.bigint() - t0) / 1e6;
  (await loading).close();
  assert.ok(returnedAfter < tookMs / 2, `the call returned after ${returnedAfter.toFixed(1)} ms of a ${tookMs.toFixed(1)} ms load`);
  assert.ok(turns >= 10, `the event loop turned ${turns} times during a ${tookMs.toFixed(1)} ms load`);
});

test('loadRssAsync: the verifier runs on another thread at the nice given, put back after', async () => {
  needRoot('loading BPF programs needs CAP_BPF');
  const object = validateRssObject(obj);
  const held = kernelBpfFds();
  const own = getPriority();
  assert.ok(own < 19, `this test runs below nice 19 (it runs at ${own})`);
  let seen = false;
  for (let round = 0; round < 5 && !seen; round++) {
    let settled = false;
    const loading = loadRssAsync(object, 19).finally(() => (settled = true));
    seen = await sawThreadAtNice(19, () => settled);
    const ctx = await loading;
    try {
      assert.equal(ctx.fds.length, 4);
      assert.deepEqual(ctx.fds.map((f) => bpfFdInfo(f.fd).kind), ['prog', 'map', 'map', 'map']);
      assert.equal(ctx.progId, bpfFdInfo(ctx.fds[0].fd).id);
      for (const f of ctx.fds) assert.equal(getCloexec(f.fd), true);
    } finally {
      ctx.close();
    }
    assert.deepEqual(threadNices().filter((t) => t.nice === 19), [], 'no thread is left at nice 19 after the load');
  }
  assert.ok(seen, 'a thread at nice 19 was seen during one of five loads');
  assert.equal(kernelBpfFds(), held, 'nothing of libbpf left open');
});

test('loadRssAsync: loads at once each read their own verifier log; a rejection is BPF_VERIFIER with the reason', async () => {
  needRoot('the verifier only runs for a privileged loader');
  const at = findInsn(obj, 'socket', (i) => i[0] === 0x71 && i[1] === 0x61 && i.readInt16LE(2) === 0);
  const reading = (off: number) => {
    const b = Buffer.from(obj);
    b.writeInt16LE(off, at + 2);
    return validateRssObject(b);
  };
  const held = kernelBpfFds();
  const outcomes = await Promise.allSettled([loadRssAsync(reading(1024), 0), loadRssAsync(validateRssObject(obj), 0), loadRssAsync(reading(600), 0)]);
  const [far, good, near] = outcomes;
  assert.equal(good.status, 'fulfilled');
  if (good.status === 'fulfilled') good.value.close();
  for (const [o, off] of [[far, 1024], [near, 600]] as const) {
    assert.equal(o.status, 'rejected');
    const e = (o as PromiseRejectedResult).reason as unknown;
    assert.ok(isVirtEbpfError(e, 'BPF_VERIFIER'), String(e));
    assert.match(e.message, new RegExp(`off=${off} size=1`));
    assert.doesNotMatch(e.message, new RegExp(`off=${off === 600 ? 1024 : 600} `));
  }
  assert.equal(kernelBpfFds(), held, 'the failed loads closed what they created');
});

test('a process that bound libbpf with its print callback cannot load off its thread: a programming error, said so', async () => {
  needRoot('loading BPF programs needs CAP_BPF');
  const r = spawnSync(process.execPath, [join(REPO, 'dist', 'test', 'fixtures', 'bpf', 'async-after-print.js')], { input: obj, encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.signal, null, `the process died of ${r.signal}`);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /quietLibbpf\(\)/);
});
