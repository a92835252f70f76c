/**
 * probeEmulator on the real QEMU 10.0.2, and its disk cache: hit while the binary is
 * unchanged, re-probe when it is touched or replaced, never trust a corrupt, tampered,
 * foreign or unsafe entry. Cache tests use a private copy of the QEMU binary so they can
 * touch it.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, linkSync, mkdirSync, renameSync, readdirSync, readFileSync, realpathSync, statSync, symlinkSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CACHE_FORMAT, EmulatorCaps, cacheFile, decideCaps, listEmulatorsOnPath, probeEmulator, rssObjectBytes } from '../../src/emulator';
import { QEMU, REPO, tempDir, watchFds } from '../harness';
import { liveChildren } from './fakes';

const tmp = tempDir('virt-ebpf-probe-');
const copy = join(tmp.path, 'bin', 'qemu-system-x86_64');
let checkFds: () => void;

before(() => {
  checkFds = watchFds();
  mkdirSync(join(tmp.path, 'bin'));
  copyFileSync(QEMU, copy);
  chmodSync(copy, 0o755);
});
after(() => {
  tmp.remove();
  checkFds();
  assert.deepEqual(liveChildren(), [], 'no QEMU left running');
});

let n = 0;
const freshCacheDir = () => join(tmp.path, `cache-${n++}`, 'probe');
const entryOf = (dir: string, caps: EmulatorCaps) => cacheFile(dir, caps.realpath);

test('QEMU 10.0.2: supported, request-ebpf, ebpf-rss-fds list, a ~20 KB ELF object', async () => {
  const t0 = Date.now();
  const { caps, fromCache } = await probeEmulator(QEMU, { useCache: false });
  const ms = Date.now() - t0;
  assert.equal(fromCache, false);
  assert.equal(caps.supported, true, caps.reason);
  assert.equal(caps.protocol, 'request-ebpf');
  assert.deepEqual(caps.property, { name: 'ebpf-rss-fds', type: 'list' });
  assert.deepEqual([caps.version.major, caps.version.minor, caps.version.micro], [10, 0, 2]);
  const elf = rssObjectBytes(caps);
  assert.equal(elf.subarray(0, 4).toString('latin1'), '\x7fELF');
  assert.ok(elf.length > 15_000 && elf.length < 30_000, `${elf.length} bytes`);
  assert.equal(caps.rssObjectSha256, createHash('sha256').update(elf).digest('hex'));
  assert.equal(caps.realpath, QEMU);
  assert.equal(caps.identity.size, statSync(QEMU).size);
  assert.ok(!Number.isNaN(Date.parse(caps.probedAt)));
  assert.ok(ms < 5000, `cold probe took ${ms} ms`);
});

test('qemu-system-x86_64-microvm: no PCI, no eBPF build — unsupported for the right reason', async () => {
  // Debian's microvm build has the ebpf-rss-fds property (on virtio-net-device, asked because
  // there is no virtio-net-pci) but no request-ebpf: a real "property but no object" emulator.
  const microvm = '/usr/bin/qemu-system-x86_64-microvm';
  const { caps, transcript } = await probeEmulator(microvm, { useCache: false, record: true });
  assert.equal(caps.supported, false);
  assert.match(caps.reason!, /has the ebpf-rss-fds property but no way to get the eBPF object/);
  assert.equal(caps.protocol, null);
  assert.deepEqual(caps.property, { name: 'ebpf-rss-fds', type: 'list' });
  assert.deepEqual(
    transcript!.exchanges.filter((x) => x.execute === 'device-list-properties').map((x) => [x.arguments?.typename, 'error' in x.reply]),
    [['virtio-net-pci', true], ['virtio-net-device', false]],
  );
});

test('the committed 10.0.2 transcript still matches this QEMU (same decision, same object digest)', async () => {
  const { caps, transcript } = await probeEmulator(QEMU, { useCache: false, record: true });
  const fixture = JSON.parse(readFileSync(join(REPO, 'test', 'fixtures', 'qmp', 'transcripts', 'qemu-10.0.2.json'), 'utf8'));
  assert.equal(fixture.shortened.sha256, caps.rssObjectSha256, 'recorded object is the one this QEMU serves');
  assert.deepEqual(
    transcript!.exchanges.map((x) => [x.execute, x.arguments]),
    fixture.exchanges.map((x: { execute: string; arguments?: unknown }) => [x.execute, x.arguments]),
    'the probe still asks the recorded questions',
  );
  const replayed = decideCaps(fixture, { path: caps.path, identity: caps.identity }, caps.probedAt);
  const strip = ({ rssObject: _o, rssObjectSha256: _s, ...rest }: EmulatorCaps) => rest;
  assert.deepEqual(strip(replayed), strip(caps));
});

test('cache: first probe writes a private entry atomically, the second is served from it', async () => {
  const dir = freshCacheDir();
  const first = await probeEmulator(copy, { cacheDir: dir });
  assert.equal(first.fromCache, false);
  assert.equal(statSync(dir).mode & 0o777, 0o700);
  const files = readdirSync(dir);
  assert.deepEqual(files, [`${createHash('sha256').update(first.caps.realpath).digest('hex')}.json`], 'one entry, no temp files left');
  assert.equal(statSync(join(dir, files[0])).mode & 0o777, 0o600);
  const entry = JSON.parse(readFileSync(join(dir, files[0]), 'utf8'));
  assert.equal(entry.format, CACHE_FORMAT);
  assert.deepEqual(entry.caps, first.caps);

  const t0 = process.hrtime.bigint();
  const second = await probeEmulator(copy, { cacheDir: dir });
  const warmMs = Number(process.hrtime.bigint() - t0) / 1e6;
  assert.equal(second.fromCache, true);
  assert.deepEqual(second.caps, first.caps);
  assert.ok(warmMs < 50, `warm probe took ${warmMs} ms`);
});

test('cache: touching the binary (mtime/ctime) forces a re-probe, which refreshes the entry', async () => {
  const dir = freshCacheDir();
  const first = await probeEmulator(copy, { cacheDir: dir });
  const st = statSync(copy);
  utimesSync(copy, st.atime, new Date(st.mtimeMs + 5000));
  const second = await probeEmulator(copy, { cacheDir: dir });
  assert.equal(second.fromCache, false);
  assert.notEqual(second.caps.identity.mtimeMs, first.caps.identity.mtimeMs);
  assert.equal((await probeEmulator(copy, { cacheDir: dir })).fromCache, true);
});

test('cache: a replaced binary (new inode, same name) is re-probed', async () => {
  const dir = freshCacheDir();
  await probeEmulator(copy, { cacheDir: dir });
  const ino = statSync(copy).ino;
  // Like a package upgrade: new file renamed over the old name. The old inode is kept alive
  // by a hard link so the filesystem cannot hand the same number straight back.
  const old = `${copy}.old`;
  linkSync(copy, old);
  const next = `${copy}.new`;
  copyFileSync(copy, next);
  chmodSync(next, 0o755);
  renameSync(next, copy);
  unlinkSync(old);
  assert.notEqual(statSync(copy).ino, ino);
  assert.equal((await probeEmulator(copy, { cacheDir: dir })).fromCache, false);
});

test('cache: corrupt, partial, tampered, foreign, or unsafe entries are re-probed, never trusted', async () => {
  const dir = freshCacheDir();
  const { caps } = await probeEmulator(copy, { cacheDir: dir });
  const file = entryOf(dir, caps);
  const good = readFileSync(file, 'utf8');
  const entry = () => JSON.parse(good);
  const cases: Array<[string, () => void]> = [
    ['not JSON', () => writeFileSync(file, 'this is not json')],
    ['truncated mid-write', () => writeFileSync(file, good.slice(0, good.length >> 1))],
    ['empty', () => writeFileSync(file, '')],
    ['other format version', () => writeFileSync(file, JSON.stringify({ ...entry(), format: CACHE_FORMAT + 1 }))],
    ['object swapped, digest kept', () => {
      const e = entry();
      const bytes = Buffer.from(e.caps.rssObject, 'base64');
      bytes[bytes.length - 1] ^= 0xff;
      e.caps.rssObject = bytes.toString('base64');
      writeFileSync(file, JSON.stringify(e));
    }],
    ['identity of another build', () => {
      const e = entry();
      e.caps.identity.size += 1;
      writeFileSync(file, JSON.stringify(e));
    }],
    ['extra key smuggled in', () => writeFileSync(file, JSON.stringify({ ...entry(), note: 'x' }))],
    ['group-writable entry', () => {
      writeFileSync(file, good);
      chmodSync(file, 0o666);
    }],
    ['symlink planted instead of the entry', () => {
      const elsewhere = join(tmp.path, 'planted.json');
      writeFileSync(elsewhere, good);
      unlinkSync(file);
      symlinkSync(elsewhere, file);
    }],
  ];
  for (const [what, spoil] of cases) {
    spoil();
    const r = await probeEmulator(copy, { cacheDir: dir });
    assert.equal(r.fromCache, false, `${what}: must re-probe`);
    assert.equal(r.caps.supported, true);
    // the re-probe rewrote a good entry
    assert.equal(statSync(file).mode & 0o777, 0o600, what);
    assert.equal((await probeEmulator(copy, { cacheDir: dir })).fromCache, true, `${what}: fresh entry is used again`);
  }
});

test('cache: a directory with loose permissions is not read, then tightened to 0700', async () => {
  const dir = freshCacheDir();
  await probeEmulator(copy, { cacheDir: dir });
  chmodSync(dir, 0o777);
  assert.equal((await probeEmulator(copy, { cacheDir: dir })).fromCache, false);
  assert.equal(statSync(dir).mode & 0o777, 0o700);
  assert.equal((await probeEmulator(copy, { cacheDir: dir })).fromCache, true);
});

test('cache: useCache=false neither reads nor writes; extra env gets its own entry; a symlinked name shares the entry', async () => {
  const dir = freshCacheDir();
  await probeEmulator(copy, { cacheDir: dir, useCache: false });
  assert.equal(existsSync(dir), false);
  await probeEmulator(copy, { cacheDir: dir });
  assert.equal((await probeEmulator(copy, { cacheDir: dir, useCache: false })).fromCache, false);
  assert.equal((await probeEmulator(copy, { cacheDir: dir, env: { VIRT_EBPF_TEST: '1' } })).fromCache, false);
  assert.equal((await probeEmulator(copy, { cacheDir: dir, env: { VIRT_EBPF_TEST: '1' } })).fromCache, true);
  const link = join(tmp.path, 'bin', 'qemu-system-amd64');
  symlinkSync(copy, link);
  const viaLink = await probeEmulator(link, { cacheDir: dir });
  assert.equal(viaLink.fromCache, true);
  assert.equal(viaLink.caps.path, link, 'path is the name the caller used');
  assert.equal(viaLink.caps.realpath, copy);
});

test('listEmulatorsOnPath: every qemu-system-* on PATH, once per real file, in PATH order', () => {
  const a = join(tmp.path, 'path-a');
  const b = join(tmp.path, 'path-b');
  mkdirSync(a);
  mkdirSync(b);
  symlinkSync(copy, join(a, 'qemu-system-x86_64'));
  symlinkSync(copy, join(b, 'qemu-system-amd64')); // same file again
  symlinkSync(QEMU, join(b, 'qemu-system-x86_64')); // a different file
  writeFileSync(join(b, 'qemu-system-noexec'), '');
  writeFileSync(join(b, 'qemu-img'), '');
  chmodSync(join(b, 'qemu-img'), 0o755);
  const found = listEmulatorsOnPath(`${a}:relative/dir::${b}:/nonexistent`);
  assert.deepEqual(found, [join(a, 'qemu-system-x86_64'), join(b, 'qemu-system-x86_64')]);
  const system = listEmulatorsOnPath('/usr/bin');
  assert.ok(system.includes(QEMU));
  assert.equal(new Set(system.map((p) => realpathSync(p))).size, system.length, 'no file twice');
});
