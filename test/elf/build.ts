/**
 * Crafts small ELF64 little-endian files for the reader's edge cases (extended numbering, no
 * name table, hostile counts) that no compiler emits on request. The layout is the plain one:
 * header, section contents, `.shstrtab`, then the section table; every field can be overridden.
 */

export interface SectionSpec {
  name: string;
  type: number;
  data?: Buffer;
  flags?: number;
  link?: number;
  info?: number;
  entsize?: number;
  /** sh_size for SHT_NOBITS, which has no data */
  size?: number;
}

export interface ElfSpec {
  type?: number;
  machine?: number;
  sections?: SectionSpec[];
  /** put e_shnum and e_shstrndx into section header 0, as the gABI allows */
  extended?: boolean;
  /** leave e_shstrndx 0 (no section name table) */
  noNames?: boolean;
}

export interface BuiltElf {
  bytes: Buffer;
  shoff: number;
  /** section index by name; 0 is the null section, the last is `.shstrtab` */
  index: Record<string, number>;
}

const align8 = (n: number): number => (n + 7) & ~7;

/** Concatenated NUL-terminated strings after the leading NUL, with each one's offset. */
export function strtab(names: string[]): { data: Buffer; offset: Record<string, number> } {
  const offset: Record<string, number> = {};
  const parts = [Buffer.alloc(1)];
  let at = 1;
  for (const n of names) {
    offset[n] = at;
    parts.push(Buffer.from(`${n}\0`, 'latin1'));
    at += n.length + 1;
  }
  return { data: Buffer.concat(parts), offset };
}

export interface SymbolSpec {
  nameOff: number;
  bind?: number;
  type?: number;
  shndx?: number;
  value?: bigint;
  size?: bigint;
}

/** Symbol table contents; entry 0 (the null symbol) is added. */
export function symbols(entries: SymbolSpec[]): Buffer {
  const out = Buffer.alloc(24 * (entries.length + 1));
  entries.forEach((s, i) => {
    const at = 24 * (i + 1);
    out.writeUInt32LE(s.nameOff, at);
    out[at + 4] = ((s.bind ?? 1) << 4) | (s.type ?? 2);
    out.writeUInt16LE(s.shndx ?? 1, at + 6);
    out.writeBigUInt64LE(s.value ?? 0n, at + 8);
    out.writeBigUInt64LE(s.size ?? 0n, at + 16);
  });
  return out;
}

export function buildElf(spec: ElfSpec = {}): BuiltElf {
  const user = spec.sections ?? [];
  const names = strtab([...user.map((s) => s.name), '.shstrtab']);
  const all: SectionSpec[] = [...user, { name: '.shstrtab', type: 3, data: names.data }];
  const index: Record<string, number> = {};
  const placed: { s: SectionSpec; offset: number; size: number }[] = [];
  let at = 64;
  all.forEach((s, i) => {
    index[s.name] = i + 1;
    const size = s.data?.length ?? s.size ?? 0;
    placed.push({ s, offset: s.data ? at : 0, size });
    if (s.data) at = align8(at + s.data.length);
  });
  const shoff = at;
  const shnum = all.length + 1;
  const bytes = Buffer.alloc(shoff + shnum * 64);
  bytes.writeUInt32BE(0x7f454c46, 0);
  bytes[4] = 2;
  bytes[5] = 1;
  bytes[6] = 1;
  bytes.writeUInt16LE(spec.type ?? 1, 16);
  bytes.writeUInt16LE(spec.machine ?? 62, 18);
  bytes.writeUInt32LE(1, 20);
  bytes.writeBigUInt64LE(BigInt(shoff), 0x28);
  bytes.writeUInt16LE(64, 0x34);
  bytes.writeUInt16LE(64, 0x3a);
  const shstrndx = spec.noNames ? 0 : shnum - 1;
  if (spec.extended) {
    bytes.writeUInt16LE(0, 0x3c);
    bytes.writeUInt16LE(0xffff, 0x3e);
    bytes.writeBigUInt64LE(BigInt(shnum), shoff + 32);
    bytes.writeUInt32LE(shstrndx, shoff + 40);
  } else {
    bytes.writeUInt16LE(shnum, 0x3c);
    bytes.writeUInt16LE(shstrndx, 0x3e);
  }
  placed.forEach(({ s, offset, size }, i) => {
    if (s.data) s.data.copy(bytes, offset);
    const h = shoff + (i + 1) * 64;
    bytes.writeUInt32LE(names.offset[s.name], h);
    bytes.writeUInt32LE(s.type, h + 4);
    bytes.writeBigUInt64LE(BigInt(s.flags ?? 0), h + 8);
    bytes.writeBigUInt64LE(BigInt(offset), h + 24);
    bytes.writeBigUInt64LE(BigInt(size), h + 32);
    bytes.writeUInt32LE(s.link ?? 0, h + 40);
    bytes.writeUInt32LE(s.info ?? 0, h + 44);
    bytes.writeBigUInt64LE(BigInt(s.entsize ?? 0), h + 56);
  });
  return { bytes, shoff, index };
}
