/**
 * Just enough ELF64 little-endian to list the symbol names of an executable: the section table,
 * `.symtab` and `.dynsym` with their string tables. Pure over a Buffer and machine-agnostic,
 * because the stamp check only needs names; every offset is bounds-checked, since the file is
 * whatever sits at the path QEMU reported.
 */

export class ElfFormatError extends Error {
  override readonly name = 'ElfFormatError';
}

export interface ElfSection {
  index: number;
  name: string;
  type: number;
  offset: number;
  size: number;
  link: number;
  entsize: number;
}

export type SymbolTableKind = 'symtab' | 'dynsym';

export interface ElfSymbol {
  name: string;
  table: SymbolTableKind;
  /** STB_* (0 local, 1 global, 2 weak) */
  bind: number;
  /** STT_* (0 notype, 1 object, 2 func, …) */
  type: number;
  /** section index; 0 = undefined (imported) */
  shndx: number;
  value: bigint;
  size: bigint;
}

export interface ElfImage {
  machine: number;
  type: number;
  sections: ElfSection[];
}

const SHT_SYMTAB = 2;
const SHT_DYNSYM = 11;
const SHN_XINDEX = 0xffff;
const EHDR_SIZE = 64;
const SHDR_SIZE = 64;
const SYM_SIZE = 24;

function u64(buf: Buffer, off: number, what: string): number {
  const v = buf.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ElfFormatError(`${what} out of range`);
  return Number(v);
}

function within(buf: Buffer, off: number, len: number, what: string): void {
  if (off < 0 || len < 0 || off + len > buf.length) {
    throw new ElfFormatError(`${what} (offset ${off}, ${len} bytes) lies outside the ${buf.length}-byte file`);
  }
}

function cString(buf: Buffer, start: number, end: number): string {
  const nul = buf.indexOf(0, start);
  return buf.toString('latin1', start, nul < 0 || nul > end ? end : nul);
}

/** Parse the ELF header and section table. Throws ElfFormatError for anything malformed. */
export function parseElfSections(buf: Buffer): ElfImage {
  if (buf.length < EHDR_SIZE || buf.readUInt32BE(0) !== 0x7f454c46) throw new ElfFormatError('not an ELF file');
  if (buf[4] !== 2) throw new ElfFormatError('not a 64-bit ELF file');
  if (buf[5] !== 1) throw new ElfFormatError('not a little-endian ELF file');
  const type = buf.readUInt16LE(16);
  const machine = buf.readUInt16LE(18);
  const shoff = u64(buf, 0x28, 'e_shoff');
  const shentsize = buf.readUInt16LE(0x3a);
  let shnum = buf.readUInt16LE(0x3c);
  let shstrndx = buf.readUInt16LE(0x3e);
  if (shoff === 0) return { machine, type, sections: [] };
  if (shentsize !== SHDR_SIZE) throw new ElfFormatError(`unexpected section header size ${shentsize}`);
  within(buf, shoff, SHDR_SIZE, 'section header 0');
  // Extended numbering: large counts live in section 0 (ELF gABI).
  if (shnum === 0) shnum = u64(buf, shoff + 32, 'section count');
  if (shstrndx === SHN_XINDEX) shstrndx = buf.readUInt32LE(shoff + 40);
  within(buf, shoff, shnum * SHDR_SIZE, 'section header table');

  const raw = Array.from({ length: shnum }, (_, index) => {
    const at = shoff + index * SHDR_SIZE;
    return {
      index,
      nameOff: buf.readUInt32LE(at),
      type: buf.readUInt32LE(at + 4),
      offset: u64(buf, at + 24, 'sh_offset'),
      size: u64(buf, at + 32, 'sh_size'),
      link: buf.readUInt32LE(at + 40),
      entsize: u64(buf, at + 56, 'sh_entsize'),
    };
  });
  const strtab = shstrndx < shnum ? raw[shstrndx] : undefined;
  if (strtab) within(buf, strtab.offset, strtab.size, 'section name table');
  const sections = raw.map(({ nameOff, ...s }) => ({
    ...s,
    name: strtab && nameOff < strtab.size ? cString(buf, strtab.offset + nameOff, strtab.offset + strtab.size) : '',
  }));
  return { machine, type, sections };
}

/** Every named symbol in `.symtab` and `.dynsym` (either may be absent: stripped or static). */
export function readElfSymbols(buf: Buffer): ElfSymbol[] {
  const { sections } = parseElfSections(buf);
  const out: ElfSymbol[] = [];
  for (const sec of sections) {
    if (sec.type !== SHT_SYMTAB && sec.type !== SHT_DYNSYM) continue;
    const table: SymbolTableKind = sec.type === SHT_SYMTAB ? 'symtab' : 'dynsym';
    if (sec.entsize !== SYM_SIZE) throw new ElfFormatError(`${sec.name || table}: unexpected symbol size ${sec.entsize}`);
    within(buf, sec.offset, sec.size, `${sec.name || table} contents`);
    const strs = sections[sec.link];
    if (!strs) throw new ElfFormatError(`${sec.name || table}: string table index ${sec.link} does not exist`);
    within(buf, strs.offset, strs.size, `${strs.name || 'string table'} contents`);
    for (let at = sec.offset; at + SYM_SIZE <= sec.offset + sec.size; at += SYM_SIZE) {
      const nameOff = buf.readUInt32LE(at);
      if (nameOff === 0 || nameOff >= strs.size) continue;
      const info = buf[at + 4];
      out.push({
        name: cString(buf, strs.offset + nameOff, strs.offset + strs.size),
        table,
        bind: info >> 4,
        type: info & 0xf,
        shndx: buf.readUInt16LE(at + 6),
        value: buf.readBigUInt64LE(at + 8),
        size: buf.readBigUInt64LE(at + 16),
      });
    }
  }
  return out;
}
