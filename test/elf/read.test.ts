import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  cString,
  DEFAULT_OPTIONS,
  ElfFormatError,
  EM_AARCH64,
  EM_BPF,
  EM_X86_64,
  ET_DYN,
  ET_REL,
  findSection,
  openSymbolTable,
  readElf,
  readElfHeader,
  readSymbols,
  sectionData,
  SHT_DYNSYM,
  SHT_NOBITS,
  SHT_PROGBITS,
  SHT_STRTAB,
  SHT_SYMTAB,
  symbolSection,
} from '../../src/elf';
import { needRoot, QEMU } from '../harness';
import { buildHelperDoubles, STAMP, type HelperDoubles } from '../helper/doubles';
import { buildElf, strtab, symbols } from './build';

let doubles: HelperDoubles;

before(async () => {
  needRoot('the helper doubles are built into a root-owned directory');
  doubles = await buildHelperDoubles();
});

/** Assert an ElfFormatError whose message matches; returns it for further checks. */
function refused(read: () => unknown, re: RegExp): ElfFormatError {
  let caught: unknown;
  assert.throws(read, (e: unknown) => {
    caught = e;
    assert.ok(e instanceof ElfFormatError, `expected ElfFormatError, got ${String(e)}`);
    assert.match(e.message, re);
    return true;
  });
  return caught as ElfFormatError;
}

test('symbols are read from .symtab and from .dynsym', () => {
  const tables = (v: keyof HelperDoubles['helpers']): string[] =>
    readSymbols(readElf(readFileSync(doubles.helpers[v])))
      .filter((s) => s.name === STAMP)
      .map((s) => s.table)
      .sort();
  assert.deepEqual(tables('good'), ['dynsym', 'symtab']);
  assert.deepEqual(tables('symtabOnly'), ['symtab']);
  assert.deepEqual(tables('dynsymOnly'), ['dynsym']);
  // an ordinary binary exports symbols
  assert.ok(readSymbols(readElf(readFileSync('/usr/bin/true'))).length > 0);
});

test('real files: an executable, the QEMU binary and a BPF relocatable, each as it is', () => {
  const machine = process.arch === 'arm64' ? EM_AARCH64 : EM_X86_64;
  const t0 = Date.now();
  const qemu = readElf(readFileSync(QEMU));
  assert.equal(qemu.header.type, ET_DYN);
  assert.equal(qemu.header.machine, machine);
  assert.ok(findSection(qemu, '.text'), 'QEMU has .text');
  const dyn = readSymbols(qemu);
  const main = dyn.find((s) => s.name === 'main');
  assert.ok(main, 'QEMU exports main');
  assert.equal(symbolSection(qemu, main)?.name, '.text');
  const malloc = dyn.find((s) => s.name === 'malloc');
  assert.ok(malloc && symbolSection(qemu, malloc) === undefined, 'malloc is imported (undefined here)');
  assert.ok(dyn.every((s) => s.table === 'dynsym'), 'a Debian binary ships stripped: no .symtab');
  assert.ok(Date.now() - t0 < 5_000, `QEMU (${qemu.bytes.length} bytes) read in ${Date.now() - t0} ms`);

  const rss = readElf(readFileSync(doubles.rssObject));
  assert.deepEqual([rss.header.type, rss.header.machine], [ET_REL, EM_BPF]);
  const prog = readSymbols(rss).find((s) => s.name === 'tun_rss_steering_prog');
  assert.ok(prog, 'the RSS program symbol');
  const sec = symbolSection(rss, prog);
  assert.equal(sec?.name, 'socket');
  assert.equal(sectionData(rss, sec).length, sec.size);
  assert.ok(Number(prog.size) > 0 && Number(prog.size) <= sec.size);
});

