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

export const CAP_SYS_NICE = 23n;

/** The effective capabilities (CapEff) in the text of a /proc/PID/status. Pure. */
export function capsIn(status: string): bigint | undefined {
  const c = /^CapEff:\s+([0-9a-f]+)$/m.exec(status);
  return c ? BigInt(`0x${c[1]}`) : undefined;
}

/** A process's effective capabilities (CapEff of /proc/PID/status), or undefined for a process gone or not readable. */
export function effectiveCaps(pid: number | 'self'): bigint | undefined {
  try {
    return capsIn(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return undefined;
  }
}

/**
 * Whether this process's threads may lower their nice to `nice` (raise their priority back):
 * with CAP_SYS_NICE always, else as far as RLIMIT_NICE allows (a soft limit r lets nice go
 * down to 20 - r; systemd's LimitNICE=+0 is r = 20).
 */
export function mayLowerNiceTo(nice: number): boolean {
  const caps = effectiveCaps('self');
  if (caps !== undefined && ((caps >> CAP_SYS_NICE) & 1n) === 1n) return true;
  try {
    const m = /^Max nice priority\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (!m) return false;
    return m[1] === 'unlimited' || nice >= 20 - Number(m[1]);
  } catch {
    return false;
  }
}
