/**
 * Shared test plumbing. Privileged tests do not skip silently: `needRoot()` fails the test
 * with the reason, because CI runs as root and a missing privilege is a broken setup.
 * `watchFds()` snapshots /proc/self/fd so a suite can assert it leaked nothing.
 */
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';

export const REPO = join(__dirname, '..', '..');
/**
 * Debian's Python (setup.sh installs python3), by path: a version manager's shim first on PATH
 * is a shell script, and bash takes tens of seconds over a command line of 150 000 arguments.
 */
export const PYTHON = '/usr/bin/python3';
export const QEMU = process.env.VIRT_EBPF_TEST_QEMU ?? '/usr/bin/qemu-system-x86_64';

export function needRoot(what: string): void {
  if (process.getuid?.() !== 0) {
    assert.fail(`this test needs root (${what}); run the suite as root, as CI does`);
  }
}

export function openFds(): Map<number, string> {
  const out = new Map<number, string>();
  for (const name of readdirSync('/proc/self/fd')) {
    try {
      out.set(Number(name), readlinkSync(`/proc/self/fd/${name}`));
    } catch {
      /* the fd of readdir itself vanishes */
    }
  }
  return out;
}

/** The fields of a /proc stat file after the command name: [0] state, [1] ppid, …, [16] nice. */
export function statFields(path: string): string[] {
  const stat = readFileSync(path, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/** A process's nice value (its main thread's). */
export function niceOf(pid: number): number {
  return Number(statFields(`/proc/${pid}/stat`)[16]);
}

/** The nice value of each thread of this process, by kernel thread id. */
export function threadNices(): Array<{ tid: number; nice: number }> {
  return readdirSync('/proc/self/task').map((tid) => ({ tid: Number(tid), nice: Number(statFields(`/proc/self/task/${tid}/stat`)[16]) }));
}

/**
 * Watch this process's threads from this one until a thread is seen at `nice` (true), or
 * `stop()` holds or `timeoutMs` pass (false). It looks for 20 ms at a time without yielding
 * (the work it watches runs on another thread), then lets the event loop turn once.
 */
export async function sawThreadAtNice(nice: number, stop: () => boolean | Promise<boolean>, timeoutMs = 60_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!(await stop()) && Date.now() < deadline) {
    const until = Date.now() + 20;
    while (Date.now() < until) if (threadNices().some((t) => t.nice === nice)) return true;
    await new Promise((r) => setImmediate(r));
  }
  return false;
}

/** BPF objects and BTF this process holds fds of (libbpf's own included, had it leaked them). */
export function kernelBpfFds(): number {
  return [...openFds().values()].filter((t) => /^anon_inode:(bpf|btf)/.test(t)).length;
}

/**
 * Resolves when `child` has exited and its stdio is closed here. Node's stdio pipes are socket
 * pairs, closed only after 'exit' (at 'close'), so a suite that checks `watchFds` right after
 * 'exit' can see them; a process the child started that keeps a pipe open would hold 'close'
 * back for ever, so after `graceMs` the streams are destroyed here.
 */
export function gone(child: ChildProcess, graceMs = 2000): Promise<void> {
  const closed = new Promise<void>((r) => child.once('close', () => r()));
  const exited = new Promise<void>((r) => (child.exitCode !== null || child.signalCode !== null ? r() : child.once('exit', () => r())));
  const streams = [child.stdin, child.stdout, child.stderr];
  return exited.then(async () => {
    if (streams.every((st) => st === null || st.closed)) return; // 'close' has come already
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([closed, new Promise<void>((r) => (timer = setTimeout(r, graceMs)))]);
    clearTimeout(timer);
    for (const st of streams) st?.destroy();
  });
}

/** Call at suite start; the returned function asserts no fd opened since is still open. */
export function watchFds(): () => void {
  const before = openFds();
  return () => {
    const leaked = [...openFds()].filter(([fd, target]) => before.get(fd) !== target && /anon_inode:bpf|socket:|\/dev\/net\/tun/.test(target));
    assert.deepEqual(leaked, [], `leaked fds: ${leaked.map(([f, t]) => `${f}->${t}`).join(', ')}`);
  };
}

/** A process's resident memory from /proc/PID/status, in KiB: VmRSS, RssAnon, RssFile + RssShmem (file-backed), and its thread count. */
export function processStatus(pid: number): { rssKiB: number; anonKiB: number; fileKiB: number; threads: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? NaN);
  return { rssKiB: field('VmRSS'), anonKiB: field('RssAnon'), fileKiB: field('RssFile') + field('RssShmem'), threads: field('Threads') };
}

/** How many buffers of at least `minBytes` `fn` allocates (Buffer.alloc and Buffer.allocUnsafe both). */
export async function largeAllocations(minBytes: number, fn: () => void | Promise<void>): Promise<number> {
  const { alloc, allocUnsafe } = Buffer;
  let n = 0;
  const count = <F extends (size: number, ...rest: never[]) => Buffer>(f: F): F =>
    ((size: number, ...rest: never[]) => {
      if (size >= minBytes) n++;
      return f(size, ...rest);
    }) as F;
  Buffer.alloc = count(alloc);
  Buffer.allocUnsafe = count(allocUnsafe);
  try {
    await fn();
  } finally {
    Buffer.alloc = alloc;
    Buffer.allocUnsafe = allocUnsafe;
  }
  return n;
}

export function tempDir(prefix = 'virt-ebpf-test-'): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/**
 * A directory the trust check accepts (root-owned, not group/world-writable up to /), for
 * executables the code under test must agree to run. Not under the checkout: CI may clone it
 * below a world-writable directory such as /tmp.
 */
export const TRUSTED_ROOT = '/var/lib/virt-ebpf-test';

export function trustedDir(name: string): string {
  const dir = join(TRUSTED_ROOT, name);
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  chmodSync(TRUSTED_ROOT, 0o755);
  chmodSync(dir, 0o755);
  return dir;
}
