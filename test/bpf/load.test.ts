/**
 * The privileged step against the real kernel: QEMU's object loaded as root, inspected through
 * /proc/self/fdinfo and bpftool, released on close(); a verifier rejection; and the refusal a
 * user without CAP_BPF gets (kernel.unprivileged_bpf_disabled=2 on the CI machine).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { loadRss, RSS_MAPS } from '../../src/bpf';
import { bpfFdInfo } from '../../src/fdpass';
import { getCloexec } from '../../src/sys/libc';
import { isVirtEbpfError } from '../../src/errors';
import { kernelBpfFds, largeAllocations, needRoot, REPO, watchFds } from '../harness';
import { rssObject } from './fixture';
import { findInsn } from './mutate';

let obj: Buffer;
const checkLeaks = watchFds();
before(async () => {
  obj = await rssObject();
});
after(() => checkLeaks());

function bpftoolShows(kind: 'prog' | 'map', id: number): boolean {
  const r = spawnSync('bpftool', ['-j', kind, 'show', 'id', String(id)], { encoding: 'utf8', timeout: 10_000 });
  return r.status === 0;
}

async function waitGone(kind: 'prog' | 'map', id: number): Promise<void> {
  // the kernel frees BPF objects after an RCU grace period, not at close()
  for (let i = 0; i < 60 && bpftoolShows(kind, id); i++) await new Promise((r) => setTimeout(r, 50));
  assert.equal(bpftoolShows(kind, id), false, `${kind} ${id} still exists after close()`);
}

test('root loads 1 socket-filter program and 3 mmapable array maps, in ebpf-rss-fds order', async () => {
  needRoot('loading BPF programs needs CAP_BPF');
  const held = kernelBpfFds();
  const ctx = loadRss(obj);
  try {
    assert.equal(ctx.fds.length, 4);
    // libbpf's own fds (and its BTF fd) were closed with the object: only our 4 duplicates remain
    assert.equal(kernelBpfFds() - held, 4);
    const [prog, ...maps] = ctx.fds.map((f) => bpfFdInfo(f.fd));
    assert.equal(prog.kind, 'prog');
    assert.equal(prog.type, 1, 'BPF_PROG_TYPE_SOCKET_FILTER');
    assert.equal(prog.id, ctx.progId);
    assert.deepEqual(
      maps.map((m) => ({
        kind: m.kind,
        type: m.type,
        key: Number(m.raw.key_size),
        value: Number(m.raw.value_size),
        entries: Number(m.raw.max_entries),
        mmapable: (Number(m.raw.map_flags) & 0x400) !== 0,
      })),
      RSS_MAPS.map((m) => ({ kind: 'map', type: 2, key: 4, value: m.valueSize, entries: m.maxEntries, mmapable: true })),
    );
    assert.deepEqual(ctx.mapIds, maps.map((m) => m.id));
    assert.equal(new Set([ctx.progId, ...ctx.mapIds]).size, 4);
    for (const f of ctx.fds) assert.equal(getCloexec(f.fd), true, `fd ${f.fd} is close-on-exec`);
    assert.ok(bpftoolShows('prog', ctx.progId));
    for (const id of ctx.mapIds) assert.ok(bpftoolShows('map', id));
  } finally {
    ctx.close();
  }
  ctx.close(); // idempotent
  assert.equal(kernelBpfFds(), held);
  assert.ok(ctx.fds.every((f) => !f.valid));
  await waitGone('prog', ctx.progId);
  for (const id of ctx.mapIds) await waitGone('map', id);
});

test('each load is a fresh context; a taken fd outlives close()', async () => {
  needRoot('loading BPF programs needs CAP_BPF');
  const a = loadRss(obj);
  const b = loadRss(obj);
  const taken = a.fds[3].take();
  try {
    assert.notEqual(a.progId, b.progId);
    assert.equal(a.mapIds.filter((id) => b.mapIds.includes(id)).length, 0);
    a.close();
    assert.equal(bpfFdInfo(taken).id, a.mapIds[2], 'the taken indirection-table fd is still open');
  } finally {
    a.close();
    b.close();
    new (await import('../../src/fdpass')).OwnedFd(taken).close();
  }
});

test('a program the verifier rejects is BPF_VERIFIER with the log in detail', () => {
  needRoot('the verifier only runs for a privileged loader');
  // Read the configuration value far past its 10 bytes (`r1 = *(u8 *)(r6 + 0)` gets offset 1024):
  // still a valid ELF with the same shape, but an out-of-bounds map access the verifier must refuse.
  const broken = Buffer.from(obj);
  const at = findInsn(broken, 'socket', (i) => i[0] === 0x71 && i[1] === 0x61 && i.readInt16LE(2) === 0);
  broken.writeInt16LE(1024, at + 2);
  const held = kernelBpfFds();
  assert.throws(
    () => loadRss(broken).close(),
    (e: unknown) => {
      assert.ok(isVirtEbpfError(e, 'BPF_VERIFIER'), `expected BPF_VERIFIER, got ${String(e)}\n${(e as { detail?: string }).detail ?? ''}`);
      assert.match(e.message, /^the kernel verifier rejected tun_rss_steering_prog: at instruction \d+ \(r1 = \*\(u8 \*\)\(r6 \+1024\)\): invalid access to map value, value_size=10 off=1024 size=1/);
      assert.ok(e.message.length < 250, 'the message is a summary');
      assert.match(e.detail ?? '', /processed \d+ insns/);
      assert.match(e.detail ?? '', /libbpf: prog 'tun_rss_steering_prog': BPF program load failed/);
      assert.equal(e.fields.errno, 13, 'EACCES from the verifier is not a permission problem');
      return true;
    },
  );
  assert.equal(kernelBpfFds(), held, 'maps created before the failed program load were closed');
});

test('loads share one verifier-log buffer: a failure reads its own log, and loads leave no buffer each behind', async () => {
  needRoot('the verifier only runs for a privileged loader');
  const mutated = (match: (i: Buffer) => boolean, patch: (b: Buffer, at: number) => void): Buffer => {
    const b = Buffer.from(obj);
    patch(b, findInsn(b, 'socket', match));
    return b;
  };
  // Two different out-of-bounds reads: the second failure's reason is its own, not the first's.
  const far = mutated((i) => i[0] === 0x71 && i[1] === 0x61 && i.readInt16LE(2) === 0, (b, at) => b.writeInt16LE(1024, at + 2));
  const near = mutated((i) => i[0] === 0x71 && i[1] === 0x61 && i.readInt16LE(2) === 0, (b, at) => b.writeInt16LE(600, at + 2));
  const reason = (bytes: Buffer): string => {
    try {
      loadRss(bytes).close();
    } catch (e) {
      assert.ok(isVirtEbpfError(e, 'BPF_VERIFIER'), String(e));
      return e.message;
    }
    throw new Error('the mutated object loaded');
  };
  assert.match(reason(far), /off=1024 size=1/);
  const second = reason(near);
  assert.match(second, /r6 \+600\).*off=600 size=1/);
  assert.doesNotMatch(second, /1024/);
  // A 1 MiB buffer per load stays allocated until the thread's next garbage collection (a
  // thread of loads piled up ~20 MiB of them): loads after the first allocate no log buffer.
  const big = await largeAllocations(1 << 20, () => {
    for (let i = 0; i < 10; i++) loadRss(obj).close();
  });
  assert.equal(big, 0, `10 loads allocated ${big} log buffers`);
});

test('a load nested in a rejected one (from its libbpf messages) leaves the outer one its own log', () => {
  needRoot('the verifier only runs for a privileged loader');
  const broken = Buffer.from(obj);
  broken.writeInt16LE(1024, findInsn(broken, 'socket', (i) => i[0] === 0x71 && i[1] === 0x61 && i.readInt16LE(2) === 0) + 2);
  let nested = 0;
  assert.throws(
    () =>
      loadRss(broken, {
        onLibbpfMessage: (_level, text) => {
          // After the kernel wrote the outer load's log, before libbpf's caller reads it.
          if (nested === 0 && /BPF program load failed/.test(text)) {
            nested++;
            loadRss(obj).close();
          }
        },
      }).close(),
    (e: unknown) => isVirtEbpfError(e, 'BPF_VERIFIER') && /off=1024 size=1/.test(e.message),
  );
  assert.equal(nested, 1, 'the nested load ran');
});

test('without privileges: BPF_PERMISSION telling the user to run as root', () => {
  needRoot('dropping to another user needs root first');
  const child = join(REPO, 'dist', 'test', 'fixtures', 'bpf', 'load-as-nobody.js');
  const r = spawnSync(process.execPath, [child, '65534', '65534'], { input: obj, encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, `child failed: ${r.stderr}`);
  const out = JSON.parse(r.stdout) as Record<string, unknown>;
  assert.equal(out.uid, 65534);
  assert.equal(out.euid, 65534);
  assert.equal(out.code, 'BPF_PERMISSION', JSON.stringify(out));
  assert.equal(out.errno, 1, 'EPERM');
  assert.equal(out.remedy, 'loading BPF needs root/CAP_BPF; run as root');
  assert.match(String(out.message), /loading BPF was refused: Operation not permitted/);
});

test('a refused load after a rejected one reads no log of the rejected one (the log buffer is shared)', () => {
  needRoot('the first load runs the verifier as root, then the child drops to nobody');
  const child = join(REPO, 'dist', 'test', 'fixtures', 'bpf', 'load-as-nobody.js');
  const r = spawnSync(process.execPath, [child, '65534', '65534', 'after-rejected'], { input: obj, encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, `child failed: ${r.stderr}`);
  const out = JSON.parse(r.stdout) as Record<string, unknown>;
  assert.equal(out.before, 'BPF_VERIFIER', 'the first load, as root, was rejected by the verifier');
  assert.equal(out.code, 'BPF_PERMISSION', `the second is refused for what it is: ${JSON.stringify(out)}`);
  assert.doesNotMatch(`${String(out.message)}\n${String(out.detail ?? '')}`, /1024/, 'nothing of the first load\'s verifier log');
});
