/**
 * QMP transport: an AF_UNIX stream carrying newline-delimited JSON, plus fds.
 *
 * Reads go through Node's socket (libuv owns the fd and the event loop). Every write goes
 * through libc.sendmsg on the same fd instead of socket.write(), because an fd passed with
 * SCM_RIGHTS must ride on the bytes of the command that consumes it (`getfd`): if some writes
 * went through Node's buffered stream and others around it, bytes and fds could be reordered.
 * One ordered write queue, no exceptions.
 *
 * Framing is defensive: a line longer than `maxLineBytes` (without its newline) kills the
 * connection with QMP_LINE_TOO_LONG instead of buffering without bound.
 */
import net from 'node:net';
import * as libc from '../sys/libc';
import { VirtEbpfError } from '../errors';

/** Big enough for query-qmp-schema of a full QEMU build; small enough to bound memory. */
export const DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024;
export const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
/** A peer that stops reading for this long is treated as hung. */
export const DEFAULT_WRITE_STALL_MS = 30_000;

export interface TransportOptions {
  /** longest accepted incoming line in bytes, newline excluded (default 16 MiB) */
  maxLineBytes?: number;
  /** fail the connection when queued bytes cannot be written for this long (default 30 s) */
  writeStallMs?: number;
}

export interface ConnectOptions extends TransportOptions {
  /** default 5 s */
  timeoutMs?: number;
}

interface QueuedWrite {
  data: Buffer;
  /** our private duplicates; closed once sent or when the write fails */
  fds: number[];
  resolve(): void;
  reject(e: VirtEbpfError): void;
}

type LineListener = (line: string) => void;
type CloseListener = (reason: VirtEbpfError) => void;

function closedError(message: string, cause?: unknown): VirtEbpfError {
  return new VirtEbpfError('QMP_CLOSED', message, {
    remedy: 'the QEMU process probably exited; check its log, then retry',
    cause,
  });
}

function socketFd(socket: net.Socket): number | null {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : null;
}

export class QmpTransport {
  readonly #socket: net.Socket;
  readonly #maxLine: number;
  readonly #writeStallMs: number;
  #partial: Buffer[] = [];
  #partialLen = 0;
  #queue: QueuedWrite[] = [];
  #retry: NodeJS.Timeout | null = null;
  #stalledSince = 0;
  #closeReason: VirtEbpfError | null = null;
  #lineListeners: LineListener[] = [];
  #closeListeners: CloseListener[] = [];

