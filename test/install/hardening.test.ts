/**
 * Install hardening (issue 13's low findings): install never replaces a prefix that is not
 * ours (`--prefix /usr`), refuses a node or a prefix that anyone but root could change (root
 * runs both from the hook and the unit), and a crash between writing a file and renaming it
 * into place leaves nothing that libvirt would run as a hook.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { install, uninstall } from '../../src/install/apply';
import { readManifest } from '../../src/install/manifest';
import { hostFacts } from '../../src/install/host';
import { DEFAULT_PATHS } from '../../src/install/plan';
import { copyRuntime, copyRuntimeParts, PREFIX_MARKER, prefixState } from '../../src/install/runtime';
import { QEMU, REPO, needRoot, tempDir, trustedDir } from '../harness';
import { allFiles, scratchPaths, trustedPrefix } from './scratch';

type Coded = Error & { code?: string; remedy?: string; oneLine?: () => string };

test('install copies its runtime only into an absent, empty or own prefix: a directory with files that are not ours is refused and left as it was', () => {
  needRoot('copies a root-owned runtime');
  const parent = trustedDir('install-prefix');
  try {
    const foreign = join(parent, 'foreign');
    mkdirSync(join(foreign, 'bin'), { recursive: true });
    writeFileSync(join(foreign, 'bin/tool'), 'precious\n');
    assert.throws(
      () => copyRuntime(REPO, foreign),
      (e: Coded) => e.code === 'INSTALL_PREFIX_FOREIGN' && /holds files that are not virt-ebpf's/.test(e.message) && /--prefix/.test(e.remedy ?? ''),
    );
    assert.equal(readFileSync(join(foreign, 'bin/tool'), 'utf8'), 'precious\n', 'nothing of it was removed');
    assert.deepEqual(readdirSync(foreign), ['bin'], 'nothing was added');

    const fresh = join(parent, 'fresh');
    copyRuntime(REPO, fresh);
    assert.deepEqual(JSON.parse(readFileSync(join(fresh, PREFIX_MARKER), 'utf8')), { owner: 'install' }, 'the marker says install owns the tree');
    assert.ok(existsSync(join(fresh, 'dist/src/cli/main.js')));
    copyRuntime(REPO, fresh); // ours: copied again

    const empty = join(parent, 'empty');
    mkdirSync(empty);
    copyRuntime(REPO, empty);
    assert.ok(existsSync(join(empty, PREFIX_MARKER)));

    // A runtime copied before the marker existed: ours because the install manifest names it.
    const legacy = join(parent, 'legacy');
    mkdirSync(legacy);
    writeFileSync(join(legacy, 'package.json'), '{}\n');
    assert.throws(() => copyRuntime(REPO, legacy), (e: Coded) => e.code === 'INSTALL_PREFIX_FOREIGN');
    copyRuntime(REPO, legacy, legacy);

    // The package's tree is dpkg's: never replaced by a checkout's install.
    const packaged = join(parent, 'packaged');
    mkdirSync(packaged);
    writeFileSync(join(packaged, PREFIX_MARKER), '{"owner":"package"}\n');
    assert.throws(() => copyRuntime(REPO, packaged), (e: Coded) => e.code === 'INSTALL_PREFIX_FOREIGN' && /Debian package/.test(e.message));
    assert.deepEqual(readdirSync(packaged), [PREFIX_MARKER]);
  } finally {
    rmSync(parent, { recursive: true, force: true });
  }
});

test('what a prefix is to install: /usr is foreign, a missing directory is absent, a file is foreign', () => {
  assert.equal(prefixState('/usr').kind, 'foreign');
  assert.equal(prefixState('/nonexistent/virt-ebpf-prefix').kind, 'absent');
  assert.deepEqual(prefixState('/etc/hostname'), { kind: 'foreign', why: '/etc/hostname is not a directory' });
});

test('`virt-ebpf install --prefix DIR` with a foreign DIR: one line with the code and what to do, exit 1, DIR untouched and nothing installed', () => {
  needRoot('install needs root');
  const parent = trustedDir('install-prefix-cli');
  const manifestBefore = existsSync(DEFAULT_PATHS.manifest) ? readFileSync(DEFAULT_PATHS.manifest, 'utf8') : null;
  try {
    const dir = join(parent, 'mine');
    mkdirSync(dir);
    writeFileSync(join(dir, 'notes.txt'), 'mine\n');
    const r = spawnSync(process.execPath, [join(REPO, 'dist/src/cli/main.js'), 'install', '--prefix', dir, '--no-rescan'], { encoding: 'utf8' });
    assert.equal(r.status, 1, r.stderr);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], new RegExp(`^virt-ebpf: refusing to install into ${dir}: .*\\(INSTALL_PREFIX_FOREIGN\\); give --prefix a new or empty directory`));
    assert.deepEqual(readdirSync(dir), ['notes.txt']);
    assert.equal(existsSync(DEFAULT_PATHS.manifest) ? readFileSync(DEFAULT_PATHS.manifest, 'utf8') : null, manifestBefore, 'no install happened');
  } finally {
    rmSync(parent, { recursive: true, force: true });
  }
});

test('install refuses a node that anyone but root could replace: the hook and the unit would run it as root', () => {
  needRoot('writes root-owned files');
  const d = tempDir();
  const bin = trustedDir('install-untrusted-node');
  try {
    const node = join(bin, 'node');
    copyFileSync(process.execPath, node);
    chmodSync(node, 0o755);
    chmodSync(bin, 0o775); // group-writable: anyone in root's group could swap node
    const paths = scratchPaths(d.path);
    const facts = { ...hostFacts({ prefix: trustedPrefix(), emulators: [QEMU], paths }), node };
    assert.throws(
      () => install(facts, { rescan: false }),
      (e: Coded) => e.code === 'INSTALL_UNTRUSTED' && e.message.includes(`node ${node}: ${bin} is writable by group or others`) && /root-owned/.test(e.remedy ?? ''),
    );
    assert.deepEqual(allFiles(d.path), [], 'nothing was written');
  } finally {
    rmSync(bin, { recursive: true, force: true });
    d.remove();
  }
});

test('install refuses a prefix below a directory anyone can write (here /tmp), before copying and before installing', () => {
  needRoot('writes root-owned files');
  const d = tempDir();
  const root = trustedDir('install-untrusted-prefix');
  try {
    // copyRuntime: the parent chain is checked before a byte is copied.
    assert.throws(() => copyRuntime(REPO, join(d.path, 'prefix')), (e: Coded) => e.code === 'INSTALL_UNTRUSTED' && /is writable by group or others/.test(e.message));
    assert.ok(!existsSync(join(d.path, 'prefix')), 'nothing was copied');
    // install: a runtime already there, under a world-writable directory.
    const prefix = join(d.path, 'runtime');
    copyRuntimeParts(REPO, prefix);
    const facts = hostFacts({ prefix, emulators: [QEMU], paths: scratchPaths(root) });
    assert.throws(
      () => install(facts, { rescan: false }),
      (e: Coded) => e.code === 'INSTALL_UNTRUSTED' && e.message.startsWith(`refusing to install: root would run code from the prefix ${prefix}:`),
    );
    assert.deepEqual(allFiles(root), [], 'nothing was written');
  } finally {
    rmSync(root, { recursive: true, force: true });
    d.remove();
  }
});

/** The regular files in `dir` that libvirt would run as hooks (executable by someone). */
function runnableHooks(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .map((n) => join(dir, n))
    .filter((p) => statSync(p).isFile() && (statSync(p).mode & 0o111) !== 0);
}

