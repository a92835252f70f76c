/** Reading other processes through /proc. */
import { readFileSync } from 'node:fs';

/** A process's argv, or undefined for a kernel thread, a zombie (both have none) or a process gone meanwhile. */
export function readCmdline(pid: number | string): string[] | undefined {
  try {
    const raw = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    if (raw === '') return undefined;
    return raw.replace(/\0$/, '').split('\0');
  } catch {
    return undefined;
  }
}
