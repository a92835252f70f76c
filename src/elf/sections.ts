/**
 * The section table with its names. Every section that has bytes in the file (all but the null
 * section and SHT_NOBITS) is checked to lie inside the input here, once, so `sectionData` and
 * the symbol reader can slice without checking again.
 */
import { checkRange, NameBudget, safeNumber, u64 } from './bytes';
import { SHDR_SIZE, SHN_XINDEX, SHT_NOBITS, SHT_STRTAB } from './constants';
import { ElfFormatError } from './error';
import { readElfHeader, resolveElfOptions, type ElfHeader, type ElfReadOptions, type ResolvedElfOptions } from './header';

export interface ElfSection {
  index: number;
  /** '' for section 0 and when the file has no section name table */
  name: string;
  /** SHT_* */
  type: number;
  /** SHF_* */
  flags: number;
  offset: number;
  size: number;
  link: number;
  info: number;
  entsize: number;
}

export interface ElfFile {
  /** the input, not a copy: sections and names are views of it */
  readonly bytes: Buffer;
  readonly header: ElfHeader;
  /** index = section index; empty when the file has no section table */
  readonly sections: readonly ElfSection[];
  /** the section name table after extended numbering; 0 when the file names no sections */
  readonly shstrndx: number;
  /** what the read used: symbol tables opened later keep to the same limits */
  readonly options: ResolvedElfOptions;
}

/** Header, then the section table. Throws ElfFormatError naming the first problem. */
export function readElf(buf: Buffer, options: ElfReadOptions = {}): ElfFile {
  return readElfSections(buf, readElfHeader(buf, options), options);
}

/**
 * The section table of a header already read (and judged by the caller). A file without a
 * section table (e_shoff 0) has no sections; that is legal for executables.
 */
export function readElfSections(buf: Buffer, header: ElfHeader, options: ElfReadOptions = {}): ElfFile {
  const resolved = resolveElfOptions(options);
  const { subject, maxSections } = resolved;
  const shoff = safeNumber(header.shoff, 'section table offset');
  if (shoff === 0) return { bytes: buf, header, sections: [], shstrndx: 0, options: resolved };
  if (header.shentsize !== SHDR_SIZE) throw new ElfFormatError(`section header size ${header.shentsize}, expected ${SHDR_SIZE}`);
  checkRange(buf, shoff, SHDR_SIZE, 'truncated section table: section header 0', subject);
  // Extended numbering (gABI): counts that do not fit 16 bits live in section header 0.
  const shnum = header.shnum === 0 ? u64(buf, shoff + 32, 'section count') : header.shnum;
  const shstrndx = header.shstrndx === SHN_XINDEX ? buf.readUInt32LE(shoff + 40) : header.shstrndx;
  if (shnum > maxSections) throw new ElfFormatError(`${shnum} sections, over the limit of ${maxSections}`, { fields: { sections: shnum, maxSections } });
  checkRange(buf, shoff, shnum * SHDR_SIZE, `truncated section table: ${shnum} headers`, subject);

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
    if (index > 0 && s.type !== SHT_NOBITS) checkRange(buf, s.offset, s.size, `section ${index}`, subject);
    raw.push(s);
  }
  if (shstrndx === 0) return { bytes: buf, header, sections: raw.map(({ nameOff: _, ...s }) => ({ ...s, name: '' })), shstrndx, options: resolved };
  if (shstrndx >= shnum) throw new ElfFormatError(`section name table index ${shstrndx} does not exist (${shnum} sections)`, { fields: { shstrndx, sections: shnum } });
  const names = raw[shstrndx];
  if (names.type !== SHT_STRTAB) throw new ElfFormatError(`section name table (section ${shstrndx}) has type ${names.type}, expected SHT_STRTAB`, { fields: { shstrndx, type: names.type } });
  const budget = new NameBudget(resolved.maxNameBytes, 'section name table');
  const sections = raw.map(({ nameOff, ...s }) => {
    if (s.index === 0) return { ...s, name: '' };
    if (nameOff >= names.size) throw new ElfFormatError(`section ${s.index} name offset ${nameOff} is outside the section name table`, { fields: { section: s.index, nameOffset: nameOff } });
    return { ...s, name: budget.read(buf, names.offset + nameOff, names.offset + names.size, `name of section ${s.index}`) };
  });
  return { bytes: buf, header, sections, shstrndx, options: resolved };
}

/**
 * A section's bytes: a view, not a copy. Empty for SHT_NOBITS (it occupies no file space) and for
 * the null section, whose fields hold extended counts rather than a place in the file.
 */
export function sectionData(elf: ElfFile, section: ElfSection): Buffer {
  if (section.index === 0 || section.type === SHT_NOBITS) return Buffer.alloc(0);
  return elf.bytes.subarray(section.offset, section.offset + section.size);
}

/** The first section of that name. */
export function findSection(elf: ElfFile, name: string): ElfSection | undefined {
  return elf.sections.find((s) => s.name === name);
}
