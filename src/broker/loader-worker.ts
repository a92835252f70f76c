/**
 * One of the broker's loader threads (src/broker/loader.ts starts them): every context the
 * broker loads is loaded on one of these, one at a time each. libbpf runs here without its print
 * callback (it is process-wide, and a callback belongs to one thread); the verifier's log comes
 * through the program's log buffer. It tells the main thread its kernel thread id, which sets
 * its priority (idle for a refill, normal while a request waits). fds belong to the process:
 * they go back as numbers.
 */
import { parentPort } from 'node:worker_threads';
import { quietLibbpf } from '../bpf/libbpf';
import { loadContext } from '../context';
import type { EmulatorCaps } from '../emulator';
import { threadId } from '../sys/libc';

export interface LoadRequest {
  id: number;
  caps: EmulatorCaps;
  /** the context's kind (argv/handoff.ts) */
  kind: string;
}
export type LoaderMessage =
  | { tid: number }
  | { id: number; descriptor: unknown; fds: number[] }
  | { id: number; error: { code?: string; message: string; remedy?: string; detail?: string } };

quietLibbpf();
parentPort!.postMessage({ tid: threadId() } satisfies LoaderMessage);
parentPort!.on('message', (req: LoadRequest) => {
  loadContext(req.caps, req.kind).then(
    (c) => parentPort!.postMessage({ id: req.id, descriptor: c.descriptor, fds: c.fds.map((f) => f.take()) } satisfies LoaderMessage),
    (e: Error & { code?: string; remedy?: string; detail?: string }) =>
      parentPort!.postMessage({ id: req.id, error: { code: e.code, message: e.message, remedy: e.remedy, detail: e.detail } } satisfies LoaderMessage),
  );
});
