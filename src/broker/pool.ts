/**
 * Pre-loaded contexts per emulator build. Loading costs ~100 ms per NIC (the verifier); handing
 * fds over costs microseconds, so the broker keeps a few ready and refills in the background.
 * A context leaves the pool exactly once (handed out or dropped) and is never reused. Refills
 * load in the background at idle priority (PoolSource.loadInBackground), and not while a domain
 * is starting: a reserve (the hook's prepare) or a take (the wrapper) says a start is under
 * way, and refills wait until none has been for `settleMs` — the verifier's CPU time would
 * otherwise land inside that `virsh start` (libvirt and QEMU are busy for a few hundred ms
 * after the take). Under a steady stream of starts a refill waits at most `maxDeferMs`.
 */
import { OwnedFd, closeAll } from '../fdpass';
import { VirtEbpfError } from '../errors';
import type { ContextDescriptor } from '../context';

export interface LoadedContext {
  descriptor: ContextDescriptor;
  fds: OwnedFd[];
}

export interface PoolSource {
  /** identity of the emulator build (changes when the binary changes) */
  key: string;
  /** a load a request waits for */
  load(): Promise<LoadedContext>;
  /** a refill's load: at idle priority (src/broker/loader.ts); else load() */
  loadInBackground?(): Promise<LoadedContext>;
}

function dispose(c: LoadedContext): void {
  closeAll(c.fds);
}

/**
 * `n` fresh contexts, loaded at once (the loader spreads them over its threads); if any load
 * fails, the others are closed and the first failure is thrown.
 */
async function loadAll(source: PoolSource, n: number): Promise<LoadedContext[]> {
  if (n <= 0) return [];
  const settled = await Promise.allSettled(Array.from({ length: n }, () => source.load()));
  const loaded = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    loaded.forEach(dispose);
    throw failed.reason;
  }
  return loaded;
}

export interface RefillTiming {
  /** how long after the last reserve/take a refill waits (a start is still under way) */
  settleMs: number;
  /** the longest a refill is put off by a steady stream of starts */
  maxDeferMs: number;
}

export const DEFAULT_REFILL_TIMING: RefillTiming = { settleMs: 1000, maxDeferMs: 5000 };

export interface ReservationLimits {
  /** a reservation nobody takes within this time is dropped (the start it was made for failed) */
  ttlMs: number;
  /** contexts reserved for all domains together */
  maxTotal: number;
}

export const DEFAULT_RESERVATION_LIMITS: ReservationLimits = { ttlMs: 60_000, maxTotal: 128 };

interface Reservation {
  key: string;
  contexts: LoadedContext[];
  expiry: NodeJS.Timeout;
}

export class ContextPool {
  readonly #ready = new Map<string, LoadedContext[]>();
  readonly #reserved = new Map<string, Reservation>();
  readonly #refilling = new Set<string>();
  readonly #sources = new Map<string, PoolSource>();
  /** refills put off while starts are under way: key → when the first was put off, its timer */
  readonly #deferred = new Map<string, { since: number; timer?: NodeJS.Timeout }>();
  /** until when a start is taken to be under way (ms since the epoch) */
  #busyUntil = 0;
  #closed = false;

  constructor(
    private readonly target: number,
    private readonly onError: (e: unknown, key: string) => void = () => {},
    private readonly timing: RefillTiming = DEFAULT_REFILL_TIMING,
    private readonly reservations: ReservationLimits = DEFAULT_RESERVATION_LIMITS,
  ) {}

