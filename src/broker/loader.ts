/**
 * The broker loads contexts on worker threads (src/broker/loader-worker.ts), never on its main
 * thread: the main thread keeps answering while a load runs (~50 ms of verifier time). Up to
 * `threads` loads run at once (one per CPU by default), so a boot storm's starts are not served
 * one after another. Loads a request waits for (`urgent`) go first; the pool's refills run only
 * on a thread no urgent load needs, at idle priority (nice 19), so a start never waits behind a
 * refill for more than the one load already under way. Each thread's priority follows the load it
 * runs. libbpf runs without its print callback on these threads (see src/bpf/libbpf.ts), and,
 * once a Loader exists, on the thread that made it too: the callback is one per process, and
 * libbpf on a loader thread calling into another thread's JavaScript aborts the process.
 * A thread with nothing to load for `idleMs` ends (each holds a V8 isolate of its own, several
 * MB): an idle broker is its main thread; the next load starts a thread again (~20 ms).
 */
import { availableParallelism, setPriority } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import type { EmulatorCaps } from '../emulator';
import { VirtEbpfError, type ErrorCode } from '../errors';
import { OwnedFd, closeAll } from '../fdpass';
import { mallocTrim } from '../sys/libc';
import { quietLibbpf } from '../bpf/libbpf';
import type { ContextDescriptor } from '../context';
import type { LoadedContext } from './pool';
import type { LoaderMessage, LoadRequest } from './loader-worker';

export const IDLE_NICE = 19;

/** How long a loader thread waits for its next load before it ends. */
export const LOADER_IDLE_MS = 10_000;

interface Job {
  id: number;
  caps: EmulatorCaps;
  /** the context's kind (argv/handoff.ts) */
  kind: string;
  urgent: boolean;
  resolve: (c: LoadedContext) => void;
  reject: (e: Error) => void;
}

interface Thread {
  worker: Worker;
  tid?: number;
  job?: Job;
  idle?: NodeJS.Timeout;
}

export class Loader {
  readonly #threads: Thread[] = [];
  readonly #urgent: Job[] = [];
  readonly #background: Job[] = [];
  #serial = 0;
  #closed = false;

  constructor(
    private readonly threads = availableParallelism(),
    private readonly idleMs = LOADER_IDLE_MS,
  ) {
    quietLibbpf();
  }

  /** Loader threads running now. */
  get running(): number {
    return this.#threads.length;
  }

  /** One context of `kind` for this build; `urgent`: somebody waits for it (normal priority), else a refill (idle). */
  load(caps: EmulatorCaps, kind: string, urgent: boolean): Promise<LoadedContext> {
    if (this.#closed) return Promise.reject(new VirtEbpfError('BROKER_INTERNAL', 'the broker is stopping', { remedy: 'retry once it is back' }));
    return new Promise((resolve, reject) => {
      (urgent ? this.#urgent : this.#background).push({ id: ++this.#serial, caps, kind, urgent, resolve, reject });
      this.#pump();
    });
  }

  /** Hand queued loads to free threads: urgent ones to any, a refill only to one no urgent load waits for. */
  #pump(): void {
    for (;;) {
      const refills = this.#threads.filter((x) => x.job && !x.job.urgent).length;
      const mayRefill = this.#background.length > 0 && refills < Math.max(1, this.threads - 1);
      if (this.#urgent.length === 0 && !mayRefill) return;
      const t = this.#threads.find((x) => !x.job) ?? (this.#threads.length < this.threads ? this.#start() : undefined);
      if (!t) return;
      const job = this.#urgent.shift() ?? this.#background.shift()!;
      clearTimeout(t.idle);
      t.job = job;
      this.#prioritize(t);
      t.worker.ref(); // a load in flight keeps the broker alive
      t.worker.postMessage({ id: job.id, caps: job.caps, kind: job.kind } satisfies LoadRequest);
    }
  }

  /** A thread's priority: normal for a load a request waits for, idle for a refill. */
  #prioritize(t: Thread): void {
    if (t.tid === undefined || !t.job) return;
    try {
      setPriority(t.tid, t.job.urgent ? 0 : IDLE_NICE);
    } catch {
      /* the thread is gone: #fail handles its load */
    }
  }

  #start(): Thread {
    const w = new Worker(join(__dirname, 'loader-worker.js'));
    w.unref();
    const t: Thread = { worker: w };
    this.#threads.push(t);
    w.on('message', (m: LoaderMessage) => {
      if ('tid' in m) {
        t.tid = m.tid;
        this.#prioritize(t);
        return;
      }
      const job = t.job?.id === m.id ? t.job : undefined;
      t.job = undefined;
      w.unref();
      if ('error' in m) {
        job?.reject(new VirtEbpfError((m.error.code ?? 'BPF_LOAD') as ErrorCode, m.error.message, { remedy: m.error.remedy ?? 'check `virt-ebpf doctor`', detail: m.error.detail }));
      } else {
        const fds = m.fds.map((fd) => new OwnedFd(fd));
        if (job) job.resolve({ descriptor: m.descriptor as ContextDescriptor, fds });
        else closeAll(fds); // nobody waits any more
      }
      this.#pump();
      if (!t.job) t.idle = setTimeout(() => this.#retire(t), this.idleMs).unref();
    });
    w.on('error', (e) => this.#fail(t, e));
    w.on('exit', () => this.#fail(t, new Error('a loader thread of the broker stopped')));
    return t;
  }

  /** An idle thread ends; its exit then finds it gone from the list and fails nothing. */
  #retire(t: Thread): void {
    if (t.job) return;
    const i = this.#threads.indexOf(t);
    if (i >= 0) this.#threads.splice(i, 1);
    // What the thread's isolate and libbpf freed stays in its malloc arena until trimmed.
    void t.worker.terminate().then(() => {
      if (this.#threads.length === 0) mallocTrim();
    });
  }

  #fail(t: Thread, e: Error): void {
    clearTimeout(t.idle);
    const i = this.#threads.indexOf(t);
    if (i >= 0) this.#threads.splice(i, 1);
    t.job?.reject(e);
    t.job = undefined;
    if (!this.#closed) this.#pump();
  }

  async close(): Promise<void> {
    this.#closed = true;
    const stopping = new VirtEbpfError('BROKER_INTERNAL', 'the broker is stopping', { remedy: 'retry once it is back' });
    for (const j of [...this.#urgent.splice(0), ...this.#background.splice(0)]) j.reject(stopping);
    await Promise.all(
      this.#threads.splice(0).map((t) => {
        clearTimeout(t.idle);
        return t.worker.terminate();
      }),
    );
  }
}