test('malformed ELF input is an ElfFormatError, never a crash', () => {
  const good = readFileSync(doubles.helpers.good);
  assert.throws(() => readSymbols(readElf(Buffer.from('#!/bin/sh\necho hi\n'))), ElfFormatError);
  assert.throws(() => readElf(good.subarray(0, 200)), /outside the 200-byte file/);
  const elf32 = Buffer.from(good);
  elf32[4] = 1;
  assert.throws(() => readElf(elf32), /not a 64-bit/);
  // Flip bytes in the header fields, the section table and the symbol/string tables (the magic
  // stays, so the parser gets past it): every outcome is a result or an ElfFormatError.
  let state = 0x9e3779b9;
  const rand = (n: number): number => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) % n;
  };
  const { sections } = readElf(good);
  const shoff = Number(good.readBigUInt64LE(0x28));
  const regions: [number, number][] = [
    [16, 48],
    [shoff, sections.length * 64],
    ...sections.filter((s) => ['.symtab', '.dynsym', '.strtab', '.dynstr'].includes(s.name)).map((s): [number, number] => [s.offset, s.size]),
  ];
  assert.equal(regions.length, 6);
  const outcomes = new Map<string, number>();
  for (let i = 0; i < 3000; i++) {
    const b = Buffer.from(good);
    for (let k = 0, n = 1 + rand(4); k < n; k++) {
      const [start, len] = regions[rand(regions.length)];
      b[start + rand(len)] = rand(256);
    }
    let outcome: string;
    try {
      outcome = readSymbols(readElf(b)).some((s) => s.name === STAMP && s.shndx !== 0) ? 'stamp' : 'no stamp';
    } catch (e) {
      assert.ok(e instanceof ElfFormatError, `mutation ${i}: ${(e as Error).stack}`);
      outcome = 'ElfFormatError';
    }
    outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
  }
  // the mutations reached all three outcomes, so the check above was exercised
  assert.equal(outcomes.size, 3, JSON.stringify([...outcomes]));
});

test('the error says what is wrong: a short problem, the evidence, the numbers, the input named as the caller calls it', () => {
  const e = refused(() => readElfHeader(Buffer.from('#!/bin/sh\n')), /^bad magic 23212f62, expected 7f454c46 \("\\x7fELF"\): not an ELF file$/);
  assert.equal(e.problem, 'not an ELF file');
  assert.deepEqual(e.fields, { magic: '23212f62' });
  refused(() => readElfHeader(Buffer.from('#!')), /^bad magic 2321, /);
  assert.equal(refused(() => readElfHeader(Buffer.alloc(0)), /the file is empty/).problem, 'the file is empty');

  const { bytes } = buildElf({ sections: [{ name: '.text', type: SHT_PROGBITS, data: Buffer.alloc(16) }] });
  const cut = bytes.subarray(0, bytes.length - 1);
  const t = refused(() => readElf(cut), /^truncated section table: 3 headers \(offset \d+, 192 bytes\) lies outside the \d+-byte file$/);
  assert.equal(t.fields.length, 192);
  assert.equal(t.fields.inputBytes, cut.length);
  refused(() => readElf(cut, { subject: 'object' }), /lies outside the \d+-byte object$/);
  refused(() => readElf(bytes, { subject: 'image', maxBytes: 100 }), new RegExp(`^the image is ${bytes.length} bytes, over the 100-byte limit$`));
});

test('extended numbering: counts kept in section header 0 are followed', () => {
  const sections = [{ name: '.text', type: SHT_PROGBITS, data: Buffer.from('code') }];
  const plain = readElf(buildElf({ sections }).bytes);
  const ext = buildElf({ sections, extended: true });
  assert.deepEqual(readElfHeader(ext.bytes).shnum, 0);
  const elf = readElf(ext.bytes);
  // section 0 differs: its size and link fields hold the counts
  assert.deepEqual(elf.sections.slice(1), plain.sections.slice(1));
  assert.equal(elf.shstrndx, ext.index['.shstrtab']);
  assert.equal(sectionData(elf, findSection(elf, '.text')!).toString(), 'code');
  // section 0 names counts, not bytes: it has no data even though its size field is set
  assert.equal(sectionData(elf, elf.sections[0]).length, 0);
  // a count in header 0 is a count like any other: limited before the table is read
  ext.bytes.writeBigUInt64LE(1n << 40n, ext.shoff + 32);
  refused(() => readElf(ext.bytes), /^1099511627776 sections, over the limit of 65536$/);
});

test('files without a section table or without section names are legal and read as such', () => {
  const { bytes } = buildElf({ sections: [{ name: '.text', type: SHT_PROGBITS, data: Buffer.alloc(8) }], noNames: true });
  const unnamed = readElf(bytes);
  assert.equal(unnamed.shstrndx, 0);
  assert.deepEqual(
    unnamed.sections.map((s) => s.name),
    ['', '', ''],
  );
  const none = Buffer.from(bytes);
  none.writeBigUInt64LE(0n, 0x28);
  const elf = readElf(none);
  assert.deepEqual(elf.sections, []);
  assert.deepEqual(readSymbols(elf), []);
});