/**
 * Runs install in a child that SIGKILLs itself once the hook file's new content is staged and
 * before it is renamed into place: a crash at the worst moment.
 */
function installThatCrashesAtTheHook(paths: ReturnType<typeof scratchPaths>, prefix: string, hookTemplate?: string): SpawnSyncReturns<string> {
  const script = `
    const { install } = require(${JSON.stringify(join(REPO, 'dist/src/install/apply.js'))});
    const { hostFacts } = require(${JSON.stringify(join(REPO, 'dist/src/install/host.js'))});
    const [paths, prefix, qemu, hookTemplate] = JSON.parse(process.argv[1]);
    const facts = { ...hostFacts({ prefix, emulators: [qemu], paths }), systemd: true, apparmor: true, apt: true };
    if (hookTemplate) facts.templates.hook = hookTemplate;
    install(facts, { rescan: false, faults: { beforeRename(target) { if (target === paths.hookFile) process.kill(process.pid, 'SIGKILL'); } } });
  `;
  return spawnSync(process.execPath, ['-e', script, JSON.stringify([paths, prefix, QEMU, hookTemplate ?? null])], { encoding: 'utf8' });
}

test('a crash between writing the hook and renaming it leaves nothing libvirt would run in qemu.d; the next install clears what was staged', () => {
  needRoot('writes root-owned files');
  const d = tempDir();
  try {
    const paths = scratchPaths(d.path);
    const prefix = trustedPrefix();
    const hooksDir = join(paths.hookFile, '..');
    const crashed = installThatCrashesAtTheHook(paths, prefix);
    assert.equal(crashed.signal, 'SIGKILL', `the install was to crash at the hook: ${crashed.stderr}`);
    assert.deepEqual(runnableHooks(hooksDir), [], 'no executable file in qemu.d');
    assert.ok(!allFiles(d.path).some((f) => f.endsWith('.virt-ebpf-tmp')), 'no temp file beside any target');
    assert.ok(allFiles(d.path).some((f) => f.startsWith(join(hooksDir, '.virt-ebpf-staging/'))), 'the staged hook is in the staging directory (the crash happened where intended)');

    const r = install({ ...hostFacts({ prefix, emulators: [QEMU], paths }), systemd: true, apparmor: true, apt: true }, { rescan: false });
    assert.ok(r.written.includes(paths.hookFile));
    assert.deepEqual(runnableHooks(hooksDir), [paths.hookFile]);
    assert.ok(!allFiles(d.path).some((f) => f.includes('.virt-ebpf-staging')), 'nothing staged is left');

    // A crash while replacing the hook: the old one stays, whole and alone.
    const old = readFileSync(paths.hookFile, 'utf8');
    const facts = hostFacts({ prefix, emulators: [QEMU], paths });
    const again = installThatCrashesAtTheHook(paths, prefix, facts.templates.hook + '# another version\n');
    assert.equal(again.signal, 'SIGKILL', again.stderr);
    assert.deepEqual(runnableHooks(hooksDir), [paths.hookFile]);
    assert.equal(readFileSync(paths.hookFile, 'utf8'), old);

    // uninstall clears what the crash staged, too: nothing of ours is left.
    uninstall(paths.manifest, { rescan: false });
    assert.deepEqual(allFiles(d.path), []);
    assert.equal(readManifest(paths.manifest), null);
  } finally {
    d.remove();
  }
});
