/**
 * The trust check (src/sys/trust.ts) on real files: a root-owned file in root-owned, not
 * group/world-writable directories is trusted, reached through a link too, and the stat it
 * returns is the file's own (the broker keys its probe memo on it); a file another account
 * owns, or one in a directory others may write, is refused with the reason and the subject's code.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, chownSync, mkdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { trustedFile, untrustedReason } from '../../src/sys/trust';
import { isVirtEbpfError } from '../../src/errors';
import { trustedDir } from '../harness';

test('a trusted file: its real path and its own stat, through a link too; untrusted ones are refused with why', (t) => {
  const dir = trustedDir(`trust-${process.pid}`);
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'qemu-system-x86_64');
  writeFileSync(file, '#!/bin/true\n', { mode: 0o755 });
  const link = join(dir, 'kvm');
  symlinkSync(file, link);

  for (const path of [file, link]) {
    const got = trustedFile(path, 'emulator');
    assert.equal(got.real, file);
    const st = statSync(file);
    assert.deepEqual([got.stat.dev, got.stat.ino, got.stat.size, got.stat.mtimeMs, got.stat.ctimeMs], [st.dev, st.ino, st.size, st.mtimeMs, st.ctimeMs]);
    assert.equal(untrustedReason(path), null);
  }

  chownSync(file, 65534, 0);
  assert.match(untrustedReason(link) ?? '', /is owned by uid 65534, not root/);
  assert.throws(() => trustedFile(link, 'emulator'), (e) => isVirtEbpfError(e) && e.code === 'EMULATOR_UNTRUSTED' && e.message.includes('owned by uid 65534'));
  chownSync(file, 0, 0);

  const open = join(dir, 'open');
  mkdirSync(open);
  chmodSync(open, 0o777);
  const inOpen = join(open, 'qemu-system-aarch64');
  writeFileSync(inOpen, '#!/bin/true\n', { mode: 0o755 });
  assert.match(untrustedReason(inOpen) ?? '', /open is writable by group or others \(mode 777\)/);
  assert.throws(() => trustedFile(inOpen, 'helper'), (e) => isVirtEbpfError(e) && e.code === 'HELPER_UNTRUSTED');

  assert.equal(untrustedReason(join(dir, 'missing')), `${join(dir, 'missing')} does not exist`);
});
