/**
 * Bounded reads over the input. Every offset the file supplies goes through one of these
 * before it is used, so a hostile file yields an ElfFormatError, never a RangeError or a read
 * of bytes that belong to something else.
 */
import { ElfFormatError } from './error';

/** A u64 field as a JS number; values past 2^53 cannot be an offset or size of a Buffer anyway. */
export function u64(buf: Buffer, off: number, what: string): number {
  return safeNumber(buf.readBigUInt64LE(off), what);
}

export function safeNumber(v: bigint, what: string): number {
  if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ElfFormatError(`${what} ${v} is out of range`, { fields: { what, value: v.toString() } });
  return Number(v);
}

/** [off, off+len) must lie inside `buf`; written so that no sum can overflow past the check. */
export function checkRange(buf: Buffer, off: number, len: number, what: string, subject: string): void {
  if (off < 0 || len < 0 || off > buf.length || len > buf.length - off) {
    throw new ElfFormatError(`${what} (offset ${off}, ${len} bytes) lies outside the ${buf.length}-byte ${subject}`, {
      fields: { what, offset: off, length: len, inputBytes: buf.length },
    });
  }
}

/**
 * The NUL-terminated string starting at `start` inside the table [start, end). An unterminated
 * string is an error, not a read past the table; the search never looks beyond `end`, so the
 * cost of one call is at most the table's length.
 */
export function cString(buf: Buffer, start: number, end: number, what: string): string {
  if (start < 0 || end > buf.length) {
    throw new ElfFormatError(`${what} (offset ${start}, table end ${end}) lies outside the ${buf.length}-byte input`, {
      fields: { what, offset: start, end, inputBytes: buf.length },
    });
  }
  const nul = start < end ? buf.subarray(start, end).indexOf(0) : -1;
  if (nul < 0) throw new ElfFormatError(`${what} is not NUL-terminated inside its string table`, { fields: { what, offset: start, end } });
  return buf.toString('latin1', start, start + nul);
}

/**
 * Caps the bytes one table's names may cost in total. Without it, many entries pointing into one
 * long string make the work quadratic in the input (each name is scanned and copied again).
 */
export class NameBudget {
  #left: number;
  constructor(
    readonly max: number,
    private readonly table: string,
  ) {
    this.#left = max;
  }

  read(buf: Buffer, start: number, end: number, what: string): string {
    const name = cString(buf, start, end, what);
    this.#left -= name.length + 1; // the NUL was scanned too
    if (this.#left < 0) {
      throw new ElfFormatError(`names in the ${this.table} add up to more than ${this.max} bytes`, { fields: { table: this.table, maxNameBytes: this.max } });
    }
    return name;
  }
}
