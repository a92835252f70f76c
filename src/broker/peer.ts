/**
 * Who is on the other end of a broker connection: SO_PEERCRED's pid, uid and gid, and which
 * domain that process runs. libvirt puts a domain's uuid on its QEMU's command line (`-uuid`),
 * which the emulator wrapper shim carries too (the kernel runs it with QEMU's argv), so a
 * QEMU-account peer is bound to the domain in its /proc/PID/cmdline as it read at the process's
 * first connection (PeerDomains): it may take what was reserved for that domain and nothing
 * else. Root (libvirt's hook) is trusted with any domain.
 */
import { closeSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { close, pidfdExited, pidfdOpen, pidfdsExited, type PeerCred } from '../sys/libc';

export interface Peer extends PeerCred {
  root: boolean;
  /** the domain this process runs (its `-uuid`, lower case), if any */
  domain?: string;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function normalUuid(uuid: string | undefined): string | undefined {
  const u = uuid?.toLowerCase();
  return u && UUID.test(u) ? u : undefined;
}

/** libvirt's command lines are a few KiB; nothing past this is read (a peer chooses its argv). */
const CMDLINE_MAX = 256 * 1024;

/**
 * One read buffer for every peer of the thread (the reads are synchronous, so they never
 * overlap). Only the bytes of one read are looked at, and they are cleared after it.
 */
let cmdlineBuf: Buffer | undefined;

/** The value after the last `-uuid` (or `--uuid`) in /proc/PID/cmdline, read up to CMDLINE_MAX bytes. */
export function cmdlineUuid(pid: number): string | undefined {
  const buf = (cmdlineBuf ??= Buffer.allocUnsafe(CMDLINE_MAX));
  let n = 0;
  try {
    const fd = openSync(`/proc/${pid}/cmdline`, 'r');
    try {
      for (let r; n < buf.length && (r = readSync(fd, buf, n, buf.length - n, null)) > 0; ) n += r;
    } finally {
      closeSync(fd);
    }
  } catch {
    return undefined; // gone
  }
  // The bytes read only: the rest of the buffer is not this peer's.
  try {
    return uuidIn(buf.subarray(0, n));
  } finally {
    buf.fill(0, 0, n);
  }
}

/**
 * The value after the last `-uuid` or `--uuid` (whichever comes later, as QEMU reads it) in the
 * NUL-separated arguments `args` (/proc/PID/cmdline). Pure.
 */
export function uuidIn(args: Buffer): string | undefined {
  let found: { at: number; uuid: string } | undefined;
  for (const opt of [Buffer.from('\0-uuid\0'), Buffer.from('\0--uuid\0')]) {
    for (let at = args.indexOf(opt, 0); at >= 0; at = args.indexOf(opt, at + 1)) {
      const start = at + opt.length;
      const end = args.indexOf(0, start);
      const uuid = end > start ? normalUuid(args.subarray(start, end).toString('latin1')) : undefined;
      if (uuid && (!found || at > found.at)) found = { at, uuid };
    }
  }
  return found?.uuid;
}

/**
 * When a process started (/proc/PID/stat's starttime, in clock ticks after boot): with its pid,
 * it names one process until the host reboots. Undefined when the process is gone.
 */
export function processStart(pid: number): string | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return undefined;
  }
  // After the command name's closing parenthesis (the name itself may hold any character):
  // field 3 (state) onwards; starttime is field 22.
  const start = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  return start && /^\d+$/.test(start) ? start : undefined;
}

/** How many processes a PeerDomains holds by default: as many as the broker keeps connections. */
export const MAX_HELD_PEERS = 1024;

/** While it holds processes, how often a PeerDomains lets go of those that have ended. */
export const PEER_SWEEP_MS = 10_000;

const ESRCH = 3;

