/**
 * The broker loads contexts on one worker thread (src/broker/loader-worker.ts), never on its
 * main thread: the main thread keeps answering while a load runs (~70 ms of verifier time),
 * and the pool's refills run at idle priority (nice 19): whatever of a refill still overlaps a
 * `virsh start` (the pool waits for starts to settle, src/broker/pool.ts) yields to the libvirt
 * and QEMU processes that are starting. A load a request waits for (`urgent`) lifts the thread back to
 * normal priority until no such load is left.
 */
import { setPriority } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import type { EmulatorCaps } from '../emulator';
import { VirtEbpfError, type ErrorCode } from '../errors';
import { OwnedFd, closeAll } from '../fdpass';
import type { LoadedContext } from './pool';
import type { LoaderMessage, LoadRequest } from './loader-worker';
import type { ContextDescriptor } from '../context';

export const IDLE_NICE = 19;

export class Loader {
  #worker?: Worker;
  #tid?: number;
  #serial = 0;
  #urgent = 0;
  #closed = false;
  readonly #waiting = new Map<number, { urgent: boolean; resolve: (c: LoadedContext) => void; reject: (e: Error) => void }>();

  /** One context for this build; `urgent`: somebody waits for it (normal priority), else a refill (idle). */
  load(caps: EmulatorCaps, urgent: boolean): Promise<LoadedContext> {
    if (this.#closed) return Promise.reject(new VirtEbpfError('BROKER_INTERNAL', 'the broker is stopping', { remedy: 'retry once it is back' }));
    const w = this.#start();
    const id = ++this.#serial;
    if (urgent && this.#urgent++ === 0) this.#prioritize();
    return new Promise((resolve, reject) => {
      this.#waiting.set(id, { urgent, resolve, reject });
      w.ref(); // a load in flight keeps the broker alive
      w.postMessage({ id, caps } satisfies LoadRequest);
    });
  }

  /** Give the loader thread the priority it should have now: normal while a request waits, else idle. */
  #prioritize(): void {
    if (this.#tid === undefined) return;
    try {
      setPriority(this.#tid, this.#urgent > 0 ? 0 : IDLE_NICE);
    } catch {
      /* the thread is gone: #fail handles its loads */
    }
  }

  #start(): Worker {
    if (this.#worker) return this.#worker;
    const w = new Worker(join(__dirname, 'loader-worker.js'));
    w.unref();
    w.on('message', (m: LoaderMessage) => {
      if ('tid' in m) {
        this.#tid = m.tid;
        this.#prioritize();
        return;
      }
      const p = this.#waiting.get(m.id);
      this.#waiting.delete(m.id);
      if (this.#waiting.size === 0) w.unref();
      if (p?.urgent && --this.#urgent === 0) this.#prioritize();
      if ('error' in m) {
        p?.reject(new VirtEbpfError((m.error.code ?? 'BPF_LOAD') as ErrorCode, m.error.message, { remedy: m.error.remedy ?? 'check `virt-ebpf doctor`', detail: m.error.detail }));
        return;
      }
      const fds = m.fds.map((fd) => new OwnedFd(fd));
      if (p) p.resolve({ descriptor: m.descriptor as ContextDescriptor, fds });
      else closeAll(fds); // nobody waits any more (closed meanwhile)
    });
    w.on('error', (e) => this.#fail(e));
    w.on('exit', () => this.#fail(new Error('the broker\'s loader thread stopped')));
    this.#worker = w;
    return w;
  }

  #fail(e: Error): void {
    this.#worker = undefined;
    this.#tid = undefined;
    this.#urgent = 0;
    for (const p of this.#waiting.values()) p.reject(e);
    this.#waiting.clear();
  }

  async close(): Promise<void> {
    this.#closed = true;
    const w = this.#worker;
    this.#worker = undefined;
    if (w) await w.terminate();
  }
}
