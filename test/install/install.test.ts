/**
 * install/uninstall/refresh into a scratch root (every path overridden): exactly the planned
 * files with their modes, a manifest, the user's config kept, uninstall removes exactly what
 * install wrote, refresh rewrites a wrapper only when its QEMU changed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync, readdirSync, utimesSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { install, uninstall, refreshWrappers, staleWrappers, readManifest } from '../../src/install/apply';
import { installPlan, InstallPaths } from '../../src/install/plan';
import { hostFacts } from '../../src/install/host';
import { parseWrapper } from '../../src/wrapper/script';
import { QEMU, REPO, needRoot, tempDir, trustedDir } from '../harness';

function scratchPaths(root: string): InstallPaths {
  return {
    wrapperDir: join(root, 'usr/libexec/virt-ebpf'),
    hookFile: join(root, 'etc/libvirt/hooks/qemu.d/virt-ebpf'),
    unitDir: join(root, 'etc/systemd/system'),
    configFile: join(root, 'etc/virt-ebpf/config.json'),
    apparmorFile: join(root, 'etc/apparmor.d/abstractions/libvirt-qemu.d/virt-ebpf'),
    aptFile: join(root, 'etc/apt/apt.conf.d/80virt-ebpf'),
    manifest: join(root, 'var/lib/virt-ebpf/installed.json'),
  };
}

function allFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? allFiles(join(dir, e.name)) : [join(dir, e.name)]));
}

test('install writes exactly the plan, uninstall removes exactly that, the user\'s config survives', () => {
  needRoot('writes root-owned files');
  const d = tempDir();
  try {
    const paths = scratchPaths(d.path);
    const facts = { ...hostFacts({ prefix: REPO, emulators: [QEMU], paths }), systemd: true, apparmor: true, apt: true };
    const plan = installPlan(facts);
    assert.deepEqual(plan.map((a) => a.kind).sort(), ['apparmor', 'apt', 'config', 'hook', 'unit', 'unit', 'wrapper']);
    const r = install(facts, { rescan: false });
    assert.deepEqual(r.written.sort(), plan.map((a) => a.path).sort());
    for (const a of plan) {
      assert.equal(readFileSync(a.path, 'utf8'), a.content);
      assert.equal(statSync(a.path).mode & 0o777, a.mode, a.path);
    }
    const wrapper = parseWrapper(readFileSync(join(paths.wrapperDir, 'qemu-system-x86_64'), 'utf8'));
    assert.equal(wrapper?.real, QEMU);
    assert.equal(wrapper?.shim, join(REPO, 'dist/shims/vebpf-wrapper'), 'the C wrapper shim, named absolutely');
    const hook = readFileSync(paths.hookFile, 'utf8');
    assert.equal(hook.split('\n')[0], `#!${REPO}/dist/shims/vebpf-hook`, 'the kernel runs the C hook shim: no shell');
    assert.match(hook, new RegExp(`^node=${process.execPath}$`, 'm'));
    assert.match(hook, new RegExp(`^hook=${REPO}/dist/src/hook/main\\.js$`, 'm'));
    assert.match(readFileSync(join(paths.unitDir, 'virt-ebpfd.service'), 'utf8'), new RegExp(`ExecStart=${process.execPath} .*cli/main.js broker`));
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
    install({ ...hostFacts({ prefix: REPO, emulators: [QEMU], paths }), systemd: false, apparmor: false, apt: false }, { rescan: false });
    uninstall(paths.manifest, { rescan: false });
    mkdirSync(dirname(paths.configFile), { recursive: true });
    writeFileSync(paths.configFile, '{"pool":{"size":4}}\n');
    const r = install({ ...hostFacts({ prefix: REPO, emulators: [QEMU], paths }), systemd: false, apparmor: false, apt: false }, { rescan: false });
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
    install({ ...hostFacts({ prefix: REPO, emulators: [copy], paths }), systemd: false, apparmor: false, apt: false }, { rescan: false });
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
    mkdirSync(join(prefix, 'templates'), { recursive: true });
    cpSync(join(REPO, 'templates'), join(prefix, 'templates'), { recursive: true });
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
