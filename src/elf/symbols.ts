/**
 * Symbol tables of both kinds: `.symtab` (SHT_SYMTAB, everything the linker knew; gone after
 * strip) and `.dynsym` (SHT_DYNSYM, what the dynamic linker sees). Values and sizes stay bigint:
 * they are addresses, and an absolute symbol may legitimately sit above 2^53.
 */
import { NameBudget } from './bytes';
import { SHN_LORESERVE, SHN_UNDEF, SHT_DYNSYM, SHT_STRTAB, SHT_SYMTAB, SYM_SIZE } from './constants';
import { ElfFormatError } from './error';
import type { ElfFile, ElfSection } from './sections';

export type SymbolTableKind = 'symtab' | 'dynsym';

export interface ElfSymbol {
  table: SymbolTableKind;
  /** index inside its table; 0 is the null symbol */
  index: number;
  name: string;
  /** STB_*: 0 local, 1 global, 2 weak */
  bind: number;
  /** STT_*: 0 notype, 1 object, 2 func, 3 section, 4 file */
  type: number;
  /** st_other: the visibility in its low 2 bits */
  other: number;
  /** index of the defining section; 0 (undefined, imported) or >= 0xff00 (special) name no section */
  shndx: number;
  value: bigint;
  size: bigint;
}

export interface SymbolTable {
  kind: SymbolTableKind;
  section: ElfSection;
  /** the string table its names live in */
  strings: ElfSection;
  count: number;
  /** Entry `index` (0 ≤ index < count), names decoded against one budget per opened table. */
  symbol(index: number): ElfSymbol;
}

export function isSymbolTable(section: ElfSection): boolean {
  return section.type === SHT_SYMTAB || section.type === SHT_DYNSYM;
}

/** Check a symbol table's shape and its string table; entries are read on demand. */
export function openSymbolTable(elf: ElfFile, section: ElfSection): SymbolTable {
  if (!isSymbolTable(section)) throw new RangeError(`section ${section.index} (${section.name || 'unnamed'}) is not a symbol table`);
  const kind: SymbolTableKind = section.type === SHT_SYMTAB ? 'symtab' : 'dynsym';
  const table = kind === 'symtab' ? 'symbol table' : 'dynamic symbol table';
  const entry = kind === 'symtab' ? 'symbol' : 'dynamic symbol';
  const at = { section: section.index };
  if (section.entsize !== SYM_SIZE) throw new ElfFormatError(`${table} entry size ${section.entsize}, expected ${SYM_SIZE}`, { fields: { ...at, entsize: section.entsize } });
  if (section.size % SYM_SIZE !== 0) throw new ElfFormatError(`${table} size ${section.size} is not a multiple of ${SYM_SIZE}`, { fields: { ...at, size: section.size } });
  const strings = elf.sections[section.link];
  if (!strings || strings.index === 0 || strings.type !== SHT_STRTAB) {
    throw new ElfFormatError(`${table} links to section ${section.link}, which is not a string table`, { fields: { ...at, link: section.link } });
  }
  const count = section.size / SYM_SIZE;
  const { maxSymbols, maxNameBytes } = elf.options;
  if (count > maxSymbols) throw new ElfFormatError(`${table} has ${count} entries, over the limit of ${maxSymbols}`, { fields: { ...at, count, maxSymbols } });
  const buf = elf.bytes;
  const budget = new NameBudget(maxNameBytes, table);

  const symbol = (index: number): ElfSymbol => {
    if (!Number.isInteger(index) || index < 0 || index >= count) throw new RangeError(`${entry} ${index} is not in a table of ${count}`);
    const p = section.offset + index * SYM_SIZE;
    const nameOff = buf.readUInt32LE(p);
    // An empty string table can still name the empty string: offset 0.
    if (nameOff >= Math.max(strings.size, 1)) throw new ElfFormatError(`${entry} ${index} name offset ${nameOff} is outside the string table`, { fields: { ...at, symbol: index, nameOffset: nameOff } });
    const info = buf[p + 4];
    const shndx = buf.readUInt16LE(p + 6);
    if (shndx !== SHN_UNDEF && shndx < SHN_LORESERVE && shndx >= elf.sections.length) {
      throw new ElfFormatError(`${entry} ${index} refers to section ${shndx}, which does not exist`, { fields: { ...at, symbol: index, shndx } });
    }
    return {
      table: kind,
      index,
      name: strings.size === 0 ? '' : budget.read(buf, strings.offset + nameOff, strings.offset + strings.size, `name of ${entry} ${index}`),
      bind: info >> 4,
      type: info & 0xf,
      other: buf[p + 5],
      shndx,
      value: buf.readBigUInt64LE(p + 8),
      size: buf.readBigUInt64LE(p + 16),
    };
  };
  return { kind, section, strings, count, symbol };
}

/** Every entry of one symbol table, or of every symbol table in the file (section order) when none is named. */
export function readSymbols(elf: ElfFile, section?: ElfSection): ElfSymbol[] {
  const tables = section ? [section] : elf.sections.filter(isSymbolTable);
  return tables.flatMap((s) => {
    const t = openSymbolTable(elf, s);
    return Array.from({ length: t.count }, (_, i) => t.symbol(i));
  });
}

/** The section a symbol is defined in; undefined for undefined, absolute and common symbols. */
export function symbolSection(elf: Pick<ElfFile, 'sections'>, sym: Pick<ElfSymbol, 'shndx'>): ElfSection | undefined {
  if (sym.shndx === SHN_UNDEF || sym.shndx >= SHN_LORESERVE) return undefined;
  return elf.sections[sym.shndx];
}
