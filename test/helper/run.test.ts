import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { runHelper } from '../../src/helper';
import { bpfFdInfo, closeAll, type OwnedFd } from '../../src/fdpass';
import { isVirtEbpfError, type ErrorCode } from '../../src/errors';
import * as libc from '../../src/sys/libc';
import { needRoot, niceOf, tempDir, watchFds } from '../harness';
import { buildHelperDoubles, processesMentioning, type HelperDoubles, type HelperVariant } from './doubles';

const BPF_PROG_TYPE_SOCKET_FILTER = 1;
const BPF_MAP_TYPE_ARRAY = 2;
const BPF_F_MMAPABLE = 0x400;
let doubles: HelperDoubles;
let checkFds: () => void;
const tmp = tempDir('virt-ebpf-helper-run-');

before(async () => {
  needRoot('helpers load BPF and must be root-owned to be trusted');
  doubles = await buildHelperDoubles();
  checkFds = watchFds();
});

after(() => {
  tmp.remove();
  checkFds();
  assert.deepEqual(processesMentioning(doubles.dir), [], 'a helper outlived the suite');
});

/** SIGKILL is delivered asynchronously: give a killed process a moment to disappear. */
async function noLeftovers(): Promise<void> {
  for (let i = 0; i < 20 && processesMentioning(doubles.dir).length > 0; i++) await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(processesMentioning(doubles.dir), [], 'a helper was not reaped');
}

async function expectCode(variant: HelperVariant, code: ErrorCode, re: RegExp, timeoutMs = 5_000): Promise<{ ms: number; detail?: string }> {
  const t0 = Date.now();
  let detail: string | undefined;
  await assert.rejects(runHelper(doubles.helpers[variant], { emulatorPath: doubles.emulator, timeoutMs }), (e: unknown) => {
    assert.ok(isVirtEbpfError(e, code), `${variant}: expected ${code}, got ${String(e)}`);
    assert.match(e.message, re);
    assert.ok(!e.message.includes('\n'), 'one-line message');
    assert.ok(e.remedy.length > 0);
    detail = e.detail;
    return true;
  });
  await noLeftovers();
  return { ms: Date.now() - t0, detail };
}

test('the good helper hands over 1 program + 3 maps that outlive it', async () => {
  let fds: OwnedFd[] = [];
  try {
    fds = await runHelper(doubles.helpers.good, { emulatorPath: doubles.emulator, timeoutMs: 15_000 });
    // runHelper returns after the helper was reaped: these are our own references now
    await noLeftovers();
    const infos = fds.map((f) => bpfFdInfo(f.fd));
    assert.deepEqual(infos.map((i) => i.kind), ['prog', 'map', 'map', 'map']);
    assert.equal(infos[0].type, BPF_PROG_TYPE_SOCKET_FILTER);
    assert.ok(infos.slice(1).every((i) => i.type === BPF_MAP_TYPE_ARRAY));
    // QEMU mmaps the maps instead of calling bpf(): they must be BPF_F_MMAPABLE
    assert.ok(infos.slice(1).every((i) => (Number(i.raw.map_flags) & BPF_F_MMAPABLE) !== 0));
    assert.equal(new Set(infos.map((i) => i.id)).size, 4);
    assert.ok(fds.every((f) => libc.getCloexec(f.fd)), 'received fds must not leak into our next child');
  } finally {
    closeAll(fds);
  }
});

test('fewer or more fds than the caller expects is a failure, and they are closed', async () => {
  const before = watchFds();
  await assert.rejects(
    runHelper(doubles.helpers.good, { emulatorPath: doubles.emulator, timeoutMs: 15_000, expectFds: { min: 2, max: 2 } }),
    (e: unknown) => isVirtEbpfError(e, 'HELPER_FAILED') && /sent 4 fds, expected 2$/.test(e.message),
  );
  before();
  await noLeftovers();
});

test('two helpers at once each get their own fds', async () => {
  const runs = await Promise.all([0, 1].map(() => runHelper(doubles.helpers.good, { emulatorPath: doubles.emulator, timeoutMs: 20_000 })));
  try {
    const ids = runs.flat().map((f) => bpfFdInfo(f.fd).id);
    assert.equal(new Set(ids).size, 8);
  } finally {
    runs.forEach((fds) => closeAll(fds));
  }
  await noLeftovers();
});

