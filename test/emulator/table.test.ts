/**
 * The `probe` CLI table is a pure function of probe results.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BinaryIdentity, decideCaps, formatProbeTable } from '../../src/emulator';
import { REPO } from '../harness';

const load = (name: string) => JSON.parse(readFileSync(join(REPO, 'test', 'fixtures', 'qmp', 'transcripts', name), 'utf8'));
const id = (realpath: string): BinaryIdentity => ({ realpath, dev: 1, ino: 2, size: 3, mtimeMs: 4, ctimeMs: 5 });
const AT = '2025-01-01T00:00:00.000Z';

test('one aligned row per emulator: version, protocol, property, status or reason', () => {
  const rows = [
    decideCaps(load('qemu-10.0.2.json'), { path: '/usr/bin/qemu-system-x86_64', identity: id('/usr/bin/qemu-system-x86_64') }, AT),
    decideCaps(load('qemu-7.2.22.json'), { path: '/opt/qemu-7.2/bin/qemu-system-x86_64', identity: id('/opt/qemu-7.2/bin/qemu-system-x86_64') }, AT),
    decideCaps(load('synthetic-helper-6.1.json'), { path: 'qemu-helper', identity: id('/x/qemu-helper') }, AT),
    { path: '/bin/true', error: { code: 'EMULATOR_NOT_QEMU', message: '/bin/true is not a QEMU system emulator' } },
  ];
  const out = formatProbeTable(rows);
  assert.ok(!out.endsWith('\n'), 'the caller decides about the final newline');
  const lines = out.split('\n');
  assert.equal(lines.length, 5);
  assert.match(lines[0], /^EMULATOR\s+VERSION\s+PROTOCOL\s+PROPERTY\s+STATUS$/);
  assert.match(lines[1], /^\/usr\/bin\/qemu-system-x86_64\s+10\.0\.2\s+request-ebpf\s+ebpf-rss-fds \(list\)\s+supported$/);
  assert.match(lines[2], /^\/opt\/qemu-7\.2\/bin\/qemu-system-x86_64\s+7\.2\.22\s+-\s+-\s+unsupported: QEMU 7\.2\.22 has no request-ebpf \(needs QEMU >= 9\.0\)/);
  assert.match(lines[3], /^qemu-helper\s+6\.1\.50\s+helper\s+ebpf_rss_fds \(string\)\s+supported$/);
  assert.match(lines[4], /^\/bin\/true\s+-\s+-\s+-\s+error EMULATOR_NOT_QEMU: /);
  // columns line up: VERSION starts at the same offset on every line
  const col = lines[0].indexOf('VERSION');
  assert.ok(lines.slice(1, 4).every((l) => /^\S/.test(l.slice(col)) && l[col - 1] === ' '));
  assert.equal(formatProbeTable([]), 'EMULATOR  VERSION  PROTOCOL  PROPERTY  STATUS');
});
