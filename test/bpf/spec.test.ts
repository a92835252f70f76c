import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { parseBpfObject, rssProblems, type BpfSpec } from '../../src/bpf';
import { BtfKind } from '../../src/bpf/btf';
import { isVirtEbpfError } from '../../src/errors';
import { rssObject } from './fixture';
import { attrPointer, locate, prng, promoteLabelToProgram, renameString, setBtfType, setMapAttr, setSectionField, shiftSectionName } from './mutate';
import { MAX_OBJECT_BYTES } from '../../src/bpf/elf';

let obj: Buffer;
before(async () => {
  obj = await rssObject();
});

const map = (name: string, valueSize: number, maxEntries: number) => ({
  name,
  type: 2,
  keySize: 4,
  valueSize,
  maxEntries,
  flags: 0x400,
  source: 'btf' as const,
  pinning: 0,
  numaNode: 0,
  mapExtra: 0,
});

test('the real QEMU object: one socket program, three mmapable arrays in declaration order', () => {
  const spec = parseBpfObject(obj);
  assert.deepEqual(spec, {
    programs: [{ name: 'tun_rss_steering_prog', section: 'socket', insns: spec.programs[0]?.insns }],
    maps: [map('tap_rss_map_configurations', 10, 1), map('tap_rss_map_toeplitz_key', 40, 1), map('tap_rss_map_indirection_table', 2, 128)],
    size: obj.length,
    license: 'GPL v2',
  } satisfies BpfSpec);
  // the program's size is whatever QEMU built, but it is real code, not a stub
  assert.ok(spec.programs[0].insns > 100, `${spec.programs[0].insns} instructions`);
});

test('parsing is pure and deterministic, and does not touch its input', () => {
  const copy = Buffer.from(obj);
  assert.deepEqual(parseBpfObject(obj), parseBpfObject(copy));
  assert.ok(copy.equals(obj));
});

function badElf(bytes: Buffer, part: RegExp): void {
  assert.throws(
    () => parseBpfObject(bytes),
    (e: unknown) => {
      assert.ok(isVirtEbpfError(e, 'BPF_BAD_ELF'), `expected BPF_BAD_ELF, got ${String(e)}`);
      assert.match(e.message, part);
      assert.ok(e.remedy.length > 0);
      return true;
    },
  );
}

test('non-ELF input is refused by name: empty, text, bad magic, truncated header', () => {
  badElf(Buffer.alloc(0), /object is empty/);
  badElf(Buffer.from('this is definitely not an eBPF object, just text'), /bad magic 74686973.*not an ELF file/);
  const flipped = Buffer.from(obj);
  flipped[0] = 0x7e;
  badElf(flipped, /bad magic 7e454c46/);
  badElf(obj.subarray(0, 40), /truncated ELF header: 40 bytes/);
});

