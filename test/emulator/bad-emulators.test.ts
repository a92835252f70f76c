/**
 * probeEmulator on things that are not a working QEMU: each gives its own error code with a
 * remedy, quickly, and leaves no process behind (the whole process group is killed and our
 * child reaped). Also the fake-emulator round trip for the helper protocol.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ErrorCode, VirtEbpfError, isVirtEbpfError } from '../../src/errors';
import { probeEmulator, ProbeOptions } from '../../src/emulator';
import { tempDir, watchFds } from '../harness';
import { GREETING_LINE, isDead, liveChildren, replayEmulator, writeScript } from './fakes';

const tmp = tempDir('virt-ebpf-bad-emu-');
let checkFds: () => void;
before(() => {
  checkFds = watchFds();
});
after(() => {
  tmp.remove();
  checkFds();
  assert.deepEqual(liveChildren(), [], 'no child process left running');
});

const NO_CACHE: ProbeOptions = { useCache: false, timeoutMs: 5000 };

async function expectProbeError(code: ErrorCode, withinMs: number, path: string, opts: ProbeOptions = NO_CACHE): Promise<VirtEbpfError> {
  const t0 = Date.now();
  let caught: unknown;
  try {
    await probeEmulator(path, opts);
  } catch (e) {
    caught = e;
  }
  const elapsed = Date.now() - t0;
  assert.ok(caught !== undefined, `${path}: expected ${code}, but the probe succeeded`);
  assert.ok(isVirtEbpfError(caught, code), `${path}: expected ${code}, got ${(caught as { code?: string }).code}: ${(caught as Error).message}`);
  assert.ok(caught.remedy.length > 10, 'error has a remedy');
  assert.ok(elapsed < withinMs, `${code} took ${elapsed} ms (limit ${withinMs})`);
  assert.deepEqual(liveChildren(), [], 'probe left a child running');
  return caught;
}

test('missing path: EMULATOR_NOT_FOUND', async () => {
  await expectProbeError('EMULATOR_NOT_FOUND', 100, join(tmp.path, 'no-such-qemu'));
});

test('bare name not on PATH: EMULATOR_NOT_FOUND', async () => {
  const e = await expectProbeError('EMULATOR_NOT_FOUND', 100, 'qemu-system-nonexistent', { ...NO_CACHE, searchPath: `${tmp.path}:/usr/bin` });
  assert.match(e.message, /on PATH/);
});

test('bare name resolved through PATH', async () => {
  const dir = join(tmp.path, 'pathdir');
  mkdirSync(dir);
  replayEmulator(dir, 'qemu-system-fake', 'qemu-7.2.22.json');
  const r = await probeEmulator('qemu-system-fake', { ...NO_CACHE, searchPath: `/nonexistent:${dir}` });
  assert.equal(r.caps.path, 'qemu-system-fake');
  assert.equal(r.caps.realpath, join(dir, 'qemu-system-fake'));
});

test('file without execute permission: EMULATOR_NOT_EXECUTABLE', async () => {
  const f = writeScript(tmp.path, 'not-exec', 'exit 0', 0o644);
  const e = await expectProbeError('EMULATOR_NOT_EXECUTABLE', 100, f);
  assert.match(e.message, /no execute permission/);
  const dir = join(tmp.path, 'only-non-exec');
  mkdirSync(dir);
  writeScript(dir, 'qemu-system-x', 'exit 0', 0o644);
  await expectProbeError('EMULATOR_NOT_EXECUTABLE', 100, 'qemu-system-x', { ...NO_CACHE, searchPath: dir });
});

test('a directory: EMULATOR_NOT_EXECUTABLE', async () => {
  const e = await expectProbeError('EMULATOR_NOT_EXECUTABLE', 100, tmp.path);
  assert.match(e.message, /directory/);
});

test('/bin/true (exits 0, no greeting): EMULATOR_NOT_QEMU', async () => {
  await expectProbeError('EMULATOR_NOT_QEMU', 2000, '/bin/true');
});

test('/bin/sleep (rejects QEMU options): EMULATOR_NOT_QEMU', async () => {
  const e = await expectProbeError('EMULATOR_NOT_QEMU', 2000, '/bin/sleep');
  assert.match(e.detail ?? '', /sleep/, 'its stderr is kept as detail');
});

test('a script that hangs: EMULATOR_TIMEOUT at the deadline, and its whole process group is killed', async () => {
  const pidFile = join(tmp.path, 'hang.pid');
  const f = writeScript(tmp.path, 'hangs', `sleep 1000 & echo $! > '${pidFile}'\nwait`);
  const e = await expectProbeError('EMULATOR_TIMEOUT', 1500, f, { useCache: false, timeoutMs: 300 });
  assert.ok(isDead(e.fields.pid as number), 'the emulator process is gone');
  const grandchild = Number(readFileSync(pidFile, 'utf8'));
  for (let i = 0; i < 50 && !isDead(grandchild); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(isDead(grandchild), 'its child (same process group) is gone too');
});

test('garbage on the QMP socket: EMULATOR_NOT_QEMU, without waiting for the timeout', async () => {
  const f = writeScript(tmp.path, 'garbage', `echo 'Welcome to the garbage service' >&3\nexec sleep 1000`);
  const e = await expectProbeError('EMULATOR_NOT_QEMU', 1500, f, { useCache: false, timeoutMs: 3000 });
  assert.match(e.message, /does not speak QMP/);
});

test('closes the QMP socket but keeps running: EMULATOR_NOT_QEMU', async () => {
  const f = writeScript(tmp.path, 'closes', `exec 3>&-\nexec sleep 1000`);
  await expectProbeError('EMULATOR_NOT_QEMU', 2500, f, { useCache: false, timeoutMs: 3000 });
});

test('a QEMU that cannot start: EMULATOR_EXITED with the tail of its stderr', async () => {
  // Answers -version like QEMU (so it is one), but fails to start like a broken install does.
  const f = writeScript(
    tmp.path,
    'broken-qemu',
    `case "$1" in -version) echo 'QEMU emulator version 10.0.2 (fake)'; exit 0;; esac\necho 'qemu-system-x86_64: some early warning' >&2\necho "qemu-system-x86_64: fatal: could not load module for type 'tcg-accel-ops'" >&2\nexit 1`,
  );
  const e = await expectProbeError('EMULATOR_EXITED', 2000, f);
  assert.match(e.message, /exited with status 1 before greeting on QMP \(QEMU 10\.0\.2\): .*could not load module/);
  assert.match(e.detail!, /some early warning/);
  assert.equal((e.fields.exit as { code: number }).code, 1);
});

test('dies in the middle of the probe: EMULATOR_EXITED', async () => {
  const f = writeScript(tmp.path, 'dies', `printf '%s\\r\\n' '${GREETING_LINE}' >&3\nread -r line <&3\nprintf '{"return": {}, "id": 1}\\r\\n' >&3\necho 'boom: assertion failed' >&2\nexit 134`);
  const e = await expectProbeError('EMULATOR_EXITED', 2000, f);
  assert.match(e.message, /during the probe: boom/);
});

test('greets, then never answers: EMULATOR_TIMEOUT', async () => {
  const f = writeScript(tmp.path, 'mute', `printf '%s\\r\\n' '${GREETING_LINE}' >&3\nexec sleep 1000`);
  const e = await expectProbeError('EMULATOR_TIMEOUT', 1500, f, { useCache: false, timeoutMs: 400 });
  assert.match(e.message, /answer QMP/);
});

test('fake helper-protocol emulator (replayed transcript): supported through the helper, end to end', async () => {
  const f = replayEmulator(tmp.path, 'qemu-system-helper', 'synthetic-helper-6.1.json');
  const { caps, fromCache, transcript } = await probeEmulator(f, { ...NO_CACHE, record: true });
  assert.equal(fromCache, false);
  assert.equal(caps.supported, true);
  assert.equal(caps.protocol, 'helper');
  assert.deepEqual(caps.property, { name: 'ebpf_rss_fds', type: 'string' });
  assert.equal(caps.helperPath, '/usr/libexec/qemu-ebpf-rss-helper');
  assert.deepEqual(
    transcript!.exchanges.map((x) => x.execute),
    ['qmp_capabilities', 'query-version', 'query-commands', 'device-list-properties', 'query-helper-paths'],
  );
});

test('fake QEMU 7.2 (replayed transcript): a result with supported=false, not an exception', async () => {
  const f = replayEmulator(tmp.path, 'qemu-system-72', 'qemu-7.2.22.json');
  const { caps } = await probeEmulator(f, NO_CACHE);
  assert.equal(caps.supported, false);
  assert.match(caps.reason!, /9\.0/);
});

test('an emulator that writes its own cache path is not trusted blindly: corrupt entries are re-probed', async () => {
  // (covered in depth in probe.test.ts; here only: a garbage file under the right name is a miss)
  const cacheDir = join(tmp.path, 'cache');
  const f = replayEmulator(tmp.path, 'qemu-system-c', 'synthetic-helper-6.1.json');
  const first = await probeEmulator(f, { cacheDir, timeoutMs: 5000 });
  assert.equal(first.fromCache, false);
  const { cacheFile } = await import('../../src/emulator');
  writeFileSync(cacheFile(cacheDir, first.caps.realpath), '{"format":1,"caps":{"supported":true}}');
  const again = await probeEmulator(f, { cacheDir, timeoutMs: 5000 });
  assert.equal(again.fromCache, false);
  assert.equal((await probeEmulator(f, { cacheDir, timeoutMs: 5000 })).fromCache, true);
});
