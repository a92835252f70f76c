/**
 * The ELF64 little-endian file header. Only the identification is judged here (magic, class,
 * data encoding, version): which types and machines are acceptable is the caller's business,
 * so a BPF loader and an executable scanner share this and differ only in what they check next.
 */
import { EHDR_SIZE } from './constants';
import { ElfFormatError } from './error';

export interface ElfReadOptions {
  /** What the input is called in messages ("lies outside the 200-byte file"). Default "file". */
  subject?: string;
  /** Refuse larger input before reading it. Default 1 GiB. */
  maxBytes?: number;
  /** Refuse section tables with more entries. Default 65536. */
  maxSections?: number;
  /** Refuse a symbol table with more entries. Default 4 Mi. */
  maxSymbols?: number;
  /** Bytes the names of one table (section names, or one symbol table) may add up to. Default 64 MiB. */
  maxNameBytes?: number;
}

/** The options with every default filled in; what a read actually used. */
export type ResolvedElfOptions = Readonly<Required<ElfReadOptions>>;

export const DEFAULT_OPTIONS: ResolvedElfOptions = {
  subject: 'file',
  maxBytes: 1024 * 1024 * 1024,
  maxSections: 65536,
  maxSymbols: 4 * 1024 * 1024,
  maxNameBytes: 64 * 1024 * 1024,
};

export function resolveElfOptions(o: ElfReadOptions = {}): ResolvedElfOptions {
  const d = DEFAULT_OPTIONS;
  return {
    subject: o.subject ?? d.subject,
    maxBytes: o.maxBytes ?? d.maxBytes,
    maxSections: o.maxSections ?? d.maxSections,
    maxSymbols: o.maxSymbols ?? d.maxSymbols,
    maxNameBytes: o.maxNameBytes ?? d.maxNameBytes,
  };
}

export interface ElfHeader {
  /** ET_*: relocatable, executable, shared object… */
  type: number;
  /** EM_* */
  machine: number;
  /** e_flags, machine-specific */
  flags: number;
  entry: bigint;
  /** file offset of the section table as stored (0: there is none); readElfSections judges it */
  shoff: bigint;
  shentsize: number;
  /** e_shnum as stored: 0 with a section table means the count lives in section header 0 */
  shnum: number;
  /** e_shstrndx as stored: SHN_XINDEX means it lives in section header 0 */
  shstrndx: number;
}

const ELF_MAGIC = 0x7f454c46;

/** Check the identification and read the header fields as stored. Throws ElfFormatError naming the first problem. */
export function readElfHeader(buf: Buffer, options: ElfReadOptions = {}): ElfHeader {
  const { subject, maxBytes } = resolveElfOptions(options);
  if (buf.length === 0) throw new ElfFormatError(`the ${subject} is empty`);
  if (buf.length > maxBytes) {
    throw new ElfFormatError(`the ${subject} is ${buf.length} bytes, over the ${maxBytes}-byte limit`, { fields: { inputBytes: buf.length, maxBytes } });
  }
  if (buf.length < 4 || buf.readUInt32BE(0) !== ELF_MAGIC) {
    const magic = buf.subarray(0, 4).toString('hex');
    throw new ElfFormatError('not an ELF file', { evidence: `bad magic ${magic || '(none)'}, expected 7f454c46 ("\\x7fELF")`, fields: { magic } });
  }
  if (buf.length < EHDR_SIZE) throw new ElfFormatError(`truncated ELF header: ${buf.length} bytes, need ${EHDR_SIZE}`, { fields: { inputBytes: buf.length } });
  if (buf[4] !== 2) {
    throw new ElfFormatError('not a 64-bit ELF file', { evidence: `ELF class ${buf[4]}${buf[4] === 1 ? ' (32-bit)' : ''}, expected 2`, fields: { class: buf[4] } });
  }
  if (buf[5] !== 1) {
    throw new ElfFormatError('not a little-endian ELF file', {
      evidence: `ELF data encoding ${buf[5]}${buf[5] === 2 ? ' (big-endian)' : ''}, expected 1 (little-endian)`,
      fields: { encoding: buf[5] },
    });
  }
  if (buf[6] !== 1) throw new ElfFormatError(`ELF version ${buf[6]}, expected 1`, { fields: { version: buf[6] } });
  return {
    type: buf.readUInt16LE(16),
    machine: buf.readUInt16LE(18),
    entry: buf.readBigUInt64LE(0x18),
    flags: buf.readUInt32LE(0x30),
    shoff: buf.readBigUInt64LE(0x28),
    shentsize: buf.readUInt16LE(0x3a),
    shnum: buf.readUInt16LE(0x3c),
    shstrndx: buf.readUInt16LE(0x3e),
  };
}
