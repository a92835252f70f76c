/**
 * The idle trim (src/sys/resident.ts): which mappings it may drop, and, in a child Node process
 * with real mappings, that it drops a clean read-only file mapping and keeps a private copy
 * (a file page written, then made read-only: dropping it would bring the file's byte back).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, fsyncSync, openSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { trimmableRanges } from '../../src/sys/resident';
import { tempDir } from '../harness';

function mapping(header: string, fields: Record<string, number>, flags = 'rd mr mw me'): string {
  const lines = [header];
  for (const [k, v] of Object.entries({ Size: 8, KernelPageSize: 4, MMUPageSize: 4, Rss: 8, Anonymous: 0, Private_Dirty: 0, Shared_Dirty: 0, ...fields })) {
    lines.push(`${(k + ':').padEnd(16)}${String(v).padStart(8)} kB`);
  }
  lines.push(`VmFlags: ${flags}`);
  return lines.join('\n');
}

test('trimmableRanges takes read-only private clean file mappings with pages, and nothing else', () => {
  const smaps = [
    mapping('00400000-00402000 r--p 00000000 fe:00 11 /usr/bin/node', {}),
    mapping('00402000-00404000 r-xp 00002000 fe:00 11 /usr/bin/node', {}),
    mapping('00404000-00406000 r--p 00004000 fe:00 11 /usr/bin/node', { Anonymous: 4, Private_Dirty: 4 }), // relocated, then read-only
    mapping('00406000-00408000 rw-p 00006000 fe:00 11 /usr/bin/node', {}),
    mapping('00408000-0040a000 r--s 00000000 fe:00 12 /dev/shm/x', {}),
    mapping('0040a000-0040c000 r-xp 00000000 00:00 0 ', {}),
    mapping('0040c000-0040e000 r--p 00000000 fe:00 13 /tmp/gone (deleted)', {}),
    mapping('0040e000-00410000 r--p 00000000 fe:00 14 /usr/lib/x.so', {}, 'rd mr mw me lo'),
    mapping('00410000-00412000 r--p 00000000 fe:00 15 /usr/lib/y.so', { Rss: 0 }),
    mapping('00600000-00800000 r--p 00000000 fe:00 16 /usr/lib/huge.so', { KernelPageSize: 2048 }),
    mapping('7f0000000000-7f0000002000 r-xp 00000000 fe:00 17 /usr/lib/with space.so', {}),
    mapping('ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]', {}),
  ].join('\n');
  assert.deepEqual(
    trimmableRanges(smaps).map((r) => `${r.start.toString(16)}-${r.end.toString(16)}`),
    ['400000-402000', '402000-404000', '7f0000000000-7f0000002000'],
  );
});

test('trimResident drops a clean read-only file mapping and keeps a private copy and the process working', () => {
  const dir = tempDir('virt-ebpf-trim-');
  try {
    const file = join(dir.path, 'pages');
    writeFileSync(file, Buffer.alloc(64 * 1024, 0x61)); // 'a'
    const w = openSync(file, 'r+');
    fsyncSync(w); // written back: a dirty page cache page counts as Private_Dirty, which the trim leaves alone
    closeSync(w);
    const script = `
      const koffi = require(${JSON.stringify(require.resolve('koffi'))});
      const { trimResident } = require(${JSON.stringify(require.resolve('../../src/sys/resident'))});
      const fs = require('fs');
      const libc = koffi.load('libc.so.6');
      const mmap = libc.func('void *mmap(void *, size_t, int, int, int, long)');
      const mprotect = libc.func('int mprotect(void *, size_t, int)');
      const PROT_READ = 1, PROT_WRITE = 2, MAP_PRIVATE = 2, LEN = 64 * 1024;
      const fd = fs.openSync(${JSON.stringify(file)}, 'r');
      const clean = mmap(null, LEN, PROT_READ, MAP_PRIVATE, fd, 0);
      const copied = mmap(null, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
      const byteAt = (ptr, offset = 0) => koffi.decode(ptr, offset, 'uint8_t');
      for (let o = 0; o < LEN; o += 4096) byteAt(clean, o);
      koffi.encode(copied, 'uint8_t', 0x7a); // 'z', a private copy of page 0
      if (mprotect(copied, LEN, PROT_READ) !== 0) throw new Error('mprotect');
      const rssOf = (ptr) => {
        const hex = koffi.address(ptr).toString(16).padStart(8, '0');
        const smaps = fs.readFileSync('/proc/self/smaps', 'utf8');
        const at = smaps.split('\\n').findIndex((l) => l.startsWith(hex + '-'));
        return Number(/Rss:\\s+(\\d+)/.exec(smaps.split('\\n').slice(at, at + 8).join('\\n'))[1]);
      };
      const before = rssOf(clean);
      const r = trimResident();
      console.log(JSON.stringify({ before, after: rssOf(clean), copied: byteAt(copied), sum: [1, 2, 3].map((x) => x * 2).join(','), rss: r }));
    `;
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
    const out = JSON.parse(run.stdout) as { before: number; after: number; copied: number; sum: string; rss: { before: { rss: number; file: number }; after: { rss: number; file: number } } };
    assert.equal(out.before, 64, 'the clean mapping was resident before the trim');
    assert.equal(out.after, 0, 'the clean mapping left the page tables');
    assert.equal(out.copied, 0x7a, 'the private copy kept its byte');
    assert.equal(out.sum, '2,4,6', 'the process runs on after the trim');
    assert.ok(out.rss.after.file < out.rss.before.file / 2, `file-backed pages dropped: ${out.rss.before.file} → ${out.rss.after.file} KiB`);
  } finally {
    dir.remove();
  }
});
