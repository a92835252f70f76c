/**
 * The broker's loader thread (src/broker/loader.ts starts it): every context the broker loads
 * is loaded here, one at a time. libbpf's print hook is process-wide and calls back into the
 * thread that set it, so libbpf must only ever run on one thread of the broker: this one. It
 * tells the main thread its kernel thread id, which sets its priority (idle while it refills
 * the pool, normal while a request waits). fds belong to the process: they go back as numbers.
 */
import { parentPort } from 'node:worker_threads';
import { loadContext } from '../context';
import type { EmulatorCaps } from '../emulator';
import { threadId } from '../sys/libc';

export interface LoadRequest {
  id: number;
  caps: EmulatorCaps;
}
export type LoaderMessage =
  | { tid: number }
  | { id: number; descriptor: unknown; fds: number[] }
  | { id: number; error: { code?: string; message: string; remedy?: string; detail?: string } };

parentPort!.postMessage({ tid: threadId() } satisfies LoaderMessage);
parentPort!.on('message', (req: LoadRequest) => {
  loadContext(req.caps).then(
    (c) => parentPort!.postMessage({ id: req.id, descriptor: c.descriptor, fds: c.fds.map((f) => f.take()) } satisfies LoaderMessage),
    (e: Error & { code?: string; remedy?: string; detail?: string }) =>
      parentPort!.postMessage({ id: req.id, error: { code: e.code, message: e.message, remedy: e.remedy, detail: e.detail } } satisfies LoaderMessage),
  );
});
