import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ElfFormatError } from '../../src/elf';
import { findStampStrings, helperStampsFromElf, judgeStamps, readEmulatorStamps, readHelperStamps, shortStamp, StampScanner, verifyStamp } from '../../src/helper';
import { isVirtEbpfError } from '../../src/errors';
import { needRoot, QEMU, tempDir } from '../harness';
import { buildHelperDoubles, OTHER_STAMP, STAMP, STAMP_2023, type HelperDoubles } from './doubles';

const HEX = '0123456789abcdef0123456789abcdef01234567';
let doubles: HelperDoubles;
const tmp = tempDir('virt-ebpf-stamp-');

before(async () => {
  needRoot('the doubles must be root-owned to pass trust checks');
  doubles = await buildHelperDoubles();
});
after(() => tmp.remove());

test('finds both spellings, exactly 40 hex digits followed by a non-hex byte', () => {
  const buf = Buffer.from(
    `xx\0qemuHelperStamp_${HEX}\0` +
      `qemuEbpfRssHelperStamp_${HEX.toUpperCase()}\0` +
      `qemuHelperStamp_${HEX}9\0` + // 41 digits: not a stamp
      `qemuHelperStamp_${HEX.slice(1)}\0` + // 39 digits
      `qemuHelperStamp_%s\0` +
      `qemuHelperStamp_${HEX}`, // at the very end of the input
    'latin1',
  );
  const hits = findStampStrings(buf);
  assert.deepEqual(
    hits.map((h) => h.stamp),
    [`qemuHelperStamp_${HEX}`, `qemuEbpfRssHelperStamp_${HEX.toUpperCase()}`, `qemuHelperStamp_${HEX}`],
  );
  assert.equal(hits[0].offset, 3);
  // not final: the trailing stamp could continue in the next chunk, so it is held back
  assert.equal(findStampStrings(buf, false).length, 2);
});

test('a stamp split across chunks at any position is found exactly once', () => {
  const text = Buffer.from(`${'a'.repeat(70)}qemuHelperStamp_${HEX}\0${'b'.repeat(5)}qemuEbpfRssHelperStamp_${HEX.replace(/0/g, 'f')}\0tail`, 'latin1');
  const want = [`qemuHelperStamp_${HEX}`, `qemuEbpfRssHelperStamp_${HEX.replace(/0/g, 'f')}`];
  for (let cut = 0; cut <= text.length; cut++) {
    for (const size of [1, 7, 64]) {
      const s = new StampScanner();
      s.push(text.subarray(0, cut));
      for (let at = cut; at < text.length; at += size) s.push(text.subarray(at, Math.min(text.length, at + size)));
      assert.deepEqual(s.end(), want, `cut ${cut}, chunk ${size}`);
    }
  }
});

test('an emulator file is streamed in small chunks and its stamp found', async () => {
  const path = join(tmp.path, 'emu');
  writeFileSync(path, Buffer.concat([Buffer.alloc(100_003, 0x41), Buffer.from(`qemuHelperStamp_${HEX}\0`), Buffer.alloc(5000, 0x66)]));
  assert.deepEqual(await readEmulatorStamps(path, 17), [`qemuHelperStamp_${HEX}`]);
  assert.deepEqual(await readEmulatorStamps(doubles.emulator), [STAMP]);
});

test('a real QEMU 10 carries no helper stamp (the series was never merged)', async () => {
  assert.deepEqual(await readEmulatorStamps(QEMU), []);
});

test('the stamp symbol is read from .symtab, from .dynsym, and in the 2023 spelling', () => {
  // (which table each stamp comes from is the ELF reader's business: test/elf)
  for (const v of ['good', 'symtabOnly', 'dynsymOnly'] as const) assert.deepEqual(readHelperStamps(doubles.helpers[v]), [STAMP]);
  assert.deepEqual(readHelperStamps(doubles.helpers.stamp2023), [STAMP_2023]);
  assert.deepEqual(readHelperStamps(doubles.helpers.wrongStamp), [OTHER_STAMP]);
  // an ordinary binary exports symbols, but no stamp
  assert.deepEqual(readHelperStamps('/usr/bin/true'), []);
});

