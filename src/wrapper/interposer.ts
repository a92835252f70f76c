/**
 * Seeing the QMP interposer from outside (shims/interposer.py runs it): which QEMU processes
 * have their monitor on our socketpair, and which relay and keeper serve each. The parsers are
 * pure; `scanInterposers` reads /proc.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { domainIdentity } from '../argv';
import { readCmdline } from '../sys/proc';

/** The process names the interposer gives itself (prctl PR_SET_NAME). */
export const RELAY_COMM = 'vebpf-relay';
export const KEEPER_COMM = 'vebpf-keeper';

/**
 * QEMU's monitor as the wrapper rewrites it for the interposer: `-chardev socket,fd=N,id=charmonitor`
 * (a connected socket; libvirt's own form is a listening one, `…,server=on,wait=off`).
 */
export function hasInterposedMonitor(argv: readonly string[]): boolean {
  for (let i = 0; i < argv.length - 1; i++) {
    if (argv[i] !== '-chardev' && argv[i] !== '--chardev') continue;
    const opts = argv[i + 1].split(',');
    if (opts[0] === 'socket' && opts.includes('id=charmonitor') && opts.some((o) => /^fd=\d+$/.test(o)) && !opts.includes('server=on')) return true;
  }
  return false;
}

/** The QEMU pid an interposer process serves: its command line is `python3 -I -S interposer.py L A C QEMU_PID …`. */
export function servedQemuPid(argv: readonly string[]): number | undefined {
  const at = argv.findIndex((a) => a.endsWith('/interposer.py'));
  const v = at >= 0 ? argv[at + 4] : undefined;
  return v !== undefined && /^\d+$/.test(v) ? Number(v) : undefined;
}

export interface InterposedQemu {
  pid: number;
  /** `-name guest=…` when given */
  name?: string;
  relays: number[];
  keepers: number[];
}

/** Every running QEMU with an interposed monitor, with the relays and keepers serving it. */
export function scanInterposers(): InterposedQemu[] {
  const qemus = new Map<number, InterposedQemu>();
  const helpers: Array<{ pid: number; comm: string; qemu: number }> = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let comm: string;
    try {
      comm = readFileSync(`/proc/${name}/comm`, 'utf8').trim();
    } catch {
      continue;
    }
    const argv = readCmdline(name); // none for a zombie: a relay or QEMU that just died
    if (!argv) continue;
    if (comm === RELAY_COMM || comm === KEEPER_COMM) {
      const qemu = servedQemuPid(argv);
      if (qemu !== undefined) helpers.push({ pid: Number(name), comm, qemu });
    } else if (hasInterposedMonitor(argv)) {
      qemus.set(Number(name), { pid: Number(name), name: domainIdentity(argv).name, relays: [], keepers: [] });
    }
  }
  for (const h of helpers) {
    const q = qemus.get(h.qemu);
    if (q) (h.comm === RELAY_COMM ? q.relays : q.keepers).push(h.pid);
  }
  return [...qemus.values()].sort((a, b) => a.pid - b.pid);
}
