/**
 * What an idle process gives back: the C heap's free memory (malloc_trim) and the page-table
 * entries of read-only file mappings — code and data of node's binary and of the libraries —
 * that start-up and the last burst of work touched. Those pages stay in the page cache (shared,
 * reclaimable); the next touch maps them again with a minor fault. A mapping with private
 * copies (a relocated, then write-protected segment) is left alone: its backing no longer holds
 * what it holds.
 */
import { readFileSync } from 'node:fs';
import { madviseDontNeed, mallocTrim } from './libc';

export interface Range {
  start: bigint;
  end: bigint;
}

const HEADER = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$/;
const FIELD = /^(\w+):\s+(\d+) kB$/;

/** The ranges of /proc/PID/smaps text that may be dropped: read-only, private, file-backed, clean, unlocked, small pages. */
export function trimmableRanges(smaps: string): Range[] {
  const out: Range[] = [];
  let cur: { range: Range; ok: boolean; rss: number } | undefined;
  const finish = () => {
    if (cur?.ok && cur.rss > 0) out.push(cur.range);
  };
  for (const line of smaps.split('\n')) {
    const h = HEADER.exec(line);
    if (h) {
      finish();
      const [, start, end, perms, path] = h;
      const readOnlyPrivate = perms === 'r--p' || perms === 'r-xp';
      const file = path.startsWith('/') && !path.endsWith(' (deleted)');
      cur = { range: { start: BigInt(`0x${start}`), end: BigInt(`0x${end}`) }, ok: readOnlyPrivate && file, rss: 0 };
      continue;
    }
    if (!cur) continue;
    if (line.startsWith('VmFlags:')) {
      if (/\blo\b/.test(line)) cur.ok = false;
      continue;
    }
    const f = FIELD.exec(line);
    if (!f) continue;
    const kib = Number(f[2]);
    switch (f[1]) {
      case 'Rss':
        cur.rss = kib;
        break;
      case 'Anonymous':
      case 'Private_Dirty':
      case 'Shared_Dirty':
        if (kib !== 0) cur.ok = false;
        break;
      case 'KernelPageSize':
        if (kib !== 4) cur.ok = false;
        break;
    }
  }
  finish();
  return out;
}

/** Resident memory in KiB: all, anonymous, file-backed (shared memory counted as file). */
export interface Resident {
  rss: number;
  anon: number;
  file: number;
}

/** The resident memory /proc/PID/status reports. */
export function residentOf(status: string): Resident {
  const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rss: kib('VmRSS'), anon: kib('RssAnon'), file: kib('RssFile') + kib('RssShmem') };
}

/**
 * Trims this process (call it when idle, with no other thread mapping or unmapping files):
 * returns its resident memory before and after.
 */
export function trimResident(): { before: Resident; after: Resident } {
  const before = residentOf(readFileSync('/proc/self/status', 'utf8'));
  mallocTrim();
  for (const r of trimmableRanges(readFileSync('/proc/self/smaps', 'utf8'))) madviseDontNeed(r.start, r.end - r.start);
  return { before, after: residentOf(readFileSync('/proc/self/status', 'utf8')) };
}
