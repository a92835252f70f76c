/**
 * One peer's connection to the broker, with every limit a peer could otherwise abuse:
 *
 * - framing: requests are lines; a line longer than `maxLine`, or one that does not end within
 *   `requestTimeoutMs` of its first byte, closes the connection with one error line;
 * - flow: at most `maxOutstanding` requests in flight; beyond that the connection is not read
 *   (the kernel's buffers push back on the peer) until replies have gone out;
 * - replies: written in order, each with its fds on its first byte; a peer that does not read
 *   them within `writeTimeoutMs` is cut off; a peer that has gone away costs its own
 *   connection and nothing else (no send error ever leaves this class);
 * - fds: a reply with fds must be read within `writeTimeoutMs`, and the next one waits until it
 *   is. Fds in a message the peer leaves unread are still the sender's in the kernel's count
 *   (root's: the broker's), and closing our end does not take them back; so a connection is
 *   never closed by us while such a message waits, except at that deadline, and then
 *   `onUnreadFds` hears of it (the server gives that process no more fds);
 * - idle: a connection with nothing in flight and no bytes for `idleTimeoutMs` is closed.
 *
 * Nothing here decides what a request means: `onLine` does (src/broker/server.ts).
 */
import type net from 'node:net';
import * as libc from '../sys/libc';
import { encode, Reply } from './protocol';

/** The bytes of unfinished request lines held for a group of connections (one account's, one process's), and their cap. */
export interface PendingBytes {
  used: number;
  readonly max: number;
  /** whose they are, for the refusal: "this account", "this process" */
  readonly of: string;
}

export interface ConnectionLimits {
  maxLine: number;
  /** shared by groups of connections (one account's, one process's): their unfinished lines together stay under each one's max */
  pending?: readonly PendingBytes[];
  maxOutstanding: number;
  idleTimeoutMs: number;
  requestTimeoutMs: number;
  writeTimeoutMs: number;
}

/** How long a connection we are done with may keep its end open to read our last line. */
export const LINGER_MS = 2_000;

function fdOf(sock: net.Socket): number {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' ? fd : -1;
}

export class Connection {
  readonly fd: number;
  readonly openedAt = Date.now();
  /** the line still arriving, in the pieces it came in (never rescanned) */
  #partial: Buffer[] = [];
  #partialLen = 0;
  /** complete lines not yet handed to onLine */
  #lines: string[] = [];
  /** when the first byte of the line still arriving came (0: none is) */
  #lineSince = 0;
  #outstanding = 0;
  #lastActive = Date.now();
  #writes: Promise<void> = Promise.resolve();
  #pendingWrites = 0;
  #closing = false;
  #timer?: NodeJS.Timeout;
  /** a reply with fds went out and the peer has not read it yet */
  #fdsUnread = false;
  /** resolves when the last reply with fds was read (true) or the connection went (false) */
  #fdsRead: Promise<boolean> = Promise.resolve(true);

