/**
 * Plumbing for the broker suites: a real broker in this process (startBroker, the real resolver:
 * trust, probe, BPF loads), peers in their own processes (the real blocking client after
 * dropping to a uid/gid, so SO_PEERCRED sees that account), and what the broker holds, read
 * from this process's own /proc.
 */
import { spawn, execFile } from 'node:child_process';
import { chmodSync, readdirSync, readlinkSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { startBroker } from '../../src/broker/daemon';
import { validateConfig } from '../../src/broker/config';
import type { Broker, BrokerOptions } from '../../src/broker/server';
import type { RefillTiming } from '../../src/broker/pool';
import type { RequestBody } from '../../src/broker/client';
import { bpfFdInfo } from '../../src/fdpass';
import { silentLogger } from '../../src/log';
import { REPO, tempDir } from '../harness';

export const PEER = join(REPO, 'dist/test/fixtures/broker/peer.js');
export const HOLDING_PEER = join(REPO, 'dist/test/fixtures/broker/holding-peer.js');

export interface Account {
  uid: number;
  gid: number;
}
export const ROOT: Account = { uid: 0, gid: 0 };

export interface PeerFd {
  kind: 'prog' | 'map' | 'other';
  id?: number;
  type?: number;
}
export type PeerOutcome =
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  | { ok: true; reply: any; fds: PeerFd[] }
  | { ok: false; code: string; message: string };

/** Run a node script to completion, bounded in time; stdout and stderr collected. */
export function runNode(script: string, args: string[], timeoutMs = 30_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs, killSignal: 'SIGKILL' });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => (stdout += c));
    child.stderr.on('data', (c) => (stderr += c));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** One request from a peer process running as `who`; what it got, seen from inside that process. */
export async function peer(who: Account, socket: string, body: RequestBody, timeoutMs = 30_000): Promise<PeerOutcome> {
  const r = await runNode(PEER, [String(who.uid), String(who.gid), socket, JSON.stringify(body)], timeoutMs);
  if (r.code !== 0) throw new Error(`peer exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as PeerOutcome;
}

/** A peer outcome that must be a success; the failure is shown otherwise. */
export async function served(who: Account, socket: string, body: RequestBody): Promise<{ reply: any; fds: PeerFd[] }> {
  const o = await peer(who, socket, body);
  if (!o.ok) throw new Error(`peer ${who.uid}:${who.gid} was not served: ${o.code}: ${o.message}`);
  return o;
}

/**
 * One request line over an in-process connection (root), for ops whose replies carry no fds:
 * hello, status, prewarm, release. Resolves with the first reply line.
 */
export function ask(socket: string, line: string | object, timeoutMs = 30_000): Promise<any> {
  return new Promise((resolve, reject) => {
    const s = net.connect(socket);
    let buf = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no reply within ${timeoutMs} ms`));
    }, timeoutMs);
    s.on('connect', () => s.write((typeof line === 'string' ? line : JSON.stringify(line)) + '\n'));
    s.on('data', (c) => {
      buf += c.toString('utf8');
      const nl = buf.indexOf('\n');
      if (nl >= 0) {
        clearTimeout(timer);
        s.destroy();
        resolve(JSON.parse(buf.slice(0, nl)));
      }
    });
    s.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

export interface TestBroker {
  broker: Broker;
  socket: string;
  close(): Promise<void>;
}

/**
 * A broker as the daemon starts it, on a socket in its own directory (0755: unprivileged peers
 * must reach the socket). `qemuConf` defaults to a file that does not exist (libvirt's
 * defaults), so the host's qemu.conf does not decide the test.
 */
export async function startTestBroker(config: Record<string, unknown>, opts: { cacheDir: string; qemuConf?: string; refillTiming?: RefillTiming; manifest?: string; hookEnv?: BrokerOptions['hookEnv'] }): Promise<TestBroker> {
  const dir = tempDir('virt-ebpf-broker-');
  chmodSync(dir.path, 0o755);
  const socket = join(dir.path, 'broker.sock');
  const broker = await startBroker(validateConfig({ socket, cacheDir: opts.cacheDir, ...config }), {
    logger: silentLogger(),
    qemuConf: opts.qemuConf ?? join(dir.path, 'no-qemu.conf'),
    refillTiming: opts.refillTiming,
    manifest: opts.manifest,
    hookEnv: opts.hookEnv,
  });
  return {
    broker,
    socket,
    async close() {
      await broker.close();
      dir.remove();
    },
  };
}

/** The BPF objects this process (the in-process broker) holds, by kernel id. */
export function heldBpf(): { progs: Set<number>; maps: Set<number> } {
  const progs = new Set<number>();
  const maps = new Set<number>();
  for (const name of readdirSync('/proc/self/fd')) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${name}`);
    } catch {
      continue;
    }
    if (!target.startsWith('anon_inode:bpf-')) continue;
    try {
      const i = bpfFdInfo(Number(name));
      if (i.kind === 'prog') progs.add(i.id!);
      if (i.kind === 'map') maps.add(i.id!);
    } catch {
      /* closed between readdir and read */
    }
  }
  return { progs, maps };
}

export function socketsHeld(): number {
  let n = 0;
  for (const name of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${name}`).startsWith('socket:')) n++;
    } catch {
      /* gone */
    }
  }
  return n;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Poll until `check` returns true; fails with `what` after `timeoutMs`. */
export async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 15_000, everyMs = 50): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    await sleep(everyMs);
  }
}

/** Whether the kernel still has this program (bpftool exits non-zero once nobody holds it). */
export function progExists(id: number): Promise<boolean> {
  return new Promise((resolve) => {
    execFile('bpftool', ['prog', 'show', 'id', String(id)], { timeout: 10_000 }, (err) => resolve(!err));
  });
}

/** Programs are freed after an RCU grace period: poll until every one is gone. */
export async function progsGone(ids: Iterable<number>, timeoutMs = 10_000): Promise<void> {
  const list = [...ids];
  await until(`programs ${list.join(', ')} to leave the kernel`, async () => (await Promise.all(list.map(progExists))).every((e) => !e), timeoutMs, 100);
}

export function progIds(fds: PeerFd[]): number[] {
  return fds.filter((f) => f.kind === 'prog').map((f) => f.id!);
}
