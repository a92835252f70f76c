/**
 * install/uninstall/refresh into a scratch root (every path overridden): exactly the planned
 * files with their modes, a manifest, the user's config kept, uninstall removes exactly what
 * install wrote, refresh rewrites a wrapper only when its QEMU changed.
 */
import { test } from 'node:test';
import { spawnSync } from 'node:child_process';
import assert from 'node:assert/strict';
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync, utimesSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { install, uninstall, refreshWrappers } from '../../src/install/apply';
import { staleWrappers } from '../../src/install/manifest';
import { readManifest } from '../../src/install/manifest';
import { installPlan } from '../../src/install/plan';
import { hostFacts } from '../../src/install/host';
import { parseWrapper } from '../../src/install/wrapper-script';
import { QEMU, REPO, needRoot, tempDir, trustedDir } from '../harness';
import { allFiles, scratchPaths, trustedPrefix } from './scratch';
import { BROKER_NODE_FLAGS } from '../../src/broker/v8';

test('install writes exactly the plan, uninstall removes exactly that, the user\'s config survives', () => {
  needRoot('writes root-owned files');
  const d = tempDir();
  try {
    const paths = scratchPaths(d.path);
    const prefix = trustedPrefix();
    const facts = { ...hostFacts({ prefix, emulators: [QEMU], paths }), systemd: true, apparmor: true, apt: true };
    const plan = installPlan(facts);
    assert.deepEqual(plan.map((a) => a.kind).sort(), ['apparmor', 'apt', 'config', 'hook', 'launcher', 'unit', 'unit', 'wrapper']);
    const r = install(facts, { rescan: false });
    assert.deepEqual(r.written.sort(), plan.map((a) => a.path).sort());
    for (const a of plan) {
      assert.equal(readFileSync(a.path, 'utf8'), a.content);
      assert.equal(statSync(a.path).mode & 0o777, a.mode, a.path);
    }
    const wrapper = parseWrapper(readFileSync(join(paths.wrapperDir, 'qemu-system-x86_64'), 'utf8'));
    assert.equal(wrapper?.real, QEMU);
    assert.equal(wrapper?.shim, join(prefix, 'dist/shims/vebpf-wrapper'), 'the C wrapper shim, named absolutely');
    const hook = readFileSync(paths.hookFile, 'utf8');
    assert.equal(hook.split('\n')[0], `#!${prefix}/dist/shims/vebpf-hook`, 'the kernel runs the C hook shim: no shell');
    assert.match(hook, new RegExp(`^node=${process.execPath}$`, 'm'));
    assert.match(hook, new RegExp(`^hook=${prefix}/dist/src/hook/main\\.js$`, 'm'));
    assert.match(readFileSync(join(paths.unitDir, 'virt-ebpfd.service'), 'utf8'), new RegExp(`ExecStart=${process.execPath} ${BROKER_NODE_FLAGS.join(' ')} \\S+/dist/src/cli/main.js broker`));
    assert.equal(readManifest(paths.manifest)!.entries.length, plan.length);

    // the user edits the config; a second install keeps it, uninstall keeps it too
    writeFileSync(paths.configFile, '{"policy":"fallback"}\n');
    const wrapperCtime = statSync(join(paths.wrapperDir, 'qemu-system-x86_64')).ctimeMs;
    const again = install(facts, { rescan: false });
    assert.deepEqual(again.written, [], 'nothing changed, nothing rewritten');
    assert.equal(statSync(join(paths.wrapperDir, 'qemu-system-x86_64')).ctimeMs, wrapperCtime, 'an unchanged wrapper keeps its ctime: libvirt does not re-probe');
    assert.equal(readFileSync(paths.configFile, 'utf8'), '{"policy":"fallback"}\n');
    const u = uninstall(paths.manifest, { rescan: false });
    assert.deepEqual(u.kept, [{ path: paths.configFile, why: 'edited since install' }]);
    assert.deepEqual(allFiles(d.path), [paths.configFile], 'nothing else is left');
  } finally {
    d.remove();
  }
});

test('uninstall removes the directories it emptied, but never a sticky one (a fresh /tmp is empty too)', () => {
  needRoot('writes root-owned files');
  const d = tempDir();
  try {
    const shared = join(d.path, 'tmp');
    mkdirSync(shared);
    chmodSync(shared, 0o1777);
    const paths = scratchPaths(join(shared, 'scratch'));
    install({ ...hostFacts({ prefix: REPO, emulators: [QEMU], paths }), systemd: false, apparmor: false, apt: false }, { rescan: false });
    uninstall(paths.manifest, { rescan: false });
    assert.ok(!existsSync(join(shared, 'scratch')), 'the directories install made are gone');
    assert.ok(existsSync(shared), 'the sticky directory stays, empty as it is');
  } finally {
    d.remove();
  }
});