  constructor(
    readonly sock: net.Socket,
    private readonly limits: ConnectionLimits,
    private readonly onLine: (line: string) => Promise<void>,
    private readonly onProblem: (what: string) => void,
    private readonly onUnreadFds: () => void = () => {},
  ) {
    this.fd = fdOf(sock);
    sock.on('data', (chunk: Buffer) => this.#data(chunk));
    // The peer's end of sending (a close, or a shutdown of its writing side only): node ends and
    // closes ours next. A peer that closed took our unread messages with its socket; one that
    // only shut its writing side still holds them, and is reported as leaving them unread.
    sock.on('end', () => this.#reportUnread());
    sock.on('error', () => sock.destroy());
    sock.on('close', () => {
      clearTimeout(this.#timer);
      // Gone is gone: nothing it sent is handled any more.
      this.#closing = true;
      this.#lines = [];
      this.#dropPartial();
    });
    this.#arm();
  }

  get destroyed(): boolean {
    return this.sock.destroyed;
  }

  /** The connection is going or gone: work for it is wasted (a load for a reply nobody reads). */
  get aborted(): boolean {
    return this.#closing || this.sock.destroyed;
  }

  /** Nothing in flight, nothing being written, no partial request, no fds the peer has not read. */
  get idle(): boolean {
    return this.#outstanding === 0 && this.#pendingWrites === 0 && this.#lineSince === 0 && this.#lines.length === 0 && !this.#fdsUnread;
  }

  get lastActive(): number {
    return this.#lastActive;
  }

  /** When the first byte of the request line still arriving came (0: none is arriving). */
  get lineSince(): number {
    return this.#lineSince;
  }

  /** Check the timers again in `ms` (at most one timer per connection). */
  #arm(ms = Math.min(this.limits.idleTimeoutMs, this.limits.requestTimeoutMs, 1_000)): void {
    clearTimeout(this.#timer);
    if (this.sock.destroyed) return;
    this.#timer = setTimeout(() => this.#tick(), ms);
    this.#timer.unref();
  }

  #tick(): void {
    const now = Date.now();
    if (this.#lineSince && now - this.#lineSince > this.limits.requestTimeoutMs) {
      this.onProblem('request not finished in time');
      void this.refuse(`request not finished within ${this.limits.requestTimeoutMs} ms`);
      return;
    }
    if (this.idle && now - this.#lastActive > this.limits.idleTimeoutMs) {
      this.onProblem('idle');
      this.#destroy();
      return;
    }
    this.#arm();
  }

  #data(chunk: Buffer): void {
    if (this.#closing) return;
    const now = (this.#lastActive = Date.now());
    let start = 0;
    for (let nl = chunk.indexOf(0x0a); nl >= 0; nl = chunk.indexOf(0x0a, start)) {
      const piece = chunk.subarray(start, nl);
      if (this.#tooLong(piece.length)) return;
      this.#partial.push(piece);
      this.#lines.push(Buffer.concat(this.#partial, this.#partialLen + piece.length).toString('utf8'));
      this.#dropPartial();
      start = nl + 1;
    }
    if (start < chunk.length) {
      const rest = chunk.subarray(start);
      if (this.#tooLong(rest.length)) return;
      const full = this.limits.pending?.find((p) => p.used + rest.length > p.max);
      if (full) {
        this.onProblem(`unfinished requests over the cap of ${full.of}`);
        const message = `the unfinished requests of ${full.of} hold over ${full.max} bytes`;
        void this.refuse(message, { v: 1, id: 0, ok: false, error: { code: 'BROKER_LIMIT', message, remedy: 'send each request line whole' } });
        return;
      }
      for (const p of this.limits.pending ?? []) p.used += rest.length;
      if (this.#partialLen === 0) this.#lineSince = now;
      this.#partial.push(rest);
      this.#partialLen += rest.length;
    }
    this.#drain();
  }

  /** Forget the line that was arriving, and give its bytes back to the account's count. */
  #dropPartial(): void {
    for (const p of this.limits.pending ?? []) p.used -= this.#partialLen;
    this.#partial = [];
    this.#partialLen = 0;
    this.#lineSince = 0;
  }

  /** Whether the line arriving would grow past maxLine with `more` bytes: then refused. */
  #tooLong(more: number): boolean {
    if (this.#partialLen + more <= this.limits.maxLine) return false;
    this.onProblem('request too long');
    void this.refuse(`request longer than ${this.limits.maxLine} bytes`);
    return true;
  }

  /** Hand complete lines to onLine while slots are free; stop reading while they are not. */
  #drain(): void {
    while (!this.aborted && this.#outstanding < this.limits.maxOutstanding && this.#lines.length > 0) {
      const line = this.#lines.shift()!;
      this.#outstanding++;
      this.onLine(line)
        .catch(() => this.#destroy())
        .finally(() => {
          this.#outstanding--;
          this.#lastActive = Date.now();
          this.#drain();
        });
    }
    if (this.aborted) return;
    // Backpressure: lines we cannot take yet stay in the kernel's buffers, not in ours.
    if (this.#lines.length > 0) this.sock.pause();
    else this.sock.resume();
  }

  /**
   * Send one reply (and fds with its first byte), after the replies before it. Resolves true
   * once the whole line is with the kernel; false when the peer is gone, does not read, or the
   * kernel refuses the fds — the connection is closed then. Never throws. The caller keeps
   * ownership of `fds` (the kernel dups them into the message).
   */
  send(reply: Reply, fds: readonly number[] = []): Promise<boolean> {
    const data = encode(reply);
    this.#pendingWrites++;
    const done = this.#writes.then(() => this.#write(data, fds));
    this.#writes = done.then(() => undefined);
    return done.finally(() => {
      this.#pendingWrites--;
      this.#lastActive = Date.now();
    });
  }

  async #write(data: Buffer, fds: readonly number[]): Promise<boolean> {
    if (fds.length > 0 && !(await this.#fdsRead)) return false;
    const sent = await this.#writeNow(data, fds);
    if (sent && fds.length > 0) this.#watchFds();
    return sent;
  }

  async #writeNow(data: Buffer, fds: readonly number[]): Promise<boolean> {
    const deadline = Date.now() + this.limits.writeTimeoutMs;
    let off = 0;
    let wait = 1;
    while (off < data.length) {
      if (this.sock.destroyed || this.fd < 0) return false;
      try {
        off += libc.sendmsg(this.fd, data.subarray(off), off === 0 ? fds : []);
        wait = 1;
        continue;
      } catch (e) {
        const errno = (e as { fields?: { errno?: number } }).fields?.errno;
        if (errno !== libc.EAGAIN && errno !== libc.EINTR) {
          this.onProblem(`send failed: ${(e as Error).message}`);
          this.#destroy();
          return false;
        }
      }
      if (Date.now() > deadline) {
        this.onProblem('peer does not read its replies');
        this.#destroy();
        return false;
      }
      // The peer's buffer is full: poll again soon, never spin.
      await new Promise((r) => setTimeout(r, wait));
      wait = Math.min(wait * 2, 50);
    }
    return true;
  }

  /** Watch the reply with fds just sent until the peer has read it; at writeTimeoutMs the connection goes. */
  #watchFds(): void {
    this.#fdsUnread = true;
    const deadline = Date.now() + this.limits.writeTimeoutMs;
    this.#fdsRead = new Promise<boolean>((resolve) => {
      let wait = 1;
      const check = (): void => {
        if (this.sock.destroyed) return resolve(false); // (every close has looked at what was unread)
        if (!this.#peerHasUnread()) {
          this.#fdsUnread = false;
          this.#lastActive = Date.now();
          return resolve(true);
        }
        if (Date.now() >= deadline) {
          this.onProblem('peer does not read the fds it was sent');
          this.#destroy();
          return resolve(false);
        }
        setTimeout(check, wait).unref();
        wait = Math.min(wait * 2, 50);
      };
      check();
    });
  }

  /** Close our end; a peer that left a reply with fds unread is reported first. */
  #destroy(): void {
    if (this.sock.destroyed) return;
    this.#reportUnread();
    this.sock.destroy();
  }

  /** Whether the peer has left something we sent unread (when that cannot be told: yes). */
  #peerHasUnread(): boolean {
    try {
      return libc.unreadBySocketPeer(this.fd) > 0;
    } catch {
      return true;
    }
  }

  /** If a reply with fds is still unread while our end is open, report it (once). */
  #reportUnread(): void {
    if (!this.#fdsUnread || this.sock.destroyed) return;
    this.#fdsUnread = false;
    if (this.#peerHasUnread()) this.onUnreadFds();
  }

  /** Close this connection now (the server makes room, or stops): as every close of ours, it reports fds left unread. */
  close(): void {
    this.#destroy();
  }

  /** One last error line, then close: a peer that broke the protocol or a limit gets nothing more. */
  async refuse(message: string, reply?: Reply): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    this.sock.pause();
    const line: Reply = reply ?? { v: 1, id: 0, ok: false, error: { code: 'BROKER_PROTOCOL', message, remedy: 'use a virt-ebpf client of the same version as the broker' } };
    await this.send(line);
    this.hangUp();
  }

  /**
   * Close without losing what we sent: read (and drop) what the peer still sends so its EOF is
   * seen (destroying a socket with unread input makes the peer read ECONNRESET instead of our
   * line); a peer that keeps its end open is cut off after LINGER_MS.
   */
  hangUp(): void {
    this.#closing = true;
    this.#lines = [];
    this.#dropPartial();
    if (this.sock.destroyed) return;
    this.sock.removeAllListeners('data');
    this.sock.on('data', () => {});
    this.sock.end();
    this.sock.resume();
    setTimeout(() => this.#destroy(), LINGER_MS).unref();
  }
}
