/**
 * Running a seed-000 eBPF RSS helper: `HELPER --fd 3`, where fd 3 is one end of a socketpair.
 * The helper loads the eBPF context with its privileges, sends ONE message (1 payload byte plus
 * one SCM_RIGHTS control message) and exits 0. The fds are an opaque ordered list: the helper
 * and its QEMU come from one build and only they know what each fd is.
 *
 * Order matters for safety: trust (who could have replaced the file) before stamp (is it the
 * right build) before exec. Every path ends with the child reaped and every received fd either
 * returned to the caller or closed.
 *
 * We wait for the exit and only then take the message, non-blocking. A blocking receive on a
 * worker thread (recvFdsAsync + SO_RCVTIMEO) was the first design, but errno is thread-local
 * and is read back on the main thread, so its timeout (EAGAIN) arrives as "errno 0".
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { setPriority } from 'node:os';
import { VirtEbpfError, isVirtEbpfError, tail } from '../errors';
import { closeAll, OwnedFd } from '../fdpass';
import * as libc from '../sys/libc';
import { assertTrustedExecutable } from '../sys/trust';
import { verifyStamp } from './stamp';

export interface RunHelperOptions {
  /** the emulator the fds are for: the helper must carry its build stamp */
  emulatorPath: string;
  /** budget for the whole run, until the fds arrived and the helper exited; default 10 000 ms */
  timeoutMs?: number;
  /** how many fds the caller accepts; default 1..16 (the seed's v2 sends 2, other postings 4) */
  expectFds?: { min: number; max: number };
  /** the helper's nice (a pool refill's 19), set as soon as it is spawned; default: the broker's */
  nice?: number;
}

/** fd number the helper gets its socket on (the first slot after stdio) */
const HELPER_FD = 3;
/** a privileged child gets a known environment, not ours (no LD_PRELOAD, no odd PATH) */
const HELPER_ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' };
/** receive buffer: generous, so a misbehaving helper is reported by count, not by truncation */
const MAX_RECV_FDS = 64;
const STDERR_KEEP = 16 * 1024;
/** after exit, how long stderr may take to drain (a grandchild could hold it open forever) */
const STDERR_GRACE_MS = 300;
const REAP_AFTER_KILL_MS = 5_000;

interface ChildEnd {
  code: number | null;
  signal: NodeJS.Signals | null;
  spawnError?: Error;
}

const TIMEOUT = Symbol('timeout');

export async function runHelper(helperPath: string, opts: RunHelperOptions): Promise<OwnedFd[]> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const expect = opts.expectFds ?? { min: 1, max: 16 };
  const helper = trustedHelper(helperPath);
  await verifyStamp(helper, opts.emulatorPath);

  // Both ends close-on-exec: spawn dup2()s the child's end onto fd 3 (which clears the flag
  // there only); ours never reaches the helper or any other child started meanwhile.
  const [ours, theirs] = libc.socketpair(libc.SOCK_STREAM, true);
  try {
    let child: ChildProcess;
    try {
      child = spawn(helper, ['--fd', String(HELPER_FD)], {
        stdio: ['ignore', 'ignore', 'pipe', theirs],
        env: HELPER_ENV,
        // own process group, so a timeout also kills whatever the helper started
        detached: true,
      });
    } catch (e) {
      throw failed(helper, `could not start: ${(e as Error).message}`, '', e);
    } finally {
      // Only the child may hold the other end, or we would never see EOF when it dies.
      libc.close(theirs);
    }
    if (opts.nice !== undefined && child.pid !== undefined) {
      try {
        setPriority(child.pid, opts.nice);
      } catch {
        /* it is gone already: collect() reports how it ended */
      }
    }
    return await collect(helper, child, ours, timeoutMs, expect);
  } finally {
    // Also disposes of anything still queued on it: fds in flight are released by the kernel.
    libc.close(ours);
  }
}

/**
 * Wait for the helper to exit, then take its message from our end of the socket: the message
 * (and the fds in flight) stays queued after the sender is gone, so no blocking receive is ever
 * needed, and a helper that never exits cannot leave a receive pending on a closed fd.
 */
async function collect(helper: string, child: ChildProcess, sock: number, timeoutMs: number, expect: { min: number; max: number }): Promise<OwnedFd[]> {
  const watched = watchChild(child);
  const end = await within(watched.ended, timeoutMs);
  if (end === TIMEOUT) {
    await killAndReap(child, watched.ended);
    throw new VirtEbpfError('HELPER_TIMEOUT', `helper ${helper} did not exit within ${timeoutMs} ms and was killed`, {
      remedy: 'run the helper by hand with --fd to see where it stalls; raise the timeout if this host is slow',
      detail: watched.stderr() || undefined,
      fields: { helper, timeoutMs },
    });
  }
  if (end.spawnError) throw failed(helper, `could not start: ${end.spawnError.message}`, watched.stderr(), end.spawnError);
  if (end.code !== 0) {
    const how = end.signal ? `was killed by ${end.signal}` : `exited with code ${end.code}`;
    throw failed(helper, how, watched.stderr());
  }

  const msg = takeMessage(sock);
  if (msg === 'held-open') {
    // Exited, yet something still holds the other end: a process it left behind. It must not
    // outlive the run with a channel into us.
    killGroup(child);
    throw new VirtEbpfError('HELPER_NO_FDS', `helper ${helper} exited without sending fds and left a process holding its socket (killed)`, {
      remedy: 'the program does not speak the helper --fd protocol; use the helper that query-helper-paths names for this QEMU',
      detail: watched.stderr() || undefined,
      fields: { helper },
    });
  }
  if (msg === 'too-many') throw failed(helper, `sent more than ${MAX_RECV_FDS} fds`, watched.stderr());
  const fds = msg?.fds ?? [];
  if (fds.length === 0) {
    const what = msg ? 'sent a message without fds' : 'exited successfully without sending fds';
    throw new VirtEbpfError('HELPER_NO_FDS', `helper ${helper} ${what}`, {
      remedy: 'the program does not speak the helper --fd protocol; use the helper that query-helper-paths names for this QEMU',
      detail: watched.stderr() || undefined,
      fields: { helper },
    });
  }
  if (fds.length < expect.min || fds.length > expect.max) {
    closeAll(fds);
    const want = expect.min === expect.max ? `${expect.min}` : `${expect.min}..${expect.max}`;
    throw failed(helper, `sent ${fds.length} fds, expected ${want}`, watched.stderr());
  }
  return fds;
}

