/**
 * Build stamps of the 2021 helper protocol. The QEMU build writes `qemuHelperStamp_<sha1>`:
 * the helper exports a symbol of that name and the emulator binary carries the same string, so
 * a helper from another build (whose fds would not fit this QEMU's eBPF layout) is refused
 * before it runs. The 2023 repost spells it `qemuEbpfRssHelperStamp_<sha1>`; both are accepted.
 *
 * Finding stamps is pure (over Buffers); reading files happens in the two `read…` edges.
 */
import { createReadStream, readFileSync, statSync } from 'node:fs';
import { VirtEbpfError } from '../errors';
import { ElfFormatError, readElf, readSymbols, SHN_UNDEF } from '../elf';

export const STAMP_PREFIXES = ['qemuHelperStamp_', 'qemuEbpfRssHelperStamp_'] as const;
const HEX_LEN = 40;
const STAMP_RE = new RegExp(`^(?:${STAMP_PREFIXES.join('|')})[0-9a-fA-F]{${HEX_LEN}}$`);
/** longest stamp plus the byte that must end it */
const MAX_STAMP_WINDOW = Math.max(...STAMP_PREFIXES.map((p) => p.length)) + HEX_LEN + 1;
/** a helper is a small program; anything larger is not worth reading into memory */
const MAX_HELPER_BYTES = 256 * 1024 * 1024;

export function isStamp(name: string): boolean {
  return STAMP_RE.test(name);
}

/** For messages: the prefix and the first 12 hex digits are enough to tell builds apart. */
export function shortStamp(stamp: string): string {
  return isStamp(stamp) ? `${stamp.slice(0, stamp.length - HEX_LEN + 12)}…` : stamp;
}

/**
 * Distinct stamp symbols a helper ELF defines (`.symtab` and `.dynsym`; any machine, since only
 * names matter). Throws ElfFormatError.
 */
export function helperStampsFromElf(elf: Buffer): string[] {
  const symbols = readSymbols(readElf(elf, { maxBytes: MAX_HELPER_BYTES }));
  return [...new Set(symbols.filter((s) => s.shndx !== SHN_UNDEF && isStamp(s.name)).map((s) => s.name))];
}

function isHex(byte: number): boolean {
  return (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x46) || (byte >= 0x61 && byte <= 0x66);
}

export interface StampHit {
  stamp: string;
  offset: number;
}

/**
 * Stamps in `bytes`: a prefix, exactly 40 hex digits, then a non-hex byte. A hit whose end is not
 * inside `bytes` is reported only when `final` (the caller will rescan it with the next chunk).
 */
export function findStampStrings(bytes: Buffer, final = true, base = 0): StampHit[] {
  const hits: StampHit[] = [];
  for (const prefix of STAMP_PREFIXES) {
    const needle = Buffer.from(prefix, 'latin1');
    for (let at = bytes.indexOf(needle); at >= 0; at = bytes.indexOf(needle, at + 1)) {
      const hexStart = at + needle.length;
      const end = hexStart + HEX_LEN;
      if (end > bytes.length || (end === bytes.length && !final)) continue;
      let ok = true;
      for (let i = hexStart; i < end && ok; i++) ok = isHex(bytes[i]);
      if (ok && end < bytes.length && isHex(bytes[end])) ok = false;
      if (ok) hits.push({ stamp: bytes.toString('latin1', at, end), offset: base + at });
    }
  }
  return hits.sort((a, b) => a.offset - b.offset);
}

/**
 * Incremental scanner for large files: feed chunks in order, then `end()`. Keeps a tail of the
 * previous chunk so a stamp split across two chunks is still found, exactly once.
 */
export class StampScanner {
  #carry: Buffer = Buffer.alloc(0);
  #carryBase = 0;
  #seen = new Map<number, string>();

  push(chunk: Buffer): void {
    this.#scan(Buffer.concat([this.#carry, chunk]), false);
  }