test('a config the user had before install is never ours: kept, not in the manifest', () => {
  needRoot('writes root-owned files');
  const d = tempDir();
  try {
    const paths = scratchPaths(d.path);
    install({ ...hostFacts({ prefix: trustedPrefix(), emulators: [QEMU], paths }), systemd: false, apparmor: false, apt: false }, { rescan: false });
    uninstall(paths.manifest, { rescan: false });
    mkdirSync(dirname(paths.configFile), { recursive: true });
    writeFileSync(paths.configFile, '{"pool":{"size":4}}\n');
    const r = install({ ...hostFacts({ prefix: trustedPrefix(), emulators: [QEMU], paths }), systemd: false, apparmor: false, apt: false }, { rescan: false });
    assert.deepEqual(r.kept, [paths.configFile]);
    assert.ok(!readManifest(paths.manifest)!.entries.some((e) => e.path === paths.configFile));
    uninstall(paths.manifest, { rescan: false });
    assert.equal(readFileSync(paths.configFile, 'utf8'), '{"pool":{"size":4}}\n');
  } finally {
    d.remove();
  }
});

test('refresh rewrites (new ctime) only the wrapper whose QEMU changed', async () => {
  needRoot('copies QEMU into a trusted dir');
  const d = tempDir();
  const bin = trustedDir('install-refresh');
  const copy = join(bin, 'qemu-system-x86_64');
  try {
    copyFileSync(QEMU, copy);
    const paths = scratchPaths(d.path);
    install({ ...hostFacts({ prefix: trustedPrefix(), emulators: [copy], paths }), systemd: false, apparmor: false, apt: false }, { rescan: false });
    const w = join(paths.wrapperDir, 'qemu-system-x86_64');
    assert.deepEqual(refreshWrappers(paths.manifest), { refreshed: [], missing: [] });
    const before = statSync(w).ctimeMs;
    const content = readFileSync(w, 'utf8');
    assert.deepEqual(staleWrappers(paths.manifest), []);
    await new Promise((r) => setTimeout(r, 20));
    utimesSync(copy, new Date(), new Date(Date.now() - 1000)); // an "upgrade": new mtime, new ctime
    assert.deepEqual(staleWrappers(paths.manifest).map((s) => s.real), [copy]);
    const r = refreshWrappers(paths.manifest);
    assert.deepEqual(r.refreshed.map((x) => x.real), [copy]);
    assert.ok(Math.floor(statSync(w).ctimeMs / 1000) > Math.floor(before / 1000), "the wrapper's ctime moved to a later second (libvirt keeps whole seconds), so libvirt re-probes");
    assert.notEqual(readFileSync(w, 'utf8'), content);
    assert.deepEqual(staleWrappers(paths.manifest), []);
    assert.deepEqual(refreshWrappers(paths.manifest).refreshed, [], 'idempotent');
    uninstall(paths.manifest, { rescan: false });
  } finally {
    d.remove();
  }
});

test('install refuses when the shims are not built: wrapper, hook and hot-plug need them', () => {
  const d = tempDir();
  try {
    const prefix = join(d.path, 'prefix');
    for (const part of ['templates', 'hooks']) cpSync(join(REPO, part), join(prefix, part), { recursive: true });
    const facts = hostFacts({ prefix, emulators: [QEMU], paths: scratchPaths(join(d.path, 'root')) });
    assert.throws(() => install(facts, { rescan: false }), (e: Error & { code?: string; remedy?: string }) => e.code === 'SHIMS_MISSING' && /npm run build/.test(e.remedy ?? ''));
    assert.deepEqual(existsSync(join(d.path, 'root')) ? allFiles(join(d.path, 'root')) : [], [], 'nothing was written');
  } finally {
    d.remove();
  }
});

test('a prefix whose shims cannot be named on a #! line (blank, over 253 bytes) is refused with the reason, before anything is written', () => {
  for (const prefix of ['/opt/virt ebpf', `/opt/${'p'.repeat(240)}`]) {
    const facts = { ...hostFacts({ prefix: REPO, emulators: [QEMU] }), prefix };
    assert.throws(
      () => installPlan(facts),
      (e: Error & { code?: string; remedy?: string }) => e.code === 'USAGE' && /cannot be named on a #! line/.test(e.message) && /--prefix/.test(e.remedy ?? ''),
      prefix.slice(0, 20),
    );
  }
});