/**
 * One queued message, without waiting: null at EOF (nothing was sent), 'held-open' when no
 * message is queued but the other end is still open somewhere.
 */
function takeMessage(sock: number): { payload: Buffer; fds: OwnedFd[] } | null | 'held-open' | 'too-many' {
  for (;;) {
    let r: libc.Received;
    try {
      // synchronous and non-blocking: errno is read on the thread that made the call
      r = libc.recvmsg(sock, 16, MAX_RECV_FDS, libc.MSG_CMSG_CLOEXEC | libc.MSG_DONTWAIT);
    } catch (e) {
      if (isVirtEbpfError(e, 'SYSCALL') && e.fields.errno === libc.EINTR) continue;
      if (isVirtEbpfError(e, 'SYSCALL') && e.fields.errno === libc.EAGAIN) return 'held-open';
      throw e;
    }
    const fds = r.fds.map((f) => new OwnedFd(f));
    if (r.truncated) {
      closeAll(fds);
      return 'too-many';
    }
    return r.bytes === 0 && fds.length === 0 ? null : { payload: r.data, fds };
  }
}

function trustedHelper(path: string): string {
  if (!existsSync(path)) {
    throw new VirtEbpfError('HELPER_NOT_FOUND', `eBPF RSS helper ${path} does not exist`, {
      remedy: 'install the helper that query-helper-paths reports for this QEMU, or reinstall QEMU',
      fields: { path },
    });
  }
  return assertTrustedExecutable(path, 'helper');
}

function failed(helper: string, how: string, stderr: string, cause?: unknown): VirtEbpfError {
  const lines = stderr.split('\n').map((l) => l.trim()).filter(Boolean);
  // the line that says what went wrong, rather than a runtime's trailing banner
  const last = lines.find((l) => /error|fail|cannot|denied|not permitted|invalid/i.test(l)) ?? lines.pop() ?? '';
  const hint = last ? `: ${last.length > 160 ? `${last.slice(0, 160)}…` : last}` : '';
  return new VirtEbpfError('HELPER_FAILED', `helper ${helper} ${how}${hint}`, {
    remedy: 'see the helper output in the detail; check that it belongs to this QEMU build and that this host allows eBPF (run as root, bpf() available)',
    detail: stderr ? tail(stderr, 20) : undefined,
    cause,
    fields: { helper },
  });
}

/** Resolves once the child is reaped (or could not start), with its stderr drained or given up on. */
function watchChild(child: ChildProcess): { ended: Promise<ChildEnd>; stderr(): string } {
  let err = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (s: string) => {
    err = (err + s).slice(-STDERR_KEEP);
  });
  const stderrDone = new Promise<void>((resolve) => {
    if (!child.stderr) return resolve();
    child.stderr.once('close', resolve);
    child.stderr.on('error', () => resolve());
  });
  const ended = new Promise<ChildEnd>((resolve) => {
    child.on('error', (e) => {
      // 'error' without a pid means spawn failed; after a successful spawn it only reports
      // a failed kill(), and 'exit' still follows.
      if (child.pid === undefined) resolve({ code: null, signal: null, spawnError: e });
    });
    child.once('exit', (code, signal) => {
      void within(stderrDone, STDERR_GRACE_MS).then(() => {
        child.stderr?.destroy();
        resolve({ code, signal });
      });
    });
  });
  return { ended, stderr: () => err };
}

function killGroup(child: ChildProcess): void {
  if (child.pid === undefined) return;
  // A pid number stays reserved while it is any live process's group id, so this reaches only
  // the helper's own group, even after the helper itself was reaped; an empty group is ESRCH.
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    /* group gone */
  }
}

async function killAndReap(child: ChildProcess, ended: Promise<ChildEnd>): Promise<void> {
  killGroup(child);
  // in case it moved itself out of its group
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  if ((await within(ended, REAP_AFTER_KILL_MS)) === TIMEOUT) {
    // SIGKILL not taking effect means the helper is stuck in the kernel; nothing more we can do.
    child.stderr?.destroy();
  }
}

function within<T>(p: Promise<T>, ms: number): Promise<T | typeof TIMEOUT> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => resolve(TIMEOUT), Math.max(0, ms));
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}
