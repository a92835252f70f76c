/**
 * koffi as its native module (src/sys/koffi.ts): the processes that call C do not load the
 * package entry point's installer helpers (https, tls, http, zlib; crypto too where nothing of
 * ours uses it), calls work, a build that is missing or of another version is not taken, and
 * the installer's use of the build names loads no koffi.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import koffi from '../../src/sys/koffi';
import { koffiTriplets, nativeKoffi } from '../../src/sys/koffi-native';
import { REPO, tempDir } from '../harness';

/** Node's modules the broker does not need: the entry point of koffi loads them for its installer. */
const INSTALLER_ONLY = ['NativeModule https', 'NativeModule tls', 'NativeModule http', 'NativeModule zlib'];
const KOFFI_ROOT = dirname(require.resolve('koffi/package.json'));
const KOFFI_VERSION = (JSON.parse(readFileSync(join(KOFFI_ROOT, 'package.json'), 'utf8')) as { version: string }).version;

test('the native module is what src/sys/koffi gives, at the package version, and it calls C', () => {
  assert.equal((koffi as unknown as { version: string }).version, KOFFI_VERSION);
  const getpid = koffi.load('libc.so.6').func('int getpid(void)');
  assert.equal(getpid(), process.pid);
  const out = execFileSync(process.execPath, ['-e', `require(${JSON.stringify(join(REPO, 'dist/src/sys/libc.js'))}); process.stdout.write(JSON.stringify(process.moduleLoadList))`], { encoding: 'utf8' });
  const loaded = JSON.parse(out) as string[];
  for (const m of [...INSTALLER_ONLY, 'NativeModule crypto']) assert.ok(!loaded.includes(m), `${m} is loaded by a process that only calls libc`);
});

test('the installer reads the build names without loading koffi', () => {
  const out = execFileSync(process.execPath, ['-e', `require(${JSON.stringify(join(REPO, 'dist/src/install/runtime.js'))}); process.stdout.write(JSON.stringify(Object.keys(require.cache)))`], { encoding: 'utf8' });
  const loaded = (JSON.parse(out) as string[]).filter((f) => /koffi/.test(f));
  assert.ok(loaded.some((f) => f.endsWith('sys/koffi-native.js')), 'the names come from src/sys/koffi-native');
  assert.deepEqual(loaded.filter((f) => f.endsWith('.node') || f.endsWith('sys/koffi.js') || f.endsWith('koffi/index.js')), [], 'no koffi loaded');
});

test('a build directory that is missing, or holds a native module of another version, is not taken', () => {
  assert.equal(nativeKoffi(KOFFI_ROOT, ['plan9_x64']), undefined);
  const dir = tempDir();
  try {
    writeFileSync(join(dir.path, 'package.json'), JSON.stringify({ name: 'koffi', version: '0.0.1' }));
    mkdirSync(join(dir.path, 'build'));
    symlinkSync(join(KOFFI_ROOT, 'build', 'koffi'), join(dir.path, 'build', 'koffi'));
    assert.ok(existsSync(join(dir.path, 'build', 'koffi', koffiTriplets()[0], 'koffi.node')));
    assert.equal(nativeKoffi(dir.path), undefined, 'a native module of another version than its package is refused');
  } finally {
    dir.remove();
  }
  assert.deepEqual(koffiTriplets('linux', 'arm64'), ['linux_arm64', 'musl_arm64']);
});

test('the broker, started, has not loaded https, tls, http, zlib or crypto, nor what loads contexts', async () => {
  const dir = tempDir();
  const socket = join(dir.path, 'broker.sock');
  const cfg = join(dir.path, 'broker.json');
  const list = join(dir.path, 'modules.json');
  const preload = join(dir.path, 'modules.js');
  writeFileSync(cfg, JSON.stringify({ socket, cacheDir: join(dir.path, 'cache'), pool: { size: 0 } }));
  // Written whole, then renamed: the test reads the file as soon as it exists.
  writeFileSync(
    preload,
    `process.on('SIGUSR2', () => { const fs = require('fs'); fs.writeFileSync(${JSON.stringify(list + '.tmp')}, JSON.stringify({ natives: process.moduleLoadList, files: Object.keys(require.cache) })); fs.renameSync(${JSON.stringify(list + '.tmp')}, ${JSON.stringify(list)}); });\n`,
  );
  const broker = spawn(process.execPath, ['-r', preload, join(REPO, 'dist/src/cli/main.js'), 'broker', '--config', cfg], { stdio: 'ignore' });
  const exited = new Promise((r) => broker.once('exit', r));
  try {
    for (let i = 0; i < 200 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 50));
    assert.ok(existsSync(socket), 'the broker listens');
    broker.kill('SIGUSR2');
    for (let i = 0; i < 100 && !existsSync(list); i++) await new Promise((r) => setTimeout(r, 20));
    const { natives: loaded, files } = JSON.parse(readFileSync(list, 'utf8')) as { natives: string[]; files: string[] };
    assert.ok(loaded.includes('NativeModule net'), 'the list is the broker’s');
    // The loaders, the object parser and the probe come with the first emulator resolved (~0.6 MiB).
    const ours = files.filter((f) => f.startsWith(join(REPO, 'dist/src/'))).map((f) => f.slice(join(REPO, 'dist/src/').length));
    assert.ok(ours.includes('broker/loader.js'), `the list is the broker's: ${ours.join(' ')}`);
    assert.deepEqual(ours.filter((f) => /^(context\/|emulator\/probe|bpf\/(load|spec|btf|elf|rss)\.js)/.test(f)), [], 'modules that load contexts');
    for (const m of INSTALLER_ONLY) assert.ok(!loaded.includes(m), `the broker loaded ${m}`);
    // OpenSSL (~1.2 MiB resident) starts at the first probe, which hashes QEMU's object.
    assert.ok(!loaded.includes('NativeModule crypto'), 'the broker loaded crypto before its first probe');
  } finally {
    broker.kill('SIGTERM');
    await exited;
    dir.remove();
  }
});
