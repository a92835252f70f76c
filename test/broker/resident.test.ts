/**
 * What a broker keeps resident once it has probed an emulator and loaded contexts (the numbers
 * are in `npm run bench`): nothing asks ICU for the host's time zone (V8's toISOString would,
 * and ~0.8 MiB of ICU stays paged in), and binding libbpf looks its imports up in its own
 * dependencies, not in node's executable (~0.4 MiB of node's symbol tables otherwise) — except
 * where an allocator may be preloaded, which that binding would make abort.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { brokerRequest } from '../../src/broker/client';
import { QEMU, REPO, needRoot, tempDir } from '../harness';
import { startBrokerProcess } from '../security/support';
import { until } from './support';
import { rssObject } from '../bpf/fixture';

const LIBBPF_JS = join(REPO, 'dist/src/bpf/libbpf.js');

test("a broker that probed an emulator, filled its pool and logged JSON lines never asked V8's Date for local time or a date's text", async () => {
  needRoot('the broker loads BPF');
  const dir = tempDir('virt-ebpf-resident-');
  const calls = join(dir.path, 'date-calls.txt');
  const preload = join(dir.path, 'trap.js');
  // Where V8 reaches ICU's time zone (DateCache -> ICUTimezoneCache): every method of
  // Date.prototype but the time value's and the UTC ones, Date.parse, the Date constructor
  // given fields or a string (not the empty one, which is no date: yup makes one as it loads),
  // and Intl.DateTimeFormat. Each trap records its caller and answers
  // as V8 would. (util.inspect keeps its own copy of toISOString from before any preload; nothing
  // of the broker's inspects a Date.)
  writeFileSync(
    preload,
    `const fs = require('fs');
     const record = (what) => fs.appendFileSync(${JSON.stringify(calls)}, new Error(what).stack + '\\n');
     const utc = /^(getTime|valueOf|setTime|getUTC.*|setUTC.*|constructor)$/;
     for (const m of Object.getOwnPropertyNames(Date.prototype)) {
       const f = Date.prototype[m];
       if (utc.test(m) || typeof f !== 'function') continue;
       Object.defineProperty(Date.prototype, m, { value: function (...a) { record('Date.prototype.' + m); return f.apply(this, a); }, writable: true, configurable: true });
     }
     const parse = Date.parse; Date.parse = function (s) { record('Date.parse'); return parse(s); };
     const D = Date;
     globalThis.Date = new Proxy(D, { construct(t, a, nt) { if (a.length > 1 || (typeof a[0] === 'string' && a[0] !== '')) record('new Date(' + JSON.stringify(a) + ')'); return Reflect.construct(t, a, nt); } });
     const F = Intl.DateTimeFormat;
     Intl.DateTimeFormat = new Proxy(F, { construct(t, a, nt) { record('new Intl.DateTimeFormat'); return Reflect.construct(t, a, nt); }, apply(t, th, a) { record('Intl.DateTimeFormat'); return Reflect.apply(t, th, a); } });`,
  );
  const b = await startBrokerProcess({ pool: { size: 1 }, log: { level: 'info', format: 'json' } }, { nodeFlags: ['-r', preload] });
  try {
    const r = brokerRequest({ op: 'prewarm', emulator: QEMU, count: 1 }, { socket: b.socket, timeoutMs: 120_000 });
    assert.equal(r.reply.ok, true, JSON.stringify(r.reply));
    await until('the pool to fill', () => {
      const { reply } = brokerRequest({ op: 'status' }, { socket: b.socket });
      return reply.op === 'status' && reply.pools.some((p) => p.ready >= 1);
    }, 60_000, 100);
    assert.ok(b.bpfObjects().progs >= 1, 'the broker holds a loaded program');
    const lines = b.log().split('\n').filter((l) => l.startsWith('{'));
    assert.ok(lines.length > 0, `the broker logged JSON lines: ${b.log().slice(0, 400)}`);
    for (const l of lines) assert.match((JSON.parse(l) as { timestamp: string }).timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.equal(existsSync(calls) ? readFileSync(calls, 'utf8') : '', '', 'the broker called a Date method that consults the time zone');
  } finally {
    await b.stop();
    dir.remove();
  }
});

/** Resident 4 KiB pages of node's first file mapping (its ELF headers and dynamic symbol tables). */
const FIRST_MAPPING_PAGES = `
function firstMappingPages() {
  const fs = require('fs');
  const exe = fs.readlinkSync('/proc/self/exe');
  const line = fs.readFileSync('/proc/self/maps', 'utf8').split('\\n').find((l) => l.endsWith(' ' + exe) && / 00000000 /.test(l));
  const [lo, hi] = line.split(' ')[0].split('-').map((x) => parseInt(x, 16));
  const buf = Buffer.alloc(((hi - lo) / 4096) * 8);
  const fd = fs.openSync('/proc/self/pagemap', 'r');
  fs.readSync(fd, buf, 0, buf.length, (lo / 4096) * 8);
  fs.closeSync(fd);
  let n = 0;
  for (let i = 0; i < buf.length; i += 8) if (buf.readBigUInt64LE(i) >> 63n) n++;
  return n;
}`;

