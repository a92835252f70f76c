/**
 * fd passing: the fds another process receives are the very kernel objects we loaded (same
 * prog/map ids from its own fdinfo), received close-on-exec, and an over-full message is
 * refused without leaking anything.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { bpfFdInfo, closeAll, OwnedFd, sendFds } from '../../src/fdpass';
import { loadRss } from '../../src/bpf';
import * as libc from '../../src/sys/libc';
import { rssObject } from '../bpf/fixture';
import { gone, REPO, needRoot, watchFds } from '../harness';

const RECEIVER = join(REPO, 'dist/test/fixtures/fdpass/receiver.js');

async function receive(fds: number[], max: number): Promise<any> {
  const [ours, theirs] = libc.socketpair();
  try {
    const child = spawn(process.execPath, [RECEIVER, String(max)], { stdio: ['ignore', 'pipe', 'inherit', theirs] });
    libc.close(theirs);
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    sendFds(ours, fds, Buffer.from([42]));
    await gone(child); // the output is whole once its stdout closes
    return JSON.parse(out);
  } finally {
    libc.close(ours);
  }
}

test('fds received in another process are the same kernel objects, close-on-exec', async () => {
  needRoot('loads BPF');
  const check = watchFds();
  const ctx = loadRss(await rssObject());
  try {
    const mine = ctx.fds.map((f) => bpfFdInfo(f.fd));
    const got = await receive(ctx.fds.map((f) => f.fd), 16);
    assert.equal(got.ok, true);
    assert.deepEqual(got.payload, [42]);
    assert.deepEqual(
      got.fds.map((f: any) => [f.kind, f.id]),
      mine.map((i) => [i.kind, i.id]),
      'same prog/map ids, same order',
    );
    assert.deepEqual([ctx.progId, ...ctx.mapIds], mine.map((i) => i.id));
    assert.ok(got.fds.every((f: any) => f.cloexec === true), 'received fds are close-on-exec until someone clears it on purpose');
  } finally {
    ctx.close();
  }
  check();
});

test('more fds than the receiver accepts: refused (FD_PASS), nothing leaks', async () => {
  needRoot('uses BPF-free fds but runs with the suite');
  const check = watchFds();
  const many = Array.from({ length: 20 }, () => openSync('/dev/null', 'r'));
  try {
    const got = await receive(many, 4);
    assert.deepEqual(got, { ok: false, code: 'FD_PASS' });
  } finally {
    many.forEach((f) => closeSync(f));
  }
  check();
});

test('OwnedFd: take() moves ownership, close() is once, use after move is caught', () => {
  const a = new OwnedFd(openSync('/dev/null', 'r'));
  const n = a.take();
  assert.equal(a.valid, false);
  assert.throws(() => a.fd, /after close\(\) or take\(\)/);
  a.close(); // no-op: it no longer owns n
  const b = new OwnedFd(n);
  b.close();
  b.close();
  assert.throws(() => libc.getCloexec(n), /EBADF|Bad file/);
  assert.throws(() => new OwnedFd(-1), RangeError);
  closeAll([]);
});
