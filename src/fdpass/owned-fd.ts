/**
 * An fd is an owned value that moves: `take()` hands the number on and leaves this handle
 * empty, `close()` releases it once. Double close and use-after-take are caught here rather
 * than closing somebody else's fd.
 */
import * as libc from '../sys/libc';

export class OwnedFd {
  #fd: number;

  constructor(fd: number) {
    if (!Number.isInteger(fd) || fd < 0) throw new RangeError(`not an fd: ${fd}`);
    this.#fd = fd;
  }

  get fd(): number {
    if (this.#fd < 0) throw new Error('OwnedFd used after close() or take()');
    return this.#fd;
  }

  get valid(): boolean {
    return this.#fd >= 0;
  }

  /** Give up ownership: the caller is now responsible for the number. */
  take(): number {
    const fd = this.fd;
    this.#fd = -1;
    return fd;
  }

  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    libc.close(fd);
  }
}

export function closeAll(fds: Iterable<OwnedFd>): void {
  for (const f of fds) {
    try {
      f.close();
    } catch {
      /* best effort: we are already cleaning up */
    }
  }
}