test('malformed ELF input is an ElfFormatError, never a crash', () => {
  // (the reader's own malformed-input tests and fuzz live in test/elf)
  assert.throws(() => helperStampsFromElf(Buffer.from('#!/bin/sh\necho hi\n')), ElfFormatError);
});

test('judging stamps: one per side, equal; messages say which side and shorten stamps', () => {
  assert.deepEqual(judgeStamps('h', [STAMP], 'e', [STAMP]), { ok: true, stamp: STAMP });
  const reason = (v: ReturnType<typeof judgeStamps>): string => (v.ok ? '' : v.reason);
  assert.match(reason(judgeStamps('h', [], 'e', [STAMP])), /^helper h has no build stamp symbol$/);
  assert.match(reason(judgeStamps('h', [STAMP], 'e', [])), /^emulator e carries no build stamp/);
  assert.match(reason(judgeStamps('h', [], 'e', [])), /^neither helper h nor emulator e/);
  assert.match(reason(judgeStamps('h', [STAMP, OTHER_STAMP], 'e', [STAMP])), /carries 2 different stamps/);
  assert.match(reason(judgeStamps('h', [STAMP], 'e', [OTHER_STAMP, STAMP])), /emulator e carries 2 different stamps/);
  const mismatch = reason(judgeStamps('h', [OTHER_STAMP], 'e', [STAMP]));
  assert.ok(mismatch.includes(shortStamp(OTHER_STAMP)) && mismatch.includes(shortStamp(STAMP)));
  assert.ok(!mismatch.includes(STAMP), 'full stamps stay out of the one-line message');
  // same hex in the other spelling is a different build generation
  assert.equal(judgeStamps('h', [STAMP_2023], 'e', [STAMP]).ok, false);
});

test('verifyStamp accepts the matching helper and names the problem otherwise', async () => {
  assert.equal(await verifyStamp(doubles.helpers.good, doubles.emulator), STAMP);
  assert.equal(await verifyStamp(doubles.helpers.dynsymOnly, doubles.emulator), STAMP);

  const expectMismatch = async (helper: string, emulator: string, re: RegExp): Promise<void> => {
    await assert.rejects(verifyStamp(helper, emulator), (e: unknown) => {
      assert.ok(isVirtEbpfError(e, 'HELPER_STAMP_MISMATCH'), String(e));
      assert.match(e.message, re);
      assert.ok(!e.message.includes('\n'));
      assert.match(e.remedy, /use the helper built with this QEMU \(query-helper-paths names it\); reinstall QEMU/);
      return true;
    });
  };
  await expectMismatch(doubles.helpers.wrongStamp, doubles.emulator, /is stamped qemuHelperStamp_[0-9a-f]{12}… but emulator .* is qemuHelperStamp_[0-9a-f]{12}…$/);
  await expectMismatch('/usr/bin/true', doubles.emulator, /helper \/usr\/bin\/true has no build stamp symbol/);
  await expectMismatch(doubles.helpers.good, QEMU, /carries no build stamp/);
  await expectMismatch('/usr/bin/true', QEMU, /neither helper/);
  const script = join(tmp.path, 'helper.sh');
  writeFileSync(script, '#!/bin/sh\nexit 0\n', { mode: 0o755 });
  await expectMismatch(script, doubles.emulator, /no build stamp symbol \(not an ELF file\)/);

  await assert.rejects(verifyStamp(join(tmp.path, 'absent'), doubles.emulator), (e: unknown) => isVirtEbpfError(e, 'HELPER_NOT_FOUND'));
  await assert.rejects(verifyStamp(doubles.helpers.good, join(tmp.path, 'absent')), (e: unknown) => isVirtEbpfError(e, 'EMULATOR_NOT_FOUND'));
});
