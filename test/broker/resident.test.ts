/**
 * What a broker keeps resident once it has probed an emulator and loaded contexts (the numbers
 * are in `npm run bench`): nothing asks ICU for the host's time zone (V8's toISOString would,
 * and ~0.8 MiB of ICU stays paged in), and binding libbpf looks its imports up in its own
 * dependencies, not in node's executable (~0.4 MiB of node's symbol tables otherwise).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { brokerRequest } from '../../src/broker/client';
import { QEMU, REPO, needRoot, tempDir } from '../harness';
import { startBrokerProcess } from '../security/support';

test('a broker that probed an emulator, filled its pool and logged JSON lines never formatted a date through V8', async () => {
  needRoot('the broker loads BPF');
  const dir = tempDir('virt-ebpf-resident-');
  const calls = join(dir.path, 'iso-calls.txt');
  const preload = join(dir.path, 'trap.js');
  // Date.prototype.toISOString is where this node's V8 reaches ICU's time zone (DateCache ->
  // ICUTimezoneCache); the trap records each caller and answers as V8 would.
  writeFileSync(
    preload,
    `const fs = require('fs'); const iso = Date.prototype.toISOString;
     Date.prototype.toISOString = function () { fs.appendFileSync(${JSON.stringify(calls)}, new Error('toISOString').stack + '\\n'); return iso.call(this); };`,
  );
  const b = await startBrokerProcess({ pool: { size: 1 }, log: { level: 'info', format: 'json' } }, { nodeFlags: ['-r', preload] });
  try {
    const r = brokerRequest({ op: 'prewarm', emulator: QEMU, count: 1 }, { socket: b.socket, timeoutMs: 120_000 });
    assert.equal(r.reply.ok, true, JSON.stringify(r.reply));
    let ready = 0;
    for (let i = 0; i < 600 && ready < 1; i++) {
      const { reply } = brokerRequest({ op: 'status' }, { socket: b.socket });
      ready = reply.op === 'status' ? Math.max(0, ...reply.pools.map((p) => p.ready)) : 0;
      if (ready < 1) await new Promise((res) => setTimeout(res, 100));
    }
    assert.equal(ready, 1, 'the pool filled');
    assert.ok(b.bpfObjects().progs >= 1, 'the broker holds a loaded program');
    const lines = b.log().split('\n').filter((l) => l.startsWith('{'));
    assert.ok(lines.length > 0, `the broker logged JSON lines: ${b.log().slice(0, 400)}`);
    for (const l of lines) assert.match((JSON.parse(l) as { timestamp: string }).timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.equal(existsSync(calls) ? readFileSync(calls, 'utf8') : '', '', 'Date.prototype.toISOString was called in the broker');
  } finally {
    await b.stop();
    dir.remove();
  }
});

/** Resident 4 KiB pages of node's first file mapping (its ELF headers and dynamic symbol tables), in process `pid`. */
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
      const { libbpf } = require(${JSON.stringify(join(REPO, 'dist/src/bpf/libbpf.js'))}); // koffi's own module binds to node (N-API)
      const before = firstMappingPages();
      libbpf();
      const after = firstMappingPages();
      process.stdout.write(JSON.stringify({ before, after }));`],
    { encoding: 'utf8' },
  );
  const { before, after } = JSON.parse(out) as { before: number; after: number };
  assert.ok(before > 0, 'the pages of node’s first mapping are counted');
  // Measured here: 31 pages with RTLD_DEEPBIND (dlopen's own work), 157 when libbpf's, libelf's
  // and libz's imports are looked up in node first (faulted in 64 KiB at a time).
  assert.ok(after - before < 64, `binding libbpf paged in ${after - before} pages of node's symbol tables (${before} -> ${after})`);
});