  end(): string[] {
    this.#scan(this.#carry, true);
    this.#carry = Buffer.alloc(0);
    return [...new Set([...this.#seen.entries()].sort((a, b) => a[0] - b[0]).map(([, s]) => s))];
  }

  #scan(buf: Buffer, final: boolean): void {
    for (const hit of findStampStrings(buf, final, this.#carryBase)) this.#seen.set(hit.offset, hit.stamp);
    const keep = Math.min(buf.length, MAX_STAMP_WINDOW - 1);
    this.#carryBase += buf.length - keep;
    this.#carry = Buffer.from(buf.subarray(buf.length - keep));
  }
}

/** Distinct stamps an emulator binary carries, streamed (QEMU binaries are tens of MB). */
export async function readEmulatorStamps(emulatorPath: string, chunkBytes = 1024 * 1024): Promise<string[]> {
  const scanner = new StampScanner();
  for await (const chunk of createReadStream(emulatorPath, { highWaterMark: chunkBytes })) scanner.push(chunk as Buffer);
  return scanner.end();
}

/** Distinct stamp symbols of a helper executable. Throws ElfFormatError when it is no ELF64 LE file. */
export function readHelperStamps(helperPath: string): string[] {
  const size = statSync(helperPath).size;
  // checked before reading, so a huge file is never pulled into memory
  if (size > MAX_HELPER_BYTES) throw new ElfFormatError(`${size} bytes is too large for a helper`, { fields: { size, maxBytes: MAX_HELPER_BYTES } });
  return helperStampsFromElf(readFileSync(helperPath));
}

export type StampVerdict =
  | { ok: true; stamp: string }
  | { ok: false; reason: string; helperStamps: string[]; emulatorStamps: string[] };

/** The rule, apart from I/O: each side carries exactly one stamp and they are equal. */
export function judgeStamps(helper: string, helperStamps: string[], emulator: string, emulatorStamps: string[], helperProblem?: string): StampVerdict {
  const fail = (reason: string): StampVerdict => ({ ok: false, reason, helperStamps, emulatorStamps });
  const helperNone = helperStamps.length === 0;
  const emulatorNone = emulatorStamps.length === 0;
  const helperWhy = helperProblem ? ` (${helperProblem})` : '';
  if (helperNone && emulatorNone) return fail(`neither helper ${helper}${helperWhy} nor emulator ${emulator} carries a build stamp`);
  if (helperNone) return fail(`helper ${helper} has no build stamp symbol${helperWhy}`);
  if (emulatorNone) return fail(`emulator ${emulator} carries no build stamp (not built with the helper protocol)`);
  if (helperStamps.length > 1) return fail(`helper ${helper} carries ${helperStamps.length} different stamps (${helperStamps.map(shortStamp).join(', ')})`);
  if (emulatorStamps.length > 1) return fail(`emulator ${emulator} carries ${emulatorStamps.length} different stamps (${emulatorStamps.map(shortStamp).join(', ')})`);
  const [h] = helperStamps;
  const [e] = emulatorStamps;
  if (h !== e) return fail(`helper ${helper} is stamped ${shortStamp(h)} but emulator ${emulator} is ${shortStamp(e)}`);
  return { ok: true, stamp: h };
}

export const STAMP_REMEDY = 'use the helper built with this QEMU (query-helper-paths names it); reinstall QEMU';

/** Resolve to the shared stamp, or throw HELPER_STAMP_MISMATCH. Reads both files, runs nothing. */
export async function verifyStamp(helperPath: string, emulatorPath: string): Promise<string> {
  let helperStamps: string[] = [];
  let helperError: ElfFormatError | undefined;
  try {
    helperStamps = readHelperStamps(helperPath);
  } catch (e) {
    if (!(e instanceof ElfFormatError)) throw ioError('helper', helperPath, e);
    helperError = e;
  }
  let emulatorStamps: string[];
  try {
    emulatorStamps = await readEmulatorStamps(emulatorPath);
  } catch (e) {
    throw ioError('emulator', emulatorPath, e);
  }
  // The verdict alone ("not an ELF file") keeps the message to one short line; the reader's
  // error, evidence included, stays reachable as the cause.
  const verdict = judgeStamps(helperPath, helperStamps, emulatorPath, emulatorStamps, helperError?.problem);
  if (verdict.ok) return verdict.stamp;
  throw new VirtEbpfError('HELPER_STAMP_MISMATCH', `helper stamp check failed: ${verdict.reason}`, {
    remedy: STAMP_REMEDY,
    detail: `helper stamps: ${helperStamps.join(' ') || '(none)'}\nemulator stamps: ${emulatorStamps.join(' ') || '(none)'}`,
    cause: helperError,
    fields: { helperPath, emulatorPath, helperStamps, emulatorStamps },
  });
}

function ioError(subject: 'helper' | 'emulator', path: string, cause: unknown): VirtEbpfError {
  const code = (cause as NodeJS.ErrnoException)?.code;
  const missing = code === 'ENOENT' || code === 'ENOTDIR';
  return new VirtEbpfError(
    subject === 'helper' ? 'HELPER_NOT_FOUND' : 'EMULATOR_NOT_FOUND',
    `cannot read ${subject} ${path} for the stamp check: ${missing ? 'no such file' : (cause as Error)?.message ?? String(cause)}`,
    { remedy: `check the ${subject} path (query-helper-paths reports the helper); reinstall QEMU`, cause, fields: { path } },
  );
}
