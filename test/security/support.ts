/**
 * Plumbing for the hostile-peer suites: the broker runs as the daemon does, in its own process
 * (`virt-ebpf broker --config FILE`), so a peer that kills it shows as a dead process instead of
 * a dead test runner; peers are test/security/peers.py processes, dropped to the account under
 * test before they connect. What the broker holds is read from its /proc.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { chmodSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { lookupUser } from '../../src/sys/users';
import { PYTHON, REPO, tempDir } from '../harness';
import { ask, until } from '../broker/support';

export const CLI = join(REPO, 'dist/src/cli/main.js');
export const PEERS = join(REPO, 'test/security/peers.py');

export interface Account {
  uid: number;
  gid: number;
}
export const ROOT: Account = { uid: 0, gid: 0 };
const qemuUser = lookupUser('libvirt-qemu');
export const QEMU_ACCOUNT: Account = { uid: qemuUser.uid, gid: qemuUser.gid };
/** a local user the broker does not serve */
export const STRANGER: Account = { uid: 65533, gid: 65533 };

export { ask, sleep, until } from '../broker/support';

/** Run peers.py as `who`; resolves with its JSON line. `extraArgv` lands in its /proc cmdline only. */
export function hostile(who: Account, socket: string, action: string, args: string[] = [], opts: { extraArgv?: string[]; timeoutMs?: number } = {}): Promise<any> {
  return new Promise((resolve, reject) => {
    const argv = [PEERS, String(who.uid), String(who.gid), socket, action, ...args, ...(opts.extraArgv ? ['--', ...opts.extraArgv] : [])];
    const child = spawn(PYTHON, argv, { stdio: ['ignore', 'pipe', 'pipe'], timeout: opts.timeoutMs ?? 120_000, killSignal: 'SIGKILL' });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => (stdout += c));
    child.stderr.on('data', (c) => (stderr += c));
    child.on('error', reject);
    child.on('close', (code) => {
      const last = stdout.trim().split('\n').pop();
      if (code !== 0 || !last) return reject(new Error(`peer ${action} exited ${code}: ${stderr.trim().split('\n').pop()}`));
      resolve(JSON.parse(last));
    });
  });
}

export interface BrokerProcess {
  proc: ChildProcess;
  socket: string;
  dir: string;
  /** everything the broker logged so far */
  log(): string;
  alive(): boolean;
  /** the broker answers hello to root */
  answers(): Promise<boolean>;
  /** BPF programs and maps the broker process holds open */
  bpfObjects(): { progs: number; maps: number };
  /** open fds of the broker process, by kind */
  fds(): { total: number; sockets: number; bpf: number };
  rssKiB(): number;
  /** CPU time (user + system, all its threads) the broker has used, in seconds */
  cpuSeconds(): number;
  stop(): Promise<void>;
}

/**
 * Start `virt-ebpf broker` with this config (socket and cache in a scratch directory unless
 * given). `qemuConf` names the libvirt qemu.conf it reads the QEMU account from. `nodeFlags` go
 * on node's command line before the CLI.
 */
export async function startBrokerProcess(config: Record<string, unknown> = {}, opts: { env?: Record<string, string>; nodeFlags?: string[] } = {}): Promise<BrokerProcess> {
  const dir = tempDir('virt-ebpf-sec-');
  chmodSync(dir.path, 0o755);
  const socket = join(dir.path, 'broker.sock');
  const cfgPath = join(dir.path, 'config.json');
  writeFileSync(cfgPath, JSON.stringify({ socket, cacheDir: join(dir.path, 'cache'), ...config }));
  const proc = spawn(process.execPath, [...(opts.nodeFlags ?? []), CLI, 'broker', '--config', cfgPath], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
  let log = '';
  proc.stdout!.on('data', (c) => (log += c));
  proc.stderr!.on('data', (c) => (log += c));
  let exited = false;
  proc.on('exit', () => (exited = true));
  const fdTargets = () => {
    const out: string[] = [];
    for (const n of readdirSync(`/proc/${proc.pid}/fd`)) {
      try {
        out.push(readlinkSync(`/proc/${proc.pid}/fd/${n}`));
      } catch {
        /* closed meanwhile */
      }
    }
    return out;
  };
  const b: BrokerProcess = {
    proc,
    socket,
    dir: dir.path,
    log: () => log,
    alive: () => !exited,
    answers: async () => {
      if (exited) return false;
      try {
        return (await ask(socket, { v: 1, id: 7, op: 'hello' }, 10_000)).ok === true;
      } catch {
        return false;
      }
    },
    bpfObjects: () => {
      const t = fdTargets();
      return { progs: t.filter((x) => x === 'anon_inode:bpf-prog').length, maps: t.filter((x) => x === 'anon_inode:bpf-map').length };
    },
    fds: () => {
      const t = fdTargets();
      return { total: t.length, sockets: t.filter((x) => x.startsWith('socket:')).length, bpf: t.filter((x) => x.startsWith('anon_inode:bpf')).length };
    },
    rssKiB: () => {
      const m = /VmRSS:\s+(\d+) kB/.exec(require('node:fs').readFileSync(`/proc/${proc.pid}/status`, 'utf8'));
      return m ? Number(m[1]) : 0;
    },
    cpuSeconds: () => {
      const f = require('node:fs').readFileSync(`/proc/${proc.pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
      return (Number(f[11]) + Number(f[12])) / 100;
    },
    stop: async () => {
      if (!exited) {
        proc.kill('SIGTERM');
        await until('the broker to stop', () => exited, 10_000).catch(() => proc.kill('SIGKILL'));
      }
      dir.remove();
    },
  };
  await until(`the broker to answer on ${socket} (log: ${log.slice(-300)})`, () => b.answers(), 20_000, 100);
  return b;
}

/** A request line as a peer sends it. */
export function line(body: Record<string, unknown>, id = 1): string {
  return JSON.stringify({ v: 1, id, ...body });
}

/** The broker is alive and answering; the message carries its log tail otherwise. */
export async function assertServing(b: BrokerProcess, after: string): Promise<void> {
  if (!(await b.answers())) {
    throw new Error(`the broker stopped answering after ${after} (alive: ${b.alive()}); log tail:\n${b.log().slice(-1500)}`);
  }
}