/** A relocatable with .text, .bss, .symtab/.strtab and .dynsym/.dynstr, for symbol tests. */
function withSymbols(edit: { sym?: Parameters<typeof symbols>[0]; dyn?: Parameters<typeof symbols>[0]; strData?: Buffer } = {}) {
  const str = strtab(['start', 'counter', 'far']);
  const dynstr = strtab(['exported']);
  // indices: 1 .text, 2 .bss, 3 .strtab, 4 .symtab, 5 .dynstr, 6 .dynsym, 7 .shstrtab
  return buildElf({
    sections: [
      { name: '.text', type: SHT_PROGBITS, data: Buffer.alloc(16) },
      { name: '.bss', type: SHT_NOBITS, size: 4096 },
      { name: '.strtab', type: SHT_STRTAB, data: edit.strData ?? str.data },
      {
        name: '.symtab',
        type: SHT_SYMTAB,
        entsize: 24,
        link: 3,
        data: symbols(
          edit.sym ?? [
            { nameOff: str.offset.start, shndx: 1, value: 0n, size: 16n },
            { nameOff: str.offset.counter, type: 1, shndx: 2, size: 4n },
            { nameOff: str.offset.far, type: 0, shndx: 0xfff1, value: 1n << 63n },
          ],
        ),
      },
      { name: '.dynstr', type: SHT_STRTAB, data: dynstr.data },
      { name: '.dynsym', type: SHT_DYNSYM, entsize: 24, link: 5, data: symbols(edit.dyn ?? [{ nameOff: dynstr.offset.exported, shndx: 1 }]) },
    ],
  });
}

test('both symbol tables, with their sections, bigint values and the null symbol', () => {
  const elf = readElf(withSymbols().bytes);
  const syms = readSymbols(elf);
  assert.deepEqual(
    syms.map((s) => `${s.table}#${s.index} ${s.name || '(null)'} in ${symbolSection(elf, s)?.name ?? '-'}`),
    ['symtab#0 (null) in -', 'symtab#1 start in .text', 'symtab#2 counter in .bss', 'symtab#3 far in -', 'dynsym#0 (null) in -', 'dynsym#1 exported in .text'],
  );
  // an absolute symbol above 2^53 keeps its exact value
  assert.equal(syms[3].value, 1n << 63n);
  assert.equal(sectionData(elf, findSection(elf, '.bss')!).length, 0);
  const dynsym = findSection(elf, '.dynsym')!;
  assert.deepEqual(
    readSymbols(elf, dynsym).map((s) => s.name),
    ['', 'exported'],
  );
  const table = openSymbolTable(elf, dynsym);
  assert.equal(table.count, 2);
  assert.equal(table.strings.name, '.dynstr');
  assert.throws(() => table.symbol(2), RangeError);
  assert.throws(() => openSymbolTable(elf, findSection(elf, '.text')!), RangeError);
});

test('symbol tables are checked before they are used, and each message names the table', () => {
  const str = strtab(['start']);
  refused(() => readSymbols(readElf(withSymbols({ sym: [{ nameOff: 999 }] }).bytes)), /^symbol 1 name offset 999 is outside the string table$/);
  refused(() => readSymbols(readElf(withSymbols({ dyn: [{ nameOff: 999 }] }).bytes)), /^dynamic symbol 1 name offset 999 is outside the string table$/);
  refused(() => readSymbols(readElf(withSymbols({ sym: [{ nameOff: str.offset.start, shndx: 9 }] }).bytes)), /^symbol 1 refers to section 9, which does not exist$/);
  // the string table's last name lacks its NUL: never read past the table
  const unterminated = Buffer.from(str.data.subarray(0, str.data.length - 1));
  refused(() => readSymbols(readElf(withSymbols({ sym: [{ nameOff: 1 }], strData: unterminated }).bytes)), /^name of symbol 1 is not NUL-terminated inside its string table$/);

  const built = withSymbols();
  const header = (i: number): number => built.shoff + i * 64;
  const entsize = Buffer.from(built.bytes);
  entsize.writeBigUInt64LE(16n, header(6) + 56);
  refused(() => readSymbols(readElf(entsize)), /^dynamic symbol table entry size 16, expected 24$/);
  const odd = Buffer.from(built.bytes);
  odd.writeBigUInt64LE(25n, header(4) + 32);
  refused(() => readSymbols(readElf(odd)), /^symbol table size 25 is not a multiple of 24$/);
  const link = Buffer.from(built.bytes);
  link.writeUInt32LE(1, header(4) + 40);
  refused(() => readSymbols(readElf(link)), /^symbol table links to section 1, which is not a string table$/);
  refused(() => readSymbols(readElf(built.bytes, { maxSymbols: 3 })), /^symbol table has 4 entries, over the limit of 3$/);
});