test("binding libbpf looks its imports up in libbpf's own dependencies: node's symbol tables are not paged in", () => {
  const out = execFileSync(
    process.execPath,
    ['-e', `${FIRST_MAPPING_PAGES}
      const { libbpf, libbpfLoadOptions } = require(${JSON.stringify(LIBBPF_JS)});
      // Before the count: koffi's first calls (bound to node through N-API) and the question
      // whether libc's malloc is glibc's, which decides how libbpf is bound.
      require(${JSON.stringify(join(REPO, 'dist/src/sys/koffi.js'))}).default.load('libc.so.6').func('int getpid(void)')();
      libbpfLoadOptions();
      const before = firstMappingPages();
      libbpf();
      const after = firstMappingPages();
      process.stdout.write(JSON.stringify({ before, after, options: libbpfLoadOptions() }));`],
    { encoding: 'utf8', env: { ...process.env, LD_PRELOAD: '' } },
  );
  const { before, after, options } = JSON.parse(out) as { before: number; after: number; options: { deep: boolean } };
  assert.deepEqual(options, { deep: true }, "libc's malloc is glibc's here (nothing preloaded): libbpf is bound RTLD_DEEPBIND");
  assert.ok(before > 0, 'the pages of node’s first mapping are counted');
  // Measured here: 31 pages with RTLD_DEEPBIND (dlopen's own work), 157 when libbpf's, libelf's
  // and libz's imports are looked up in node first (faulted in 64 KiB at a time).
  assert.ok(after - before < 64, `binding libbpf paged in ${after - before} pages of node's symbol tables (${before} -> ${after})`);
});

/** An allocator that is not glibc's (a bump arena): glibc's free aborts on its blocks. */
const ARENA_ALLOCATOR = String.raw`
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <string.h>
static char arena[256UL << 20] __attribute__((aligned(64)));
static size_t used;
static int ours(const void *p) { return (const char *)p >= arena && (const char *)p < arena + sizeof arena; }
void *malloc(size_t n) {
  if (n > sizeof arena) return NULL;
  size_t need = (n + 31) & ~(size_t)15;
  size_t at = __atomic_fetch_add(&used, need, __ATOMIC_RELAXED);
  if (at + need > sizeof arena) return NULL;
  *(size_t *)(arena + at) = n;
  return arena + at + 16;
}
void free(void *p) {
  static void (*next)(void *);
  if (!p || ours(p)) return;
  if (!next) next = (void (*)(void *))dlsym(RTLD_NEXT, "free");
  next(p);
}
void *calloc(size_t a, size_t b) { return b && a > sizeof arena / b ? NULL : malloc(a * b); }
void *realloc(void *p, size_t n) {
  static void *(*next)(void *, size_t);
  if (!p) return malloc(n);
  if (!ours(p)) {
    if (!next) next = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
    return next(p, n);
  }
  size_t old = *(size_t *)((char *)p - 16);
  void *q = malloc(n);
  if (q) memcpy(q, p, old < n ? old : n);
  return q;
}
size_t malloc_usable_size(void *p) {
  static size_t (*next)(void *);
  if (ours(p)) return *(size_t *)((char *)p - 16);
  if (!next) next = (size_t (*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size");
  return next(p);
}
`;

test('under a preloaded allocator, libbpf is bound the usual way and an object opens and closes (RTLD_DEEPBIND would abort)', async () => {
  const dir = tempDir('virt-ebpf-preload-');
  try {
    writeFileSync(join(dir.path, 'arena.c'), ARENA_ALLOCATOR);
    const arena = join(dir.path, 'arena.so');
    execFileSync('cc', ['-O2', '-shared', '-fPIC', '-o', arena, join(dir.path, 'arena.c'), '-ldl']);
    const object = join(dir.path, 'rss.o');
    writeFileSync(object, await rssObject());
    /** A node under the arena allocator that opens and closes the object, libbpf bound by `bind`. */
    const run = (bind: string) =>
      spawnSync(
        process.execPath,
        ['-e', `const koffi = require(${JSON.stringify(join(REPO, 'dist/src/sys/koffi.js'))}).default;
          const { LibbpfObject, libbpfLoadOptions } = require(${JSON.stringify(LIBBPF_JS)});
          ${bind}
          const mapped = require('fs').readFileSync('/proc/self/maps', 'utf8').includes(${JSON.stringify(arena)});
          const o = LibbpfObject.open(require('fs').readFileSync(${JSON.stringify(object)}), 'rss');
          o.close();
          process.stdout.write(JSON.stringify({ mapped, options: libbpfLoadOptions() }));`],
        { encoding: 'utf8', env: { ...process.env, LD_PRELOAD: arena } },
      );
    const r = run('');
    assert.equal(r.status, 0, `exit ${r.status} ${r.signal ?? ''}: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    const got = JSON.parse(r.stdout) as { mapped: boolean; options: { deep: boolean } };
    assert.equal(got.mapped, true, `the arena allocator was preloaded: ${r.stderr.trim()}`);
    assert.deepEqual(got.options, { deep: false }, "another allocator in libc's place turns RTLD_DEEPBIND off");
    // The hazard is real here: libbpf bound RTLD_DEEPBIND first, libelf's strdup'ed names (the
    // arena's) reach glibc's free at close.
    const control = run(`koffi.load('libbpf.so.1', { deep: true });`);
    assert.equal(control.signal, 'SIGABRT', `with RTLD_DEEPBIND the close aborts: exit ${control.status} ${control.signal ?? ''} ${control.stderr.trim().split('\n').pop()}`);
  } finally {
    dir.remove();
  }
});