test('install puts the `virt-ebpf` command on PATH (in the manifest, removed by uninstall); a command the user had there is kept', () => {
  needRoot('writes root-owned files');
  const d = tempDir();
  try {
    const paths = scratchPaths(d.path);
    const prefix = trustedPrefix();
    const facts = { ...hostFacts({ prefix, emulators: [QEMU], paths }), systemd: false, apparmor: false, apt: false };
    install(facts, { rescan: false });
    assert.equal(statSync(paths.launcher).mode & 0o777, 0o755);
    assert.ok(readManifest(paths.manifest)!.entries.some((e) => e.kind === 'launcher' && e.path === paths.launcher));
    const r = spawnSync('virt-ebpf', ['version'], { encoding: 'utf8', env: { PATH: `${dirname(paths.launcher)}:/usr/bin:/bin` } });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^virt-ebpf \d+\.\d+\.\d+\n$/);
    assert.match(readFileSync(paths.launcher, 'utf8'), new RegExp(`^exec ${process.execPath} ${prefix}/dist/src/cli/main\\.js "\\$@"$`, 'm'));
    uninstall(paths.manifest, { rescan: false });
    assert.ok(!existsSync(paths.launcher));

    mkdirSync(dirname(paths.launcher), { recursive: true });
    writeFileSync(paths.launcher, '#!/bin/sh\necho mine\n', { mode: 0o755 });
    const again = install(facts, { rescan: false });
    assert.ok(again.kept.includes(paths.launcher));
    assert.ok(!readManifest(paths.manifest)!.entries.some((e) => e.path === paths.launcher), 'not ours');
    uninstall(paths.manifest, { rescan: false });
    assert.equal(readFileSync(paths.launcher, 'utf8'), '#!/bin/sh\necho mine\n');

    // Exactly our command, left by an install whose manifest was lost: taken back, not "kept".
    writeFileSync(paths.launcher, installPlan(facts).find((a) => a.kind === 'launcher')!.content, { mode: 0o755 });
    assert.deepEqual(install(facts, { rescan: false }).kept, []);
    assert.ok(readManifest(paths.manifest)!.entries.some((e) => e.path === paths.launcher));
    uninstall(paths.manifest, { rescan: false });
    assert.ok(!existsSync(paths.launcher));
  } finally {
    d.remove();
  }
});

test("the package's runtime: install writes no units and no command (the package ships both); what a checkout's install wrote there is removed", () => {
  needRoot('writes root-owned files');
  const d = tempDir();
  try {
    const paths = scratchPaths(d.path);
    const facts = { ...hostFacts({ prefix: trustedPrefix(), emulators: [QEMU], paths }), systemd: true, apparmor: false, apt: false };
    assert.ok(!facts.packaged, 'a checkout copy is not the package');
    install(facts, { rescan: false });
    assert.ok(existsSync(paths.launcher) && existsSync(join(paths.unitDir, 'virt-ebpfd.service')));
    const packaged = { ...facts, packaged: true };
    assert.deepEqual(installPlan(packaged).map((a) => a.kind).sort(), ['config', 'hook', 'wrapper']);
    install(packaged, { rescan: false });
    assert.ok(!existsSync(paths.launcher) && !existsSync(join(paths.unitDir, 'virt-ebpfd.service')), "the checkout's command and units are gone");
    uninstall(paths.manifest, { rescan: false });
    assert.deepEqual(allFiles(d.path), []);
  } finally {
    d.remove();
  }
});

test('the host-wide plan: a diversion and a host-wide wrapper at the emulator\'s own path, every wrapper naming the diverted binary', () => {
  const d = tempDir();
  try {
    const paths = scratchPaths(d.path);
    const prefix = trustedPrefix();
    const base = hostFacts({ prefix, emulators: [QEMU], paths });
    const real = `${QEMU}.distrib`;
    const facts = { ...base, hostWide: true, emulators: [{ path: QEMU, real, identity: '1:2:3:4:5' }] };
    const plan = installPlan(facts);
    const at = plan.filter((a) => a.path === QEMU);
    assert.deepEqual(at.map((a) => a.kind), ['diversion', 'wrapper'], 'the diversion is made before the wrapper takes the path');
    assert.equal(at[0].content, real);
    assert.deepEqual(parseWrapper(at[1].content), { real, identity: '1:2:3:4:5', shim: join(prefix, 'dist/shims/vebpf-wrapper'), hostWide: true });
    assert.match(at[1].content, /^host-wide=on$/m);
    const libexec = plan.find((a) => a.kind === 'wrapper' && a.path === join(paths.wrapperDir, 'qemu-system-x86_64'))!;
    assert.deepEqual(parseWrapper(libexec.content), { real, identity: '1:2:3:4:5', shim: join(prefix, 'dist/shims/vebpf-wrapper') }, 'an enabled domain\'s wrapper runs the real binary, not the host-wide wrapper');
    assert.throws(() => installPlan({ ...facts, emulators: [{ path: QEMU, real: QEMU, identity: 'x' }] }), /is not diverted: the host-wide wrapper cannot take its place/);
    assert.equal(installPlan(base).some((a) => a.kind === 'diversion' || a.path === QEMU), false, 'without --host-wide: nothing at the emulator\'s path');
  } finally {
    d.remove();
  }
});