test('sections are checked against the input and the name table before any is used', () => {
  const built = withSymbols();
  const header = (i: number): number => built.shoff + i * 64;
  const far = Buffer.from(built.bytes);
  far.writeBigUInt64LE(BigInt(far.length), header(1) + 24);
  refused(() => readElf(far), new RegExp(`^section 1 \\(offset ${far.length}, 16 bytes\\) lies outside the ${far.length}-byte file$`));
  // NOBITS occupies no file space, so any size is fine for it
  const bss = Buffer.from(built.bytes);
  bss.writeBigUInt64LE(1n << 40n, header(2) + 32);
  assert.equal(findSection(readElf(bss), '.bss')!.size, 2 ** 40);
  const huge = Buffer.from(built.bytes);
  huge.writeBigUInt64LE(1n << 60n, header(1) + 32);
  refused(() => readElf(huge), /^section 1 size 1152921504606846976 is out of range$/);
  const name = Buffer.from(built.bytes);
  name.writeUInt32LE(0xffff, header(1));
  refused(() => readElf(name), /^section 1 name offset 65535 is outside the section name table$/);
  const notStr = Buffer.from(built.bytes);
  notStr.writeUInt32LE(SHT_PROGBITS, header(7) + 4);
  refused(() => readElf(notStr), /^section name table \(section 7\) has type 1, expected SHT_STRTAB$/);
  const index = Buffer.from(built.bytes);
  index.writeUInt16LE(8, 0x3e);
  refused(() => readElf(index), /^section name table index 8 does not exist \(8 sections\)$/);
  refused(() => readElf(built.bytes, { maxSections: 7 }), /^8 sections, over the limit of 7$/);
});

test('names cost bounded work: many entries naming one long string are refused, not scanned again and again', () => {
  // 1 MiB name, and 100 000 symbols that all point at it: 100 GB of scanning without a budget
  const long = Buffer.alloc(1024 * 1024 + 2, 0x61);
  long[0] = 0;
  long[long.length - 1] = 0;
  const n = 100_000;
  const { bytes } = buildElf({
    sections: [
      { name: '.strtab', type: SHT_STRTAB, data: long },
      { name: '.symtab', type: SHT_SYMTAB, entsize: 24, link: 1, data: symbols(Array.from({ length: n }, () => ({ nameOff: 1, shndx: 0 }))) },
    ],
  });
  const t0 = Date.now();
  refused(() => readSymbols(readElf(bytes)), new RegExp(`^names in the symbol table add up to more than ${DEFAULT_OPTIONS.maxNameBytes} bytes$`));
  assert.ok(Date.now() - t0 < 2_000, `refused in ${Date.now() - t0} ms`);
  // the budget is per opened table and counts exactly: a few long names are fine, one more is not
  const elf = readElf(bytes, { maxNameBytes: 3 * (long.length - 1) });
  const table = openSymbolTable(elf, findSection(elf, '.symtab')!);
  for (const i of [1, 2, 3]) assert.equal(table.symbol(i).name.length, long.length - 2);
  refused(() => table.symbol(4), /^names in the symbol table add up to more than 3145731 bytes$/);
  assert.equal(openSymbolTable(elf, findSection(elf, '.symtab')!).symbol(4).name.length, long.length - 2);
});

test('cString stays inside its table', () => {
  const buf = Buffer.from('\0abc\0def', 'latin1');
  assert.equal(cString(buf, 1, buf.length, 'x'), 'abc');
  assert.equal(cString(buf, 0, 1, 'x'), '');
  refused(() => cString(buf, 1, 3, 'the name'), /^the name is not NUL-terminated inside its string table$/);
  refused(() => cString(buf, 5, buf.length, 'tail'), /not NUL-terminated/);
  refused(() => cString(buf, 2, 2, 'empty range'), /not NUL-terminated/);
  refused(() => cString(buf, -1, 4, 'before'), /lies outside the 8-byte input/);
  refused(() => cString(buf, 1, 99, 'after'), /lies outside the 8-byte input/);
});