test('wrong class, endianness, type or machine is named', () => {
  const edit = (at: number, write: (b: Buffer) => void): Buffer => {
    const b = Buffer.from(obj);
    write(b);
    return b;
  };
  badElf(edit(4, (b) => (b[4] = 1)), /ELF class 1 \(32-bit\), expected 2/);
  badElf(edit(5, (b) => (b[5] = 2)), /data encoding 2 \(big-endian\), expected 1 \(little-endian\)/);
  badElf(edit(16, (b) => b.writeUInt16LE(2, 16)), /ELF type 2, expected 1 \(relocatable/);
  badElf(edit(18, (b) => b.writeUInt16LE(62, 18)), /ELF machine 62, expected EM_BPF \(247\)/);
});

test('truncation anywhere after the header is caught, never read past', () => {
  badElf(obj.subarray(0, 1000), /truncated section table/);
  badElf(obj.subarray(0, obj.length - 10), /truncated section table: 13 headers/);
  // a section table that ends in bounds but whose sections do not
  const shoff = Number(obj.readBigUInt64LE(0x28));
  const moved = Buffer.concat([obj.subarray(0, 0x1400), obj.subarray(shoff)]);
  moved.writeBigUInt64LE(0x1400n, 0x28);
  badElf(moved, /section \d+ \(offset \d+, \d+ bytes\) lies outside the \d+-byte object/);
});

test('out-of-range offsets and counts are refused', () => {
  badElf(setSectionField(obj, '.BTF', 'offset', 0xffff_ffffn), /section 7 \(offset 4294967295, 5857 bytes\) lies outside/);
  badElf(setSectionField(obj, '.BTF', 'size', 1n << 60n), /section 7 size 1152921504606846976 is out of range/);
  const many = Buffer.from(obj);
  many.writeUInt16LE(0xfff0, 0x3c);
  badElf(many, /65520 sections, over the limit/);
  const names = Buffer.from(obj);
  names.writeUInt16LE(99, 0x3e);
  badElf(names, /section name table index 99 does not exist/);
});

test('BTF problems are named: cycles are cut, dangling ids and truncated types refused', () => {
  // typedef pointing at itself where a map attribute pointer should be
  const ptr = attrPointer(obj, 'tap_rss_map_indirection_table', 'max_entries');
  badElf(setBtfType(obj, ptr, BtfKind.Typedef, ptr), /BTF: map tap_rss_map_indirection_table attribute 'max_entries': type chain deeper than 32/);
  badElf(setBtfType(obj, ptr, BtfKind.Ptr, 99_999), /refers to type 99999, which does not exist/);
  // a struct claiming 65535 members runs off the end of the type table
  const l = locate(obj);
  const struct = l.btf.types.find((t) => t.kind === BtfKind.Struct)!;
  badElf(setBtfType(obj, struct.id, BtfKind.Struct, struct.sizeOrType, 0xffff), new RegExp(`BTF: type ${struct.id} is truncated`));
  const unknownKind = setBtfType(obj, ptr, 31 as BtfKind, 0);
  badElf(unknownKind, new RegExp(`BTF: type ${ptr} has unknown kind 31`));
});

test('a map attribute not encoded as pointer-to-array is refused', () => {
  const ptr = attrPointer(obj, 'tap_rss_map_toeplitz_key', 'value_size');
  const l = locate(obj);
  const int = l.btf.types.find((t) => t.kind === BtfKind.Int)!;
  badElf(setBtfType(obj, ptr, BtfKind.Ptr, int.id), /map tap_rss_map_toeplitz_key attribute 'value_size' is not a pointer to an array/);
});

test('map changes show up in the spec (the validator decides what is acceptable)', () => {
  const spec = parseBpfObject(setMapAttr(obj, 'tap_rss_map_indirection_table', 'max_entries', 256));
  assert.equal(spec.maps[2].maxEntries, 256);
  assert.equal(spec.maps[0].maxEntries, 1);
  const renamed = parseBpfObject(renameString(obj, '.BTF', 'tap_rss_map_toeplitz_key', 'tap_rss_map_toeplitz_kez'));
  assert.deepEqual(
    renamed.maps.map((m) => m.name),
    ['tap_rss_map_configurations', 'tap_rss_map_toeplitz_kez', 'tap_rss_map_indirection_table'],
  );
  const twoProgs = parseBpfObject(promoteLabelToProgram(obj, 'LBB0_104', 1));
  assert.deepEqual(
    twoProgs.programs.map((p) => `${p.section}/${p.name}/${p.insns}`),
    [`socket/tun_rss_steering_prog/${twoProgs.programs[0].insns}`, 'socket/LBB0_104/1'],
  );
  // A global data section becomes an implicit libbpf map; the spec must show it. ("license" is
  // stored as the tail of "_license", so renaming that renames the section too.)
  const withData = parseBpfObject(renameString(obj, '.strtab', '_license', '_.data\0\0'));
  assert.deepEqual(withData.maps.map((m) => `${m.source}:${m.name}`).slice(-1), ['data:.data']);
  assert.equal(withData.license, undefined);
});

test('legacy `maps` definitions are read (libbpf 1.x would refuse them; the validator does too)', () => {
  // the BTF map definitions are zero-filled, so as legacy structs they read as all zeros
  const legacy = parseBpfObject(shiftSectionName(obj, '.maps', 1));
  assert.deepEqual(
    legacy.maps.map((m) => [m.source, m.name, m.type, m.keySize, m.valueSize, m.maxEntries, m.flags]),
    [
      ['legacy', 'tap_rss_map_configurations', 0, 0, 0, 0, 0],
      ['legacy', 'tap_rss_map_toeplitz_key', 0, 0, 0, 0, 0],
      ['legacy', 'tap_rss_map_indirection_table', 0, 0, 0, 0, 0],
    ],
  );
  assert.match(rssProblems(legacy).join('\n'), /map tap_rss_map_configurations is a legacy map, expected a BTF-defined map in \.maps/);
  // a section too short for the second 20-byte struct
  badElf(setSectionField(shiftSectionName(obj, '.maps', 1), 'maps', 'size', 50n), /legacy map tap_rss_map_toeplitz_key \(offset 40\) lies outside section maps/);
});

test('oversized input is refused before any parsing', () => {
  const huge = Buffer.alloc(MAX_OBJECT_BYTES + 1);
  obj.copy(huge);
  badElf(huge, /over the 16777216-byte limit/);
});

test('a program running past its section is refused', () => {
  badElf(promoteLabelToProgram(obj, 'LBB0_104', 10), /program LBB0_104 in section socket \(offset \d+, 80 bytes\) lies outside its \d+-byte section/);
});

test('fuzz: random corruption yields a spec or BPF_BAD_ELF, nothing else, quickly', () => {
  const rnd = prng(0x5eed);
  const started = Date.now();
  const btf = locate(obj).elf.section('.BTF')!;
  let parsed = 0;
  const reasons = new Set<string>();
  for (let i = 0; i < 3000; i++) {
    const b = Buffer.from(obj);
    const flips = 1 + Math.floor(rnd() * 8);
    // bias towards the header, section table and BTF, where the structure lives
    const shoff = Number(obj.readBigUInt64LE(0x28));
    for (let f = 0; f < flips; f++) {
      const zone = rnd();
      const at = zone < 0.2 ? Math.floor(rnd() * 64) : zone < 0.5 ? shoff + Math.floor(rnd() * (obj.length - shoff)) : zone < 0.8 ? btf.offset + Math.floor(rnd() * btf.size) : Math.floor(rnd() * obj.length);
      b[at] = Math.floor(rnd() * 256);
    }
    const cut = rnd() < 0.1 ? Math.floor(rnd() * b.length) : b.length;
    try {
      parseBpfObject(b.subarray(0, cut));
      parsed++;
    } catch (e) {
      assert.ok(isVirtEbpfError(e, 'BPF_BAD_ELF'), `iteration ${i}: ${String((e as Error).stack)}`);
      reasons.add(e.message.replace(/\d+/g, 'N'));
    }
  }
  assert.ok(parsed > 0, 'some corruptions leave a parseable object');
  assert.ok(reasons.size > 20, `many distinct refusals (${reasons.size})`);
  assert.ok(Date.now() - started < 20_000, 'bounded work');
});