  /** A domain is starting (prepare reserved for it, or its wrapper takes): refills wait. */
  #starting(): void {
    this.#busyUntil = Date.now() + this.timing.settleMs;
  }

  /** ms a refill of `key` should still wait for starts to settle (0: load now). */
  #deferFor(key: string): number {
    const now = Date.now();
    const wait = this.#busyUntil - now;
    const d = this.#deferred.get(key);
    if (wait <= 0 || (d && now - d.since >= this.timing.maxDeferMs)) return 0;
    return Math.min(wait, (d ? d.since : now) + this.timing.maxDeferMs - now);
  }

  /**
   * Take `count` contexts for this build: reserved for the domain first, then ready, then fresh.
   * `abandoned` is asked before each fresh load: a request whose peer went loads nothing more.
   */
  async take(source: PoolSource, count: number, domainKey?: string, abandoned: () => boolean = () => false): Promise<LoadedContext[]> {
    this.#starting();
    this.#sources.set(source.key, source);
    const out: LoadedContext[] = [];
    const res = domainKey ? this.#reserved.get(domainKey) : undefined;
    if (res && res.key === source.key) {
      out.push(...res.contexts.splice(0, count));
      if (res.contexts.length === 0) this.#drop(domainKey!);
    }
    const ready = this.#ready.get(source.key) ?? [];
    out.push(...ready.splice(0, count - out.length));
    try {
      if (out.length < count && abandoned()) throw new VirtEbpfError('BROKER_UNREACHABLE', 'the peer went away before its contexts were loaded', { remedy: 'retry the request' });
      out.push(...(await loadAll(source, count - out.length)));
    } catch (e) {
      out.forEach(dispose);
      throw e;
    } finally {
      this.refill(source.key);
    }
    return out;
  }

  /**
   * Load and set aside contexts for a domain that is about to start (hook: prepare), at most
   * `maxTotal` for all domains together; dropped after `ttlMs` if the start never takes them.
   * A release while the loads run wins: what they load then is closed, not kept.
   */
  async reserve(source: PoolSource, count: number, domainKey: string): Promise<number> {
    this.#starting();
    this.#sources.set(source.key, source);
    const res = this.#reserved.get(domainKey);
    if (res && res.key !== source.key) this.release(domainKey);
    let entry = this.#reserved.get(domainKey);
    if (!entry) {
      entry = { key: source.key, contexts: [], expiry: setTimeout(() => this.release(domainKey), this.reservations.ttlMs) };
      entry.expiry.unref();
      this.#reserved.set(domainKey, entry);
    }
    const mine = entry;
    const room = () => this.reservations.maxTotal - this.reservedCount();
    const want = () => Math.min(count - mine.contexts.length, room());
    // Ready contexts first: prepare runs inside `virsh start`, a fresh load costs ~70 ms there.
    const ready = this.#ready.get(source.key) ?? [];
    mine.contexts.push(...ready.splice(0, Math.max(0, want())));
    try {
      const loaded = await loadAll(source, Math.max(0, want()));
      if (this.#closed || this.#reserved.get(domainKey) !== mine) loaded.forEach(dispose); // released (or replaced) meanwhile
      else mine.contexts.push(...loaded);
    } finally {
      this.refill(source.key);
    }
    return this.#reserved.get(domainKey) === mine ? mine.contexts.length : 0;
  }

  /** Drop whatever a domain still has reserved (hook: release). */
  release(domainKey: string): number {
    const res = this.#drop(domainKey);
    res?.contexts.forEach(dispose);
    return res?.contexts.length ?? 0;
  }

  #drop(domainKey: string): Reservation | undefined {
    const res = this.#reserved.get(domainKey);
    if (!res) return undefined;
    clearTimeout(res.expiry);
    this.#reserved.delete(domainKey);
    return res;
  }

  get reservationTtlMs(): number {
    return this.reservations.ttlMs;
  }

  /** Contexts reserved for all domains together. */
  reservedCount(): number {
    let n = 0;
    for (const r of this.#reserved.values()) n += r.contexts.length;
    return n;
  }

  /** Forget a build that is no longer current (binary changed): its contexts are stale. */
  drop(key: string): void {
    (this.#ready.get(key) ?? []).forEach(dispose);
    this.#ready.delete(key);
    this.#sources.delete(key);
  }

  /** Keep `target` contexts ready for this emulator from now on (prewarm without a domain). */
  warm(source: PoolSource): void {
    this.#sources.set(source.key, source);
    this.refill(source.key);
  }

  refill(key: string): void {
    if (this.#closed || this.#refilling.has(key) || this.target === 0) return;
    const source = this.#sources.get(key);
    if (!source) return;
    const wait = this.#deferFor(key);
    if (wait > 0) {
      const d = this.#deferred.get(key) ?? { since: Date.now() };
      this.#deferred.set(key, d);
      if (!d.timer) {
        d.timer = setTimeout(() => {
          d.timer = undefined;
          this.refill(key);
        }, wait);
        d.timer.unref?.();
      }
      return;
    }
    // Starts still under way here means the wait ran out (maxDeferMs): fill up regardless.
    const capped = Date.now() < this.#busyUntil;
    const d = this.#deferred.get(key);
    if (d?.timer) clearTimeout(d.timer);
    this.#deferred.delete(key);
    this.#refilling.add(key);
    const step = async () => {
      let more = false;
      try {
        while (!this.#closed && this.#sources.get(key) === source && (this.#ready.get(key)?.length ?? 0) < this.target) {
          if (!capped && Date.now() < this.#busyUntil) {
            more = true; // a start began meanwhile: the rest waits for it
            break;
          }
          const c = await (source.loadInBackground ?? source.load).call(source);
          if (this.#closed || this.#sources.get(key) !== source) {
            dispose(c);
            break;
          }
          const list = this.#ready.get(key) ?? [];
          list.push(c);
          this.#ready.set(key, list);
          await new Promise((r) => setImmediate(r)); // let requests in between loads
        }
      } catch (e) {
        this.onError(e, key);
      } finally {
        this.#refilling.delete(key);
      }
      if (more) this.refill(key);
    };
    setImmediate(() => void step());
  }

  stats(): Array<{ key: string; ready: number; target: number }> {
    return [...this.#sources.keys()].map((key) => ({ key, ready: this.#ready.get(key)?.length ?? 0, target: this.target }));
  }

  close(): void {
    this.#closed = true;
    for (const d of this.#deferred.values()) if (d.timer) clearTimeout(d.timer);
    this.#deferred.clear();
    for (const list of this.#ready.values()) list.forEach(dispose);
    for (const r of this.#reserved.values()) {
      clearTimeout(r.expiry);
      r.contexts.forEach(dispose);
    }
    this.#ready.clear();
    this.#reserved.clear();
  }
}