/**
 * The domain of each QEMU-account process as its /proc/PID/cmdline named it when the process
 * first connected, held with a pidfd of that process. A later connection of the same process is
 * bound to that domain without reading its cmdline again, whatever it has written over its argv
 * since: a QEMU a guest took over can write its own memory (libvirt's seccomp sandbox keeps it
 * from starting a process of its own). For a QEMU under libvirt the first connection is the
 * emulator wrapper's, before QEMU runs any guest code: its exec-plan, or, for a start that needs
 * nothing yet but will have the hot-plug shim, a hello made for this binding. Processes that
 * have ended are let go whenever a new one is taken in, and every PEER_SWEEP_MS while any is
 * held (one poll over all the pidfds). At most `max` live processes are held; past that, the one
 * seen least recently goes. Without pidfds (an old C library, a filter that denies pidfd_open)
 * every connection reads the cmdline.
 *
 * With a `store` (a directory only root may write: the broker's is `peers/` beside its socket),
 * each binding is also kept there as a file named by the pid that holds the process's start time
 * and its domain, so a broker that restarted (an upgrade, a crash) binds a process it has not
 * seen yet by what an earlier broker read, not by what the process's argv says now; one that
 * let a live process go from memory does the same. A file whose start time is not the process's
 * (its pid was taken again) is not used. Files of processes that have ended go when the broker
 * sees them end, and at start.
 */
export class PeerDomains {
  readonly #held = new Map<number, { pidfd: number; domain: string | undefined; leftFdsUnread?: boolean }>();
  #timer?: NodeJS.Timeout;

  constructor(
    private readonly max = MAX_HELD_PEERS,
    store?: string,
  ) {
    if (!(max >= 1)) throw new RangeError('PeerDomains holds at least one process');
    this.store = store && storeUsable(store) ? store : undefined;
    if (this.store) this.#pruneStore();
  }

  readonly store: string | undefined;

