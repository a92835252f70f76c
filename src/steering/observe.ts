/**
 * The host-side facts decide.ts needs, read without talking to QEMU or the guest and without
 * changing anything either of them sees (root):
 * - the tap's vnet header length: TUNGETVNETHDRSZ on a duplicate of one of QEMU's tap fds
 *   (pidfd_getfd; the same open file, closed again at once);
 * - the tap's attached queues and the frames it passed to QEMU: /sys/class/net/TAP;
 * - how often the NIC's program ran over a window: BPF run statistics switched on for the
 *   window with BPF_ENABLE_STATS (the kernel switches them off when the fd closes, also if this
 *   process dies; kernel.bpf_stats_enabled is never written).
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { enableRunStats, openProgById, progInfo } from '../bpf/live';
import { bpfFdInfo, OwnedFd } from '../fdpass';
import { duplicateFdOf, tunVnetHeaderSize } from '../sys/libc';
import type { HeaderFact, RunFact } from './decide';
import { isVirtEbpfError } from '../errors';

const message = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/** The message and, for our typed errors, what to do (a duplicate needs ptrace access: root, and Yama's ptrace_scope below 3). */
function remedied(e: unknown): string {
  const remedy = isVirtEbpfError(e) ? e.remedy : undefined;
  return remedy ? `${message(e)} (${remedy})` : message(e);
}

/** QEMU's fds on /dev/net/tun whose tap is `tap` (fdinfo `iff:`), in fd order. */
export function tapFdsOf(pid: number, tap: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync(`/proc/${pid}/fd`)) {
    const fd = Number(name);
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`) !== '/dev/net/tun') continue;
      if (bpfFdInfo(fd, pid).raw.iff === tap) out.push(fd);
    } catch {
      /* closed meanwhile */
    }
  }
  return out.sort((a, b) => a - b);
}

/** The tap's vnet header length as QEMU set it (one value per tap, whatever the queue). */
export function readTapHeader(pid: number, tap: string | undefined): HeaderFact {
  if (!tap) return { error: 'the tap is unknown' };
  let fds: number[];
  try {
    fds = tapFdsOf(pid, tap);
  } catch (e) {
    return { error: `cannot list QEMU's fds: ${message(e)}` };
  }
  if (fds.length === 0) return { error: `QEMU holds no queue of ${tap}` };
  // Any queue answers (one header per tap); one closed or swapped meanwhile is skipped.
  let last = '';
  for (const fd of fds) {
    try {
      const dup = new OwnedFd(duplicateFdOf(pid, fd));
      try {
        // The copy itself must be this tap: the number may point elsewhere by now.
        if (bpfFdInfo(dup.fd, process.pid).raw.iff !== tap) {
          last = `fd ${fd} is no longer a queue of ${tap}`;
          continue;
        }
        return { bytes: tunVnetHeaderSize(dup.fd) };
      } finally {
        dup.close();
      }
    } catch (e) {
      last = remedied(e);
    }
  }
  return { error: last };
}

function sysNet(tap: string, file: string): string {
  return readFileSync(`/sys/class/net/${tap}/${file}`, 'utf8').trim();
}

/** Queues attached to the tap now (its tx-N queues in sysfs follow the attached count). */
export function tapQueues(tap: string | undefined): number | undefined {
  if (!tap) return undefined;
  try {
    return readdirSync(`/sys/class/net/${tap}/queues`).filter((q) => q.startsWith('tx-')).length;
  } catch {
    return undefined;
  }
}

/** Frames the tap passed towards QEMU (its tx side), dropped ones included: each went through queue selection. */
export function tapFrames(tap: string): number {
  return Number(sysNet(tap, 'statistics/tx_packets')) + Number(sysNet(tap, 'statistics/tx_dropped'));
}

export interface RunTarget {
  progId: number;
  tap?: string;
}

function progRuns(progId: number): number {
  const p = openProgById(progId);
  try {
    return progInfo(p.fd).runCnt;
  } finally {
    p.close();
  }
}

/**
 * Counts each program's runs and its tap's frames over `windowMs`, with run statistics on for
 * exactly that window. Keyed by program id; a target that cannot be counted gets the reason.
 */
export async function sampleRuns(targets: readonly RunTarget[], windowMs: number): Promise<Map<number, RunFact>> {
  const out = new Map<number, RunFact>();
  if (targets.length === 0) return out;
  let stats: OwnedFd;
  try {
    stats = enableRunStats();
  } catch (e) {
    for (const t of targets) out.set(t.progId, { error: `BPF run statistics unavailable: ${message(e)}` });
    return out;
  }
  try {
    const start = new Map<number, { runs: number; frames: number }>();
    for (const t of targets) {
      if (!t.tap) {
        out.set(t.progId, { error: 'the tap is unknown' });
        continue;
      }
      try {
        start.set(t.progId, { runs: progRuns(t.progId), frames: tapFrames(t.tap) });
      } catch (e) {
        out.set(t.progId, { error: message(e) });
      }
    }
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, windowMs));
    for (const t of targets) {
      const s = start.get(t.progId);
      if (!s) continue;
      try {
        const runs = progRuns(t.progId) - s.runs;
        const frames = tapFrames(t.tap!) - s.frames;
        out.set(t.progId, { runs, frames, windowMs: Math.round(performance.now() - t0) });
      } catch (e) {
        out.set(t.progId, { error: message(e) });
      }
    }
  } finally {
    stats.close();
  }
  return out;
}
