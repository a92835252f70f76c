/**
 * EM_BPF relocatable objects over the generic ELF reader (src/elf): what makes an object a BPF
 * object (machine, type, a section table with names, exactly one `.symtab`) and the numbers the
 * spec parser needs. The bytes come from an emulator we trust only as far as its file
 * permissions go; the reader bounds-checks them, and every problem it finds becomes BPF_BAD_ELF
 * here, so callers of the spec see one error code for a malformed object.
 */
import { VirtEbpfError } from '../errors';
import * as elf from '../elf';

export { EM_BPF, ET_REL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_NOBITS, SHF_ALLOC, SHF_EXECINSTR, STT_OBJECT, STT_FUNC } from '../elf';
export type { ElfSection } from '../elf';

/** Refuse to parse anything bigger: real BPF objects are tens of KiB. */
export const MAX_OBJECT_BYTES = 16 * 1024 * 1024;
/** Real objects have a dozen sections; this bounds the section loop for a hostile header. */
export const MAX_SECTIONS = 4096;

const READ_OPTIONS: elf.ElfReadOptions = { subject: 'object', maxBytes: MAX_OBJECT_BYTES, maxSections: MAX_SECTIONS, maxNameBytes: MAX_OBJECT_BYTES };

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
  sections: elf.ElfSection[];
  symbols: ElfSymbol[];
  /** Contents of a section (empty for SHT_NOBITS); a view, not a copy. */
  data(section: elf.ElfSection): Buffer;
  section(name: string): elf.ElfSection | undefined;
}

export const BAD_OBJECT_REMEDY =
  'the emulator returned an eBPF object this tool cannot use; check that the QEMU package is intact (reinstall it) and report it if it persists';

export function badElf(what: string, fields: Record<string, unknown> = {}, cause?: unknown): VirtEbpfError {
  return new VirtEbpfError('BPF_BAD_ELF', `malformed eBPF object: ${what}`, { remedy: BAD_OBJECT_REMEDY, fields, cause });
}

/** Run a reader step; a malformed-ELF verdict becomes BPF_BAD_ELF with the reader's error as cause. */
function asBpf<T>(read: () => T): T {
  try {
    return read();
  } catch (e) {
    if (e instanceof elf.ElfFormatError) throw badElf(e.message, { ...e.fields }, e);
    throw e;
  }
}

/** A NUL-terminated string inside [start, end); unterminated strings are an error, not a read past the table. */
export function cString(buf: Buffer, start: number, end: number, what: string): string {
  return asBpf(() => elf.cString(buf, start, end, what));
}

function toNumber(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw badElf(`${what} ${v} is out of range`);
  return Number(v);
}

/** Parse header, section table and `.symtab`. Throws BPF_BAD_ELF naming the first problem. */
export function parseElf(buf: Buffer): ElfObject {
  const header = asBpf(() => elf.readElfHeader(buf, READ_OPTIONS));
  if (header.type !== elf.ET_REL) throw badElf(`ELF type ${header.type}, expected ${elf.ET_REL} (relocatable object)`);
  if (header.machine !== elf.EM_BPF) throw badElf(`ELF machine ${header.machine}, expected EM_BPF (${elf.EM_BPF})`);
  if (header.shoff === 0n) throw badElf('no section table');
  const file = asBpf(() => elf.readElfSections(buf, header, READ_OPTIONS));
  // The generic reader allows a file without section names; a BPF object is found by them.
  if (file.shstrndx === 0) throw badElf(`section name table index 0 does not exist (${file.sections.length} sections)`);
  const sections = [...file.sections];

  const symtabs = sections.filter((s) => s.type === elf.SHT_SYMTAB);
  if (symtabs.length !== 1) throw badElf(`${symtabs.length} symbol tables, expected exactly 1`);
  const table = asBpf(() => elf.openSymbolTable(file, symtabs[0]));
  const symbols: ElfSymbol[] = [];
  for (let i = 0; i < table.count; i++) {
    const { index, name, bind, type, shndx, value, size } = asBpf(() => table.symbol(i));
    symbols.push({ index, name, bind, type, shndx, value: toNumber(value, `symbol ${index} value`), size: toNumber(size, `symbol ${index} size`) });
  }
  return { sections, symbols, data: (s) => elf.sectionData(file, s), section: (name) => elf.findSection(file, name) };
}

/** The section a symbol is defined in, or undefined for undefined/absolute/common symbols. */
export function symbolSection(obj: ElfObject, sym: ElfSymbol): elf.ElfSection | undefined {
  return elf.symbolSection(obj, sym);
}