  /** The binding a broker kept for this process (a domain, or null for none); undefined if it kept none. */
  #recalled(pid: number, start: string): string | null | undefined {
    let kept: string;
    try {
      kept = readFileSync(join(this.store!, String(pid)), 'utf8');
    } catch {
      return undefined;
    }
    const [at, domain] = kept.trim().split(' ');
    if (at !== start) {
      this.#unkeep(pid); // another process's, whose pid this one took
      return undefined;
    }
    return domain === '-' ? null : normalUuid(domain) ?? null;
  }

  #keep(pid: number, start: string, domain: string | undefined): void {
    const tmp = join(this.store!, `.${pid}.${process.hrtime.bigint()}`);
    try {
      writeFileSync(tmp, `${start} ${domain ?? '-'}\n`, { mode: 0o600, flag: 'wx' });
      renameSync(tmp, join(this.store!, String(pid)));
    } catch {
      rmSync(tmp, { force: true }); // not kept: a broker after this one reads the process's cmdline again
    }
  }

  #unkeep(pid: number): void {
    if (!this.store) return;
    try {
      rmSync(join(this.store, String(pid)), { force: true });
    } catch {
      /* gone already */
    }
  }

  /** Remove the kept bindings of processes that ended while no broker ran. */
  #pruneStore(): void {
    let names: string[];
    try {
      names = readdirSync(this.store!);
    } catch {
      return;
    }
    for (const name of names) {
      const pid = /^\d+$/.test(name) ? Number(name) : undefined;
      try {
        if (pid === undefined) {
          rmSync(join(this.store!, name), { force: true, recursive: true }); // a temp file a crash left, or a stray entry
          continue;
        }
        const start = processStart(pid);
        if (start === undefined) this.#unkeep(pid);
        else this.#recalled(pid, start); // removes a file of an earlier holder of the pid
      } catch {
        /* left as it is: its pid is read afresh when it connects */
      }
    }
  }

  /** Processes held (one that ended stays until the next sweep). */
  get size(): number {
    return this.#held.size;
  }

  /** Live processes held with a domain (the ended ones are let go first). */
  bound(): number {
    this.#sweep();
    let n = 0;
    for (const h of this.#held.values()) if (h.domain !== undefined) n++;
    return n;
  }

  domainOf(pid: number): string | undefined {
    const held = this.#held.get(pid);
    if (held) {
      this.#held.delete(pid);
      if (!exited(held.pidfd)) {
        this.#held.set(pid, held); // seen now: last in line to go
        return held.domain;
      }
      closeQuietly(held.pidfd);
    }
    let pidfd: number;
    try {
      pidfd = pidfdOpen(pid);
    } catch (e) {
      // Gone: no domain. No pidfd to be had: read as without one.
      return (e as { fields?: { errno?: number } }).fields?.errno === ESRCH ? undefined : cmdlineUuid(pid);
    }
    const start = this.store ? processStart(pid) : undefined;
    const kept = start ? this.#recalled(pid, start) : undefined;
    const domain = kept !== undefined ? kept ?? undefined : cmdlineUuid(pid);
    // Ended meanwhile: what was read may be of a process that took its pid since.
    if (exited(pidfd)) {
      closeQuietly(pidfd);
      return undefined;
    }
    if (start && kept === undefined) this.#keep(pid, start, domain);
    this.#sweep();
    if (this.#held.size >= this.max) {
      const [oldest, o] = this.#held.entries().next().value as [number, { pidfd: number }];
      this.#held.delete(oldest);
      closeQuietly(o.pidfd);
    }
    this.#held.set(pid, { pidfd, domain });
    this.#timer ??= setTimeout(() => this.#tick(), PEER_SWEEP_MS).unref();
    return domain;
  }

  #tick(): void {
    this.#timer = undefined;
    this.#sweep();
    if (this.#held.size > 0) this.#timer = setTimeout(() => this.#tick(), PEER_SWEEP_MS).unref();
  }

  /** Let go of the processes that have ended. */
  #sweep(): void {
    if (this.#held.size === 0) return;
    const entries = [...this.#held];
    let gone: boolean[];
    try {
      gone = pidfdsExited(entries.map(([, h]) => h.pidfd));
    } catch {
      return; // cannot tell now: the next sweep, or each one's next connection, will
    }
    entries.forEach(([pid, h], i) => {
      if (!gone[i]) return;
      this.#held.delete(pid);
      closeQuietly(h.pidfd);
      this.#unkeep(pid);
    });
  }

  /**
   * A process left a reply with fds unread until the broker gave up on it (src/broker/connection.ts):
   * remembered for as long as the process lives. One the broker does not hold (no pidfd) is not.
   */
  markFdsUnread(pid: number): void {
    const held = this.#held.get(pid);
    if (held) held.leftFdsUnread = true;
  }

  /** Whether this process left fds unread (see markFdsUnread). */
  leftFdsUnread(pid: number): boolean {
    return this.#held.get(pid)?.leftFdsUnread === true;
  }

  /** Close every pidfd held (the broker stops). */
  clear(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    for (const h of this.#held.values()) closeQuietly(h.pidfd);
    this.#held.clear();
  }
}

/**
 * Whether a store may be used: made if missing, a directory (not a link) of root's that only
 * root may write, in a directory nobody but root may rename it out of (root's and not
 * writable by group or others, or sticky like /tmp). A store anybody else could write would
 * let them bind a process to any domain.
 */
function storeUsable(store: string): boolean {
  try {
    // Its directory as the broker makes its socket's (peers reach the socket through it).
    mkdirSync(dirname(store), { recursive: true, mode: 0o755 });
    try {
      mkdirSync(store, { mode: 0o700 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const st = lstatSync(store);
    const up = lstatSync(dirname(store));
    const rootOnly = (s: typeof st) => s.uid === 0 && (s.mode & 0o022) === 0;
    return st.isDirectory() && rootOnly(st) && up.isDirectory() && up.uid === 0 && ((up.mode & 0o022) === 0 || (up.mode & 0o1000) !== 0);
  } catch {
    return false;
  }
}

function exited(pidfd: number): boolean {
  try {
    return pidfdExited(pidfd);
  } catch {
    return true; // cannot tell: read it again
  }
}

function closeQuietly(fd: number): void {
  try {
    close(fd);
  } catch {
    /* ours, and closed either way */
  }
}

/** Call only for a peer the allowlist admits: it reads the peer's /proc (once per process, `domains`). */
export function identifyPeer(cred: PeerCred, domains: PeerDomains): Peer {
  if (cred.uid === 0) return { ...cred, root: true, domain: undefined };
  return { ...cred, root: false, domain: domains.domainOf(cred.pid) };
}
