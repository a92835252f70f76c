/**
 * Targeted edits of a real BPF object that keep everything else valid, so each test changes
 * exactly one thing. Offsets come from our own parser (already tested on the untouched object)
 * and every edit asserts that it hits what it means to hit.
 */
import assert from 'node:assert/strict';
import { BtfKind, parseBtf, type Btf, type BtfType } from '../../src/bpf/btf';
import { parseElf, STT_FUNC, type ElfObject } from '../../src/bpf/elf';

const SHDR_SIZE = 64;
const SYM_SIZE = 24;

export interface Located {
  elf: ElfObject;
  btf: Btf;
  /** file offset of the .BTF section */
  btfAt: number;
}

export function locate(obj: Buffer): Located {
  const elf = parseElf(obj);
  const sec = elf.section('.BTF');
  assert.ok(sec, 'object has .BTF');
  return { elf, btf: parseBtf(elf.data(sec)), btfAt: sec.offset };
}

function mapStruct(l: Located, map: string): BtfType {
  const v = l.btf.types.find((t) => t.kind === BtfKind.Var && t.name === map);
  assert.ok(v, `BTF VAR ${map}`);
  const s = l.btf.skipModsAndTypedefs(v.sizeOrType, map);
  assert.equal(s.kind, BtfKind.Struct);
  return s;
}

/** Every struct member (of any map) whose type is `ptrId`. */
function users(l: Located, ptrId: number): string[] {
  return l.btf.types.flatMap((t) => (t.members ?? []).filter((m) => m.type === ptrId).map((m) => `${t.id}.${m.name}`));
}

/**
 * Set the N of a `__uint(attr, N)` attribute (pointer to int[N]) in place. Several maps may share
 * one array type; `shared` says how many members are expected to change with it.
 */
export function setMapAttr(obj: Buffer, map: string, attr: string, value: number, shared = 1): Buffer {
  const out = Buffer.from(obj);
  const l = locate(out);
  const member = mapStruct(l, map).members!.find((m) => m.name === attr);
  assert.ok(member, `${map}.${attr}`);
  const ptr = l.btf.type(member.type, attr);
  assert.equal(ptr.kind, BtfKind.Ptr);
  const arr = l.btf.type(ptr.sizeOrType, attr);
  assert.equal(arr.kind, BtfKind.Array);
  const ptrUsers = l.btf.types.filter((t) => t.kind === BtfKind.Ptr && t.sizeOrType === arr.id).flatMap((p) => users(l, p.id));
  assert.equal(ptrUsers.length, shared, `int[${arr.array!.nelems}] of ${map}.${attr} is used by ${ptrUsers.join(', ')}`);
  out.writeUInt32LE(value, l.btfAt + arr.offset + 12 + 8); // btf_type (12) + btf_array.nelems at +8
  return out;
}

/** Replace a NUL-terminated string with another of the same length, inside one section. */
export function renameString(obj: Buffer, sectionName: string, from: string, to: string): Buffer {
  assert.equal(from.length, to.length, 'same-length rename keeps every offset valid');
  const out = Buffer.from(obj);
  const sec = parseElf(out).section(sectionName);
  assert.ok(sec, sectionName);
  const needle = Buffer.from(`\0${from}\0`, 'latin1');
  const at = out.subarray(sec.offset, sec.offset + sec.size).indexOf(needle);
  assert.ok(at >= 0, `"${from}" in ${sectionName}`);
  out.write(to, sec.offset + at + 1, 'latin1');
  return out;
}

/** Turn a local code label into a global function of `insns` instructions: a second program. */
export function promoteLabelToProgram(obj: Buffer, label: string, insns: number): Buffer {
  const out = Buffer.from(obj);
  const elf = parseElf(out);
  const sym = elf.symbols.find((s) => s.name === label);
  assert.ok(sym, label);
  const symtab = elf.sections.find((s) => s.type === 2)!;
  const at = symtab.offset + sym.index * SYM_SIZE;
  out[at + 4] = (1 << 4) | STT_FUNC; // STB_GLOBAL, STT_FUNC
  out.writeBigUInt64LE(BigInt(insns * 8), at + 16);
  return out;
}

/** Overwrite a field of a section header. */
export function setSectionField(obj: Buffer, sectionName: string, field: 'offset' | 'size', value: bigint): Buffer {
  const out = Buffer.from(obj);
  const elf = parseElf(out);
  const sec = elf.section(sectionName);
  assert.ok(sec, sectionName);
  const shoff = Number(out.readBigUInt64LE(0x28));
  out.writeBigUInt64LE(value, shoff + sec.index * SHDR_SIZE + (field === 'offset' ? 24 : 32));
  return out;
}

/** Rewrite one BTF type's kind and referenced type (e.g. to build a typedef cycle). */
export function setBtfType(obj: Buffer, id: number, kind: BtfKind, ref: number, vlen = 0): Buffer {
  const out = Buffer.from(obj);
  const l = locate(out);
  const t = l.btf.type(id, 'mutation');
  out.writeUInt32LE(((kind & 0x1f) << 24) | (vlen & 0xffff), l.btfAt + t.offset + 4);
  out.writeUInt32LE(ref, l.btfAt + t.offset + 8);
  return out;
}

/** The BTF id of the pointer type behind a map attribute. */
export function attrPointer(obj: Buffer, map: string, attr: string): number {
  const l = locate(obj);
  const m = mapStruct(l, map).members!.find((x) => x.name === attr);
  assert.ok(m, `${map}.${attr}`);
  return m.type;
}

/** File offset of instruction `n` of a program section, and the instruction bytes. */
export function findInsn(obj: Buffer, sectionName: string, match: (insn: Buffer, index: number) => boolean): number {
  const elf = parseElf(obj);
  const sec = elf.section(sectionName);
  assert.ok(sec, sectionName);
  for (let i = 0; i * 8 < sec.size; i++) {
    if (match(obj.subarray(sec.offset + i * 8, sec.offset + i * 8 + 8), i)) return sec.offset + i * 8;
  }
  assert.fail(`no matching instruction in ${sectionName}`);
}

/** A deterministic PRNG (mulberry32) for the fuzz test. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Point a section's name `by` bytes further into the name table (".maps" + 1 = "maps"). */
export function shiftSectionName(obj: Buffer, sectionName: string, by: number): Buffer {
  const out = Buffer.from(obj);
  const sec = parseElf(out).section(sectionName);
  assert.ok(sec, sectionName);
  const at = Number(out.readBigUInt64LE(0x28)) + sec.index * SHDR_SIZE;
  out.writeUInt32LE(out.readUInt32LE(at) + by, at);
  return out;
}
