/**
 * ELF64 little-endian relocatable objects for EM_BPF: header, section table and the symbol
 * table, nothing more. Pure over a Buffer. The bytes come from an emulator we trust only as far
 * as its file permissions go, so every offset, size and count is checked against the buffer
 * before use and work is bounded by the buffer's length (no loop runs longer than the input).
 */
import { VirtEbpfError } from '../errors';

/** Refuse to parse anything bigger: real BPF objects are tens of KiB. */
export const MAX_OBJECT_BYTES = 16 * 1024 * 1024;
/** Real objects have a dozen sections; this bounds the section loop for a hostile header. */
export const MAX_SECTIONS = 4096;

export const EM_BPF = 247;
export const ET_REL = 1;
export const SHT_PROGBITS = 1;
export const SHT_SYMTAB = 2;
export const SHT_STRTAB = 3;
export const SHT_NOBITS = 8;
export const SHF_ALLOC = 0x2;
export const SHF_EXECINSTR = 0x4;
export const STT_OBJECT = 1;
export const STT_FUNC = 2;

const EHDR_SIZE = 64;
const SHDR_SIZE = 64;
const SYM_SIZE = 24;
const SHN_UNDEF = 0;
const SHN_LORESERVE = 0xff00;
const SHN_XINDEX = 0xffff;

export interface ElfSection {
  index: number;
  name: string;
  type: number;
  flags: number;
  offset: number;
  size: number;
  link: number;
  info: number;
  entsize: number;
}

export interface ElfSymbol {
  index: number;
  name: string;
  /** STB_*: 0 local, 1 global, 2 weak */
  bind: number;
  /** STT_*: 0 notype, 1 object, 2 func, 3 section, 4 file */
  type: number;
  /** index of the defining section; 0 (undefined) or >= 0xff00 (special) have no section */
  shndx: number;
  value: number;
  size: number;
}

export interface ElfObject {
  sections: ElfSection[];
  symbols: ElfSymbol[];
  /** Contents of a section (empty for SHT_NOBITS); a view, not a copy. */
  data(section: ElfSection): Buffer;
  section(name: string): ElfSection | undefined;
}

export const BAD_OBJECT_REMEDY =
  'the emulator returned an eBPF object this tool cannot use; check that the QEMU package is intact (reinstall it) and report it if it persists';

export function badElf(what: string, fields: Record<string, unknown> = {}): VirtEbpfError {
  return new VirtEbpfError('BPF_BAD_ELF', `malformed eBPF object: ${what}`, { remedy: BAD_OBJECT_REMEDY, fields });
}

function u64(buf: Buffer, off: number, what: string): number {
  const v = buf.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw badElf(`${what} ${v} is out of range`);
  return Number(v);
}

function checkRange(buf: Buffer, off: number, len: number, what: string): void {
  if (off > buf.length || len > buf.length - off) {
    throw badElf(`${what} (offset ${off}, ${len} bytes) lies outside the ${buf.length}-byte object`);
  }
}

/** A NUL-terminated string inside [start, end); unterminated strings are an error, not a read past the table. */
export function cString(buf: Buffer, start: number, end: number, what: string): string {
  const nul = buf.indexOf(0, start);
  if (nul < 0 || nul >= end) throw badElf(`${what} is not NUL-terminated inside its string table`);
  return buf.toString('latin1', start, nul);
}

function describeHeader(buf: Buffer): void {
  if (buf.length === 0) throw badElf('the object is empty');
  if (buf.length > MAX_OBJECT_BYTES) throw badElf(`the object is ${buf.length} bytes, over the ${MAX_OBJECT_BYTES}-byte limit`);
  if (buf.length < 4 || buf.readUInt32BE(0) !== 0x7f454c46) {
    throw badElf(`bad magic ${buf.subarray(0, 4).toString('hex') || '(none)'}, expected 7f454c46 ("\\x7fELF"): not an ELF file`);
  }
  if (buf.length < EHDR_SIZE) throw badElf(`truncated ELF header: ${buf.length} bytes, need ${EHDR_SIZE}`);
  if (buf[4] !== 2) throw badElf(`ELF class ${buf[4]}${buf[4] === 1 ? ' (32-bit)' : ''}, expected 2 (64-bit)`);
  if (buf[5] !== 1) throw badElf(`ELF data encoding ${buf[5]}${buf[5] === 2 ? ' (big-endian)' : ''}, expected 1 (little-endian)`);
  if (buf[6] !== 1) throw badElf(`ELF version ${buf[6]}, expected 1`);
  const type = buf.readUInt16LE(16);
  if (type !== ET_REL) throw badElf(`ELF type ${type}, expected ${ET_REL} (relocatable object)`);
  const machine = buf.readUInt16LE(18);
  if (machine !== EM_BPF) throw badElf(`ELF machine ${machine}, expected EM_BPF (${EM_BPF})`);
}

