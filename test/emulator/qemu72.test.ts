/**
 * Debian 12's own QEMU 7.2, the real binary: fetched and unpacked (never installed) by
 * scripts/fetch-qemu72.sh into .cache/qemu-7.2. It has eBPF RSS built in but neither
 * request-ebpf nor an fd property, so the probe must report it unsupported with a reason that
 * says which version is needed. The same binary without its module directory is a real
 * "broken install" and must be reported as EMULATOR_EXITED with QEMU's own error.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { isVirtEbpfError } from '../../src/errors';
import { probeEmulator } from '../../src/emulator';
import { REPO, tempDir, watchFds } from '../harness';
import { liveChildren } from './fakes';

let emulator: string;
let env: Record<string, string> | undefined;
const tmp = tempDir('virt-ebpf-q72-');
let checkFds: () => void;

before(() => {
  checkFds = watchFds();
  // Idempotent: downloads only the first time (a few MB from the Debian archive).
  emulator = execFileSync('bash', [join(REPO, 'scripts', 'fetch-qemu72.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], timeout: 240_000 }).trim();
  const ld = join(REPO, '.cache', 'qemu-7.2', 'ld-library-path');
  if (existsSync(ld)) env = { LD_LIBRARY_PATH: readFileSync(ld, 'utf8').trim() };
});
after(() => {
  tmp.remove();
  checkFds();
  assert.deepEqual(liveChildren(), []);
});

test('QEMU 7.2 (Debian 12): supported=false, the reason names QEMU 9.0 and the upgrade', async () => {
  const { caps, fromCache } = await probeEmulator(emulator, { useCache: false, env, timeoutMs: 15_000 });
  assert.equal(fromCache, false);
  assert.equal(caps.version.major, 7);
  assert.equal(caps.version.minor, 2);
  assert.match(caps.version.package, /Debian 1:7\.2/);
  assert.equal(caps.supported, false);
  assert.equal(caps.protocol, null);
  assert.equal(caps.property, null);
  assert.match(caps.reason!, /no request-ebpf \(needs QEMU >= 9\.0\)/);
  assert.match(caps.reason!, /no ebpf_rss_fds property/);
  assert.match(caps.reason!, /upgrade QEMU/);
});

test('QEMU 7.2 cached as unsupported, re-used while unchanged', async () => {
  const cacheDir = join(tmp.path, 'cache');
  assert.equal((await probeEmulator(emulator, { cacheDir, env })).fromCache, false);
  const again = await probeEmulator(emulator, { cacheDir, env });
  assert.equal(again.fromCache, true);
  assert.equal(again.caps.supported, false);
});

test('QEMU 7.2 without its modules (a broken install): EMULATOR_EXITED carrying QEMU\'s error', async () => {
  // Relocatable QEMU looks for modules next to its binary first; alone in a directory it falls
  // back to the system module dir, which holds QEMU 10's modules, and refuses to start.
  mkdirSync(join(tmp.path, 'bin'));
  const lone = join(tmp.path, 'bin', 'qemu-system-x86_64');
  copyFileSync(emulator, lone);
  await assert.rejects(probeEmulator(lone, { useCache: false, env }), (e: unknown) => {
    assert.ok(isVirtEbpfError(e, 'EMULATOR_EXITED'), `got ${(e as Error).message}`);
    assert.match(e.message, /before greeting on QMP \(QEMU 7\.2/);
    assert.match(e.detail ?? '', /module/);
    return true;
  });
});