test('a helper from another build is refused before it runs', async () => {
  rmSync(doubles.marker('wrongStamp'), { force: true });
  await expectCode('wrongStamp', 'HELPER_STAMP_MISMATCH', /is stamped .* but emulator/);
  assert.equal(existsSync(doubles.marker('wrongStamp')), false, 'the mismatched helper was executed');
});

test('a group-writable helper is refused without being executed', async () => {
  const marker = doubles.marker('groupWritable');
  rmSync(marker, { force: true });
  await expectCode('groupWritable', 'HELPER_UNTRUSTED', /writable by group or others/);
  assert.equal(existsSync(marker), false, 'the untrusted helper was executed');
  // control: executing it does leave the marker, so its absence above means something
  spawnSync(doubles.helpers.groupWritable, [], { stdio: 'ignore', timeout: 10_000 });
  assert.equal(existsSync(marker), true);
  rmSync(marker);
});

test('a helper outside trusted directories (/tmp) is refused', async () => {
  const copy = join(tmp.path, 'qemu-ebpf-rss-helper');
  copyFileSync(doubles.helpers.good, copy);
  await assert.rejects(runHelper(copy, { emulatorPath: doubles.emulator }), (e: unknown) => isVirtEbpfError(e, 'HELPER_UNTRUSTED'));
  await assert.rejects(runHelper(join(tmp.path, 'absent'), { emulatorPath: doubles.emulator }), (e: unknown) => isVirtEbpfError(e, 'HELPER_NOT_FOUND'));
});

test('a helper that cannot be executed is HELPER_FAILED, with the reason', async () => {
  rmSync(doubles.marker('notExecutable'), { force: true });
  await expectCode('notExecutable', 'HELPER_FAILED', /could not start: spawn .* EACCES$/);
  assert.equal(existsSync(doubles.marker('notExecutable')), false);
});

test('a failing helper reports its exit code and stderr', async () => {
  const { detail } = await expectCode('fails', 'HELPER_FAILED', /exited with code 1: qemu-ebpf-rss-helper: loading eBPF RSS failed: Operation not permitted$/);
  assert.match(detail ?? '', /loading eBPF RSS failed/);
});

test('a hanging helper is killed at the timeout and reaped', async () => {
  const { ms } = await expectCode('hangs', 'HELPER_TIMEOUT', /did not exit within 2000 ms and was killed/, 2_000);
  assert.ok(ms >= 1_900 && ms < 3_500, `took ${ms} ms`);
});

test('a helper that exits 0 but leaves a process holding the socket: no fds, its group killed', async () => {
  const { ms } = await expectCode('leavesGrandchild', 'HELPER_NO_FDS', /exited without sending fds and left a process holding its socket \(killed\)/);
  assert.ok(ms < 3_000, `took ${ms} ms`);
});

test('exit 0 without a message is HELPER_NO_FDS', async () => {
  await expectCode('exitsWithoutFds', 'HELPER_NO_FDS', /exited successfully without sending fds/);
});

test('a message without SCM_RIGHTS is HELPER_NO_FDS', async () => {
  await expectCode('sendsEmptyMessage', 'HELPER_NO_FDS', /sent a message without fds/);
});

test('a helper run for a pool refill runs at the nice it was given (19), the broker at its own', async () => {
  needRoot('the helper protocol hands over BPF fds a privileged helper loads');
  const own = niceOf(process.pid);
  assert.ok(own < 19, `this test runs below nice 19 (it runs at ${own})`);
  const run = runHelper(doubles.helpers.hangs, { emulatorPath: doubles.emulator, timeoutMs: 3_000, nice: 19 });
  const seen = new Set<number>();
  let settled = false;
  const outcome = run.then(
    () => 'resolved',
    (e: unknown) => (isVirtEbpfError(e, 'HELPER_TIMEOUT') ? 'timed out' : String(e)),
  ).finally(() => (settled = true));
  while (!settled) {
    for (const p of processesMentioning(doubles.dir)) {
      try {
        seen.add(niceOf(p.pid));
      } catch {
        /* exited meanwhile */
      }
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(await outcome, 'timed out');
  assert.deepEqual([...seen], [19], 'the helper ran at nice 19');
  assert.equal(niceOf(process.pid), own, 'the caller kept its nice');
  await noLeftovers();
});