/** Parse header, section table and `.symtab`. Throws BPF_BAD_ELF naming the first problem. */
export function parseElf(buf: Buffer): ElfObject {
  describeHeader(buf);
  const shoff = u64(buf, 0x28, 'section table offset');
  const shentsize = buf.readUInt16LE(0x3a);
  let shnum = buf.readUInt16LE(0x3c);
  let shstrndx = buf.readUInt16LE(0x3e);
  if (shoff === 0) throw badElf('no section table');
  if (shentsize !== SHDR_SIZE) throw badElf(`section header size ${shentsize}, expected ${SHDR_SIZE}`);
  checkRange(buf, shoff, SHDR_SIZE, 'truncated section table: section header 0');
  // Extended numbering (gABI): counts that do not fit 16 bits live in section header 0.
  if (shnum === 0) shnum = u64(buf, shoff + 32, 'section count');
  if (shstrndx === SHN_XINDEX) shstrndx = buf.readUInt32LE(shoff + 40);
  if (shnum > MAX_SECTIONS) throw badElf(`${shnum} sections, over the limit of ${MAX_SECTIONS}`);
  checkRange(buf, shoff, shnum * SHDR_SIZE, `truncated section table: ${shnum} headers`);

  const raw = [];
  for (let index = 0; index < shnum; index++) {
    const at = shoff + index * SHDR_SIZE;
    const s = {
      index,
      nameOff: buf.readUInt32LE(at),
      type: buf.readUInt32LE(at + 4),
      flags: u64(buf, at + 8, `section ${index} flags`),
      offset: u64(buf, at + 24, `section ${index} offset`),
      size: u64(buf, at + 32, `section ${index} size`),
      link: buf.readUInt32LE(at + 40),
      info: buf.readUInt32LE(at + 44),
      entsize: u64(buf, at + 56, `section ${index} entry size`),
    };
    if (index > 0 && s.type !== SHT_NOBITS) checkRange(buf, s.offset, s.size, `section ${index}`);
    raw.push(s);
  }
  if (shstrndx === 0 || shstrndx >= shnum) throw badElf(`section name table index ${shstrndx} does not exist (${shnum} sections)`);
  const names = raw[shstrndx];
  if (names.type !== SHT_STRTAB) throw badElf(`section name table (section ${shstrndx}) has type ${names.type}, expected SHT_STRTAB`);
  const sections: ElfSection[] = raw.map(({ nameOff, ...s }) => {
    if (s.index === 0) return { ...s, name: '' };
    if (nameOff >= names.size) throw badElf(`section ${s.index} name offset ${nameOff} is outside the section name table`);
    return { ...s, name: cString(buf, names.offset + nameOff, names.offset + names.size, `name of section ${s.index}`) };
  });

  const data = (s: ElfSection): Buffer => (s.type === SHT_NOBITS ? Buffer.alloc(0) : buf.subarray(s.offset, s.offset + s.size));
  const symtabs = sections.filter((s) => s.type === SHT_SYMTAB);
  if (symtabs.length !== 1) throw badElf(`${symtabs.length} symbol tables, expected exactly 1`);
  const symbols = parseSymbols(buf, sections, symtabs[0]);
  return { sections, symbols, data, section: (name) => sections.find((s) => s.name === name) };
}

function parseSymbols(buf: Buffer, sections: ElfSection[], symtab: ElfSection): ElfSymbol[] {
  if (symtab.entsize !== SYM_SIZE) throw badElf(`symbol table entry size ${symtab.entsize}, expected ${SYM_SIZE}`);
  if (symtab.size % SYM_SIZE !== 0) throw badElf(`symbol table size ${symtab.size} is not a multiple of ${SYM_SIZE}`);
  const strs = sections[symtab.link];
  if (!strs || strs.index === 0 || strs.type !== SHT_STRTAB) throw badElf(`symbol table links to section ${symtab.link}, which is not a string table`);
  const out: ElfSymbol[] = [];
  for (let index = 0, at = symtab.offset; at < symtab.offset + symtab.size; index++, at += SYM_SIZE) {
    const nameOff = buf.readUInt32LE(at);
    if (nameOff >= Math.max(strs.size, 1)) throw badElf(`symbol ${index} name offset ${nameOff} is outside the string table`);
    const info = buf[at + 4];
    const shndx = buf.readUInt16LE(at + 6);
    if (shndx !== SHN_UNDEF && shndx < SHN_LORESERVE && shndx >= sections.length) {
      throw badElf(`symbol ${index} refers to section ${shndx}, which does not exist`);
    }
    out.push({
      index,
      name: strs.size === 0 ? '' : cString(buf, strs.offset + nameOff, strs.offset + strs.size, `name of symbol ${index}`),
      bind: info >> 4,
      type: info & 0xf,
      shndx,
      value: u64(buf, at + 8, `symbol ${index} value`),
      size: u64(buf, at + 16, `symbol ${index} size`),
    });
  }
  return out;
}

/** The section a symbol is defined in, or undefined for undefined/absolute/common symbols. */
export function symbolSection(elf: ElfObject, sym: ElfSymbol): ElfSection | undefined {
  if (sym.shndx === SHN_UNDEF || sym.shndx >= SHN_LORESERVE) return undefined;
  return elf.sections[sym.shndx];
}