  /** Wrap an already connected socket (takes ownership). */
  constructor(socket: net.Socket, opts: TransportOptions = {}) {
    this.#socket = socket;
    this.#maxLine = opts.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
    this.#writeStallMs = opts.writeStallMs ?? DEFAULT_WRITE_STALL_MS;
    socket.on('end', () => this.#fail(closedError('QMP peer closed the connection')));
    socket.on('error', (e) => this.#fail(closedError(`QMP connection failed: ${e.message}`, e)));
    socket.on('close', () => this.#fail(closedError('QMP connection closed')));
  }

  /** Take ownership of a connected AF_UNIX stream fd (e.g. one end of a socketpair). */
  static fromFd(fd: number, opts: TransportOptions = {}): QmpTransport {
    return new QmpTransport(new net.Socket({ fd, readable: true, writable: true }), opts);
  }

  static connect(path: string, opts: ConnectOptions = {}): Promise<QmpTransport> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    return new Promise((resolve, reject) => {
      const socket = net.createConnection({ path });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(
          new VirtEbpfError('QMP_TIMEOUT', `connecting to QMP socket ${path} timed out after ${timeoutMs} ms`, {
            remedy: 'check that QEMU is running and serving QMP on that socket',
            fields: { path, timeoutMs },
          }),
        );
      }, timeoutMs);
      socket.once('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        socket.destroy();
        reject(
          new VirtEbpfError('QMP_CONNECT', `cannot connect to QMP socket ${path}: ${e.code ?? e.message}`, {
            remedy: 'check the socket path and that QEMU was started with a QMP server on it',
            cause: e,
            fields: { path, errno: e.code },
          }),
        );
      });
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(new QmpTransport(socket, opts));
      });
    });
  }

  get closed(): boolean {
    return this.#closeReason !== null;
  }

  get closeReason(): VirtEbpfError | null {
    return this.#closeReason;
  }

  /** The socket starts flowing with the first listener, so no line is read before anyone listens. */
  onLine(listener: LineListener): void {
    this.#lineListeners.push(listener);
    if (this.#lineListeners.length === 1) this.#socket.on('data', (chunk: Buffer) => this.#onData(chunk));
  }

  /** Called exactly once, with why the connection ended (also for a local close()). */
  onClose(listener: CloseListener): void {
    if (this.#closeReason) queueMicrotask(() => listener(this.#closeReason!));
    else this.#closeListeners.push(listener);
  }

  /**
   * Queue one line (a newline is appended). `fds` are borrowed: they are duplicated now, so the
   * caller may close its copies as soon as this returns; the duplicates travel with the first
   * bytes of this line and are closed here.
   */
  send(line: string, fds: readonly number[] = []): Promise<void> {
    if (line.includes('\n')) return Promise.reject(new RangeError('a QMP line cannot contain a newline'));
    if (this.#closeReason) return Promise.reject(this.#closeReason);
    const dups: number[] = [];
    try {
      for (const fd of fds) dups.push(libc.dupCloexec(fd));
    } catch (e) {
      dups.forEach((d) => libc.close(d));
      return Promise.reject(e);
    }
    return new Promise((resolve, reject) => {
      this.#queue.push({ data: Buffer.from(line + '\n', 'utf8'), fds: dups, resolve, reject });
      if (this.#queue.length === 1) this.#flush();
    });
  }

  close(): void {
    this.#fail(closedError('QMP connection closed locally'));
  }

  #flush(): void {
    this.#retry = null;
    while (this.#queue.length > 0 && !this.#closeReason) {
      const head = this.#queue[0];
      const fd = this.#socket.destroyed ? null : socketFd(this.#socket);
      if (fd === null) return this.#fail(closedError('QMP socket is gone'));
      let n: number;
      try {
        n = libc.sendmsg(fd, head.data, head.fds, libc.MSG_NOSIGNAL | libc.MSG_DONTWAIT);
      } catch (e) {
        const errno = e instanceof VirtEbpfError ? e.fields.errno : undefined;
        if (errno === libc.EINTR) continue;
        if (errno === libc.EAGAIN) return this.#waitWritable();
        return this.#fail(closedError(`QMP write failed: ${(e as Error).message}`, e));
      }
      this.#stalledSince = 0;
      if (head.fds.length > 0) {
        // The kernel took its own references with the first byte; ours are no longer needed.
        head.fds.forEach((d) => libc.close(d));
        head.fds = [];
      }
      if (n < head.data.length) {
        head.data = head.data.subarray(n);
        continue;
      }
      this.#queue.shift();
      head.resolve();
    }
  }

  /** Non-blocking socket is full: poll again shortly (libuv offers no writable callback for an fd it does not write to). */
  #waitWritable(): void {
    const now = Date.now();
    if (this.#stalledSince === 0) this.#stalledSince = now;
    if (now - this.#stalledSince > this.#writeStallMs) {
      return this.#fail(
        new VirtEbpfError('QMP_TIMEOUT', `QMP peer stopped reading for ${this.#writeStallMs} ms`, {
          remedy: 'the QEMU process is hung; check it with a debugger or kill it',
        }),
      );
    }
    const delay = Math.min(50, Math.max(1, (now - this.#stalledSince) >> 2));
    this.#retry = setTimeout(() => this.#flush(), delay);
  }

  #onData(chunk: Buffer): void {
    let start = 0;
    while (!this.#closeReason) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl < 0) break;
      let line: Buffer = chunk.subarray(start, nl);
      if (this.#partialLen > 0) {
        line = Buffer.concat([...this.#partial, line]);
        this.#partial = [];
        this.#partialLen = 0;
      }
      start = nl + 1;
      if (line.length > this.#maxLine) return this.#tooLong(line.length);
      // QEMU ends lines with \r\n.
      const end = line.length > 0 && line[line.length - 1] === 0x0d ? line.length - 1 : line.length;
      const text = line.toString('utf8', 0, end);
      if (text.trim() === '') continue;
      for (const l of this.#lineListeners) {
        if (this.#closeReason) return;
        l(text);
      }
    }
    if (this.#closeReason || start >= chunk.length) return;
    const rest = chunk.subarray(start);
    this.#partialLen += rest.length;
    if (this.#partialLen > this.#maxLine) return this.#tooLong(this.#partialLen);
    this.#partial.push(rest);
  }

  #tooLong(len: number): void {
    this.#fail(
      new VirtEbpfError('QMP_LINE_TOO_LONG', `QMP peer sent a line longer than ${this.#maxLine} bytes (${len} so far)`, {
        remedy: 'the peer is not a well-behaved QMP server; if it is QEMU, raise maxLineBytes',
        fields: { maxLineBytes: this.#maxLine, length: len },
      }),
    );
  }

  #fail(reason: VirtEbpfError): void {
    if (this.#closeReason) return;
    this.#closeReason = reason;
    if (this.#retry) clearTimeout(this.#retry);
    this.#retry = null;
    this.#partial = [];
    this.#partialLen = 0;
    this.#socket.destroy();
    const queued = this.#queue;
    this.#queue = [];
    for (const w of queued) {
      w.fds.forEach((d) => libc.close(d));
      w.reject(reason);
    }
    const listeners = this.#closeListeners;
    this.#closeListeners = [];
    for (const l of listeners) l(reason);
  }
}
