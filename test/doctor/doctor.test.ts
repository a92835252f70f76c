/**
 * doctor against a scratch install: every failing check names its fix, and the exit code is
 * non-zero exactly when something needed is missing (broker down, a wrapper modified or stale).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, copyFileSync, existsSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { install } from '../../src/install/apply';
import { hostFacts } from '../../src/install/host';
import { runChecks, formatChecks, doctorExitCode, CheckResult } from '../../src/doctor';
import { spawn } from 'node:child_process';
import { QEMU, REPO, needRoot, tempDir, trustedDir } from '../harness';
import { scratchPaths, trustedPrefix } from '../install/scratch';

const find = (rs: CheckResult[], name: string) => rs.find((r) => r.name === name || r.name.startsWith(name))!;

test('doctor: broker down, modified and stale wrappers fail with their fix; all green exits 0', async () => {
  needRoot('installs into a scratch root and runs a broker');
  const d = tempDir();
  const bin = trustedDir('doctor');
  const copy = join(bin, 'qemu-system-x86_64');
  copyFileSync(QEMU, copy);
  const socket = join(d.path, 'broker.sock');
  const paths = scratchPaths(d.path);
  const opts = { cacheDir: join(d.path, 'cache'), socket, manifest: paths.manifest, emulators: [copy] };
  install({ ...hostFacts({ prefix: trustedPrefix(), emulators: [copy], paths }), systemd: false, apparmor: false, apt: false }, { rescan: false });
  try {
    let rs = await runChecks(opts);
    assert.equal(find(rs, 'broker').verdict, 'fail');
    assert.equal(find(rs, 'shims').verdict, 'ok', 'the start-path shims are built');
    assert.match(find(rs, 'broker').fix!, /virt-ebpf broker/);
    assert.equal(doctorExitCode(rs), 1);
    assert.match(formatChecks(rs), /FAIL\s+broker[\s\S]*fix: /);

    // A broker process of its own: the client is blocking (as in the wrapper), so an
    // in-process broker could never answer it.
    const cfg = join(d.path, 'broker.json');
    writeFileSync(cfg, JSON.stringify({ socket, cacheDir: opts.cacheDir, pool: { size: 0 } }));
    const broker = spawn(process.execPath, [join(REPO, 'dist/src/cli/main.js'), 'broker', '--config', cfg], { stdio: 'ignore' });
    const exited = new Promise((r) => broker.once('exit', r));
    for (let i = 0; i < 100 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 50));
    try {
      rs = await runChecks(opts);
      assert.equal(find(rs, 'broker').verdict, 'ok');
      assert.equal(find(rs, `emulator ${copy}`).verdict, 'ok');
      assert.equal(find(rs, 'wrapper capability freshness').verdict, 'ok');
      assert.equal(doctorExitCode(rs), 0, formatChecks(rs));

      utimesSync(copy, new Date(), new Date()); // QEMU "upgraded" behind libvirt's back
      rs = await runChecks(opts);
      const fresh = find(rs, 'wrapper capability freshness');
      assert.equal(fresh.verdict, 'fail');
      assert.equal(fresh.fix, 'virt-ebpf refresh');
      assert.equal(doctorExitCode(rs), 1);

      appendFileSync(join(paths.wrapperDir, 'qemu-system-x86_64'), '# edited\n');
      rs = await runChecks(opts);
      const w = find(rs, `wrapper ${join(paths.wrapperDir, 'qemu-system-x86_64')}`);
      assert.equal(w.verdict, 'fail');
      assert.equal(w.detail, 'modified');
      assert.match(w.fix!, /virt-ebpf install/);
    } finally {
      broker.kill('SIGTERM');
      await exited;
    }
  } finally {
    d.remove();
  }
});
