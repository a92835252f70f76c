/**
 * Who gets a connection slot. Every QEMU of a host runs as the same account, so a per-account
 * cap alone would let one QEMU (which a guest may own) lock the others out: each process may
 * hold only a few connections, and when its account is at its cap, the account's longest-idle
 * connection makes room for the newcomer; with none idle, the one whose request line has been
 * arriving longest, once that is over STALLED_LINE_MS (the shims write a request whole: a line
 * that trickles in holds a slot, it is not using one). Pure bookkeeping: the server closes what
 * it is told to.
 */

/** A request line still arriving after this long makes its connection one that may go for a newcomer. */
export const STALLED_LINE_MS = 1_000;
export interface AdmissionLimits {
  maxConnectionsPerUid: number;
  maxConnectionsPerProcess: number;
}

export interface Slot {
  uid: number;
  pid: number;
  /** no request in flight, nothing being written, no partial request */
  idle(): boolean;
  lastActive(): number;
  /** when the first byte of the request line still arriving came (0: none is arriving) */
  lineSince(): number;
}

export type Admission<T extends Slot> = { admit: true; evict?: T } | { admit: false; why: string };

export class Admissions<T extends Slot> {
  readonly #slots = new Set<T>();

  constructor(private readonly limits: AdmissionLimits) {}

  /** Whether a new connection of uid/pid may be taken, and which idle one must go for it. */
  consider(uid: number, pid: number, now = Date.now()): Admission<T> {
    const mine = [...this.#slots].filter((s) => s.uid === uid);
    if (mine.filter((s) => s.pid === pid).length >= this.limits.maxConnectionsPerProcess) {
      return { admit: false, why: `process ${pid} already has ${this.limits.maxConnectionsPerProcess} open connections` };
    }
    if (mine.length < this.limits.maxConnectionsPerUid) return { admit: true };
    const idle = mine.filter((s) => s.idle()).sort((a, b) => a.lastActive() - b.lastActive())[0];
    if (idle) return { admit: true, evict: idle };
    const stalled = mine.filter((s) => s.lineSince() > 0 && now - s.lineSince() > STALLED_LINE_MS).sort((a, b) => a.lineSince() - b.lineSince())[0];
    return stalled ? { admit: true, evict: stalled } : { admit: false, why: `uid ${uid} has ${mine.length} connections, none idle` };
  }

  add(slot: T): void {
    this.#slots.add(slot);
  }

  remove(slot: T): void {
    this.#slots.delete(slot);
  }

  get size(): number {
    return this.#slots.size;
  }

  all(): T[] {
    return [...this.#slots];
  }
}
