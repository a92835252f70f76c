/**
 * Real QEMU 10 processes for the status/verify tests, without a guest (-S): started through
 * `virt-ebpf exec` as libvirt-qemu (eBPF fds passed in), directly as libvirt-qemu (rss=on but
 * no way to get eBPF), or as root (QEMU loads its own program). Each has a QMP socket: its
 * greeting means the devices are realized. Always `stop()`: kills, reaps, removes the tap.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { QmpClient } from '../../src/qmp';
import { createTap, type Tap } from '../support/guest/tap';
import { lookupUser } from '../../src/sys/users';
import { gone, QEMU, REPO, tempDir } from '../harness';

export const CLI = join(REPO, 'dist/src/cli/main.js');
export const QEMU_USER = 'libvirt-qemu';

export type StartMode = 'exec' | 'user' | 'root';

export interface TestQemu {
  pid: number;
  name: string;
  uuid: string;
  mac: string;
  tap: Tap;
  /** QEMU's QMP socket (one client at a time). */
  qmpPath: string;
  argv: string[];
  output(): string;
  stop(): Promise<void>;
}

async function connectRetry(path: string, proc: ChildProcess, out: () => string): Promise<QmpClient> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`QEMU exited early (${proc.exitCode ?? proc.signalCode}):\n${out()}`);
    try {
      return await QmpClient.connect(path, { timeoutMs: 2000 });
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`QEMU did not answer on QMP: ${String(e)}\n${out()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

export async function startQemu(mode: StartMode, opts: { queues?: number; name?: string; rssNic?: boolean; extraArgs?: string[] } = {}): Promise<TestQemu> {
  const queues = opts.queues ?? 4;
  const name = opts.name ?? `vebpf-status-${mode}-${process.pid}`;
  const uuid = randomUUID();
  const mac = '52:54:00:5e:00:' + (mode === 'exec' ? '01' : mode === 'user' ? '02' : '03');
  const user = lookupUser(QEMU_USER);
  const tap = await createTap(mode === 'root' ? {} : { user: QEMU_USER });
  const dir = tempDir('virt-ebpf-status-');
  if (mode !== 'root') chownSync(dir.path, user.uid, user.gid);
  const sock = join(dir.path, 'qmp.sock');
  const qemuArgs = [
    '-name', `guest=${name},debug-threads=on`,
    '-uuid', uuid,
    '-machine', 'q35', '-accel', 'tcg', '-nodefaults', '-no-user-config', '-display', 'none', '-S',
    '-qmp', `unix:${sock},server=on,wait=off`,
    ...(opts.rssNic === false
      ? []
      : [
          '-netdev', `tap,id=hostnet0,ifname=${tap.name},script=no,downscript=no,vhost=off,queues=${queues}`,
          '-device', JSON.stringify({ driver: 'virtio-net-pci', mq: true, vectors: 2 * queues + 2, rss: true, netdev: 'hostnet0', id: 'net0', mac }),
        ]),
    ...(opts.extraArgs ?? []),
  ];
  const proc =
    mode === 'exec'
      ? spawn(process.execPath, [CLI, 'exec', '--user', QEMU_USER, '--', QEMU, ...qemuArgs], { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn(QEMU, qemuArgs, { stdio: ['ignore', 'pipe', 'pipe'], ...(mode === 'user' ? { uid: user.uid, gid: user.gid } : {}) });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  const exited = gone(proc);
  const stop = async (): Promise<void> => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    await exited;
    await tap.remove();
    dir.remove();
  };
  try {
    const qmp = await connectRetry(sock, proc, () => out);
    qmp.close();
  } catch (e) {
    await stop();
    throw e;
  }
  const pid = proc.pid!;
  const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0$/, '').split('\0');
  return { pid, name, uuid, mac, tap, qmpPath: sock, argv, output: () => out, stop };
}

/** The kernel ids behind fds of another process, read straight from /proc (independently of src/). */
export function fdinfoIds(pid: number, fds: readonly number[]): number[] {
  return fds.map((fd) => {
    const text = readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
    const m = /^(?:prog_id|map_id):\s*(\d+)$/m.exec(text);
    if (!m) throw new Error(`fd ${fd} of ${pid} is not a BPF object:\n${text}`);
    return Number(m[1]);
  });
}

/** Run the real CLI; resolves with its exit code and output. */
export function cli(args: string[], opts: { timeoutMs?: number; uid?: number } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...(opts.uid !== undefined ? { uid: opts.uid, gid: opts.uid } : {}) });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`virt-ebpf ${args.join(' ')} timed out`));
    }, timeoutMs);
    p.once('close', (code) => {
      // 'close', not 'exit': the output is whole only once its pipes have closed
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
