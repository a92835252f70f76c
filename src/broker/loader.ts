/**
 * How the broker loads contexts: the verifier's run (~30–50 ms of kernel time a context) happens
 * on a thread of libuv's pool (src/bpf/niced-load.c through koffi), never on the main thread,
 * which keeps answering meanwhile; the rest of a load (libbpf's parse of the object, the fds) is
 * short and stays on the main thread. No thread of the broker's own holds a V8 isolate for it.
 * Up to `threads` loads run at once (one per CPU by default, at most DEFAULT_MAX_THREADS), so a
 * boot storm's starts are not served one after another. Loads a request waits for (`urgent`)
 * go first, at the broker's own nice; the pool's refills run only where no urgent load needs
 * the room, at idle priority (nice 19), so a start never waits behind a refill for more than
 * the one load already under way. A refill lowers its thread's priority only if the thread may
 * raise it again (CAP_SYS_NICE, or RLIMIT_NICE: the unit's LimitNICE=+0); else refills run at
 * the broker's own nice, and the operator is told once. libbpf
 * runs without its print callback (see src/bpf/libbpf.ts): the callback is one per process and
 * libbpf would call it from the pool's threads. Once no load is left, the C heap's free memory
 * (libbpf's, in the pool threads' malloc arenas) and the kept verifier-log buffers go back.
 */
import { availableParallelism, getPriority } from 'node:os';
import type { EmulatorCaps } from '../emulator';
import { VirtEbpfError } from '../errors';
import { closeAll } from '../fdpass';
import { mallocTrim } from '../sys/libc';
import { mayLowerNiceTo } from '../sys/proc';
import { quietLibbpf } from '../bpf/libbpf';
import type { LoadedContext } from './pool';

export const IDLE_NICE = 19;

/**
 * Loads at once unless configured: the verifier's runs of a 64-context storm are done in a few
 * rounds at this; each thread stays in libuv's pool for the broker's life.
 */
export const DEFAULT_MAX_THREADS = 16;

/** How long after its last load the loader gives memory back. */
export const TRIM_AFTER_MS = 1_000;

interface Job {
  caps: EmulatorCaps;
  /** the context's kind (argv/handoff.ts) */
  kind: string;
  urgent: boolean;
  resolve: (c: LoadedContext) => void;
  reject: (e: Error) => void;
  done?: Promise<void>;
}

export interface LoaderOptions {
  /** loads at once; default one per CPU */
  threads?: number;
  /** a problem the operator should know of (logged once): a pool thread's nice could not be set or put back */
  warn?: (message: string, meta: Record<string, unknown>) => void;
}

export class Loader {
  readonly #threads: number;
  readonly #warn?: LoaderOptions['warn'];
  readonly #urgent: Job[] = [];
  readonly #background: Job[] = [];
  /** loads under way, urgent or not */
  readonly #running = new Set<Job>();
  /** the broker's own nice: urgent loads run at it */
  readonly #ownNice: number;
  /** refills' nice: IDLE_NICE while a thread may come back from it, else the broker's own */
  #refillNice: number;
  #trim?: NodeJS.Timeout;
  #closed = false;

  constructor(opts: LoaderOptions = {}) {
    this.#threads = opts.threads ?? Math.min(availableParallelism(), DEFAULT_MAX_THREADS);
    this.#warn = opts.warn;
    this.#ownNice = getPriority();
    this.#refillNice = Math.max(this.#ownNice, IDLE_NICE);
    if (this.#refillNice !== this.#ownNice && !mayLowerNiceTo(this.#ownNice)) this.#niceStuck(this.#refillNice);
    quietLibbpf();
    sizePool(this.#threads);
  }

  /** Loads under way now. */
  get running(): number {
    return this.#running.size;
  }

  /** One context of `kind` for this build; `urgent`: somebody waits for it (normal priority), else a refill (idle). */
  load(caps: EmulatorCaps, kind: string, urgent: boolean): Promise<LoadedContext> {
    if (this.#closed) return Promise.reject(stopping());
    return new Promise((resolve, reject) => {
      (urgent ? this.#urgent : this.#background).push({ caps, kind, urgent, resolve, reject });
      this.#pump();
    });
  }

  /** Start queued loads while there is room: urgent ones first, a refill only where no urgent load needs the room. */
  #pump(): void {
    for (;;) {
      if (this.#closed || this.#running.size >= this.#threads) return;
      const refills = [...this.#running].filter((j) => !j.urgent).length;
      const mayRefill = this.#background.length > 0 && refills < Math.max(1, this.#threads - 1);
      if (this.#urgent.length === 0 && !mayRefill) return;
      this.#run(this.#urgent.shift() ?? this.#background.shift()!);
    }
  }

  #run(job: Job): void {
    clearTimeout(this.#trim);
    this.#running.add(job);
    const nice = job.urgent ? this.#ownNice : this.#refillNice;
    // Loaded on the first load: the loaders are not needed to answer anything else.
    job.done = import('../context')
      .then(({ loadContext }) => {
        if (this.#closed) throw stopping();
        return loadContext(job.caps, job.kind, { nice, onNiceStuck: () => this.#niceStuck(nice) });
      })
      .then(
        (c) => {
          if (this.#closed) closeAll(c.fds); // nobody takes it any more
          else job.resolve(c);
        },
        (e: Error) => job.reject(e),
      )
      .finally(() => {
        this.#running.delete(job);
        if (this.#closed) return;
        this.#pump();
        if (this.#running.size === 0) {
          this.#trim = setTimeout(() => {
            // Loaded by the loads already (through ../context): not at the broker's start.
            void import('../bpf/load').then((m) => {
              m.dropLogBuffers();
              mallocTrim();
            });
          }, TRIM_AFTER_MS).unref();
        }
      });
  }

  /** A thread could not (or could not be expected to) come back from a refill's nice: refills run at the broker's own from now on, and the operator hears of it once. */
  #niceStuck(nice: number): void {
    if (this.#refillNice === this.#ownNice) return;
    this.#refillNice = this.#ownNice;
    this.#warn?.('a loader thread could not come back from a refill\'s idle priority: refills run at the broker\'s own priority', {
      nice,
      remedy: 'give the broker RLIMIT_NICE 20 (the unit\'s LimitNICE=+0) or CAP_SYS_NICE',
    });
  }

  /** Refuse what is queued and what is under way; resolves once the loads under way ended (their fds closed). */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#trim);
    for (const j of [...this.#urgent.splice(0), ...this.#background.splice(0)]) j.reject(stopping());
    const running = [...this.#running];
    for (const j of running) j.reject(stopping());
    await Promise.allSettled(running.map((j) => j.done));
  }
}

function stopping(): VirtEbpfError {
  return new VirtEbpfError('BROKER_INTERNAL', 'the broker is stopping', { remedy: 'retry once it is back' });
}

/**
 * Room in libuv's pool for `threads` loads beside the broker's file system work. libuv sizes its
 * pool from UV_THREADPOOL_SIZE when the first work is queued: in the broker, the first load or
 * file read after this (the broker is made with its Loader). The pool is not started here: its
 * threads cost ~1.5 MiB, which a broker that has loaded nothing yet does not pay. The variable
 * stays in the environment; the broker's children (the probe's QEMU, a helper) get their own.
 */
function sizePool(threads: number): void {
  process.env.UV_THREADPOOL_SIZE ??= String(Math.max(4, threads + 2));
}
