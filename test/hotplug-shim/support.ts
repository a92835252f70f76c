/**
 * A QEMU started the way libvirt starts one, minus libvirt: the monitor is a listening unix
 * socket whose fd QEMU's command line names (`-chardev socket,id=charmonitor,fd=N,server=on`),
 * the emulator wrapper shim runs first as the QEMU account, and "libvirt" is our own QMP
 * client connecting to that socket. Everything else is real: QEMU 10.0.2, the broker, BPF, taps.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gone, REPO, QEMU } from '../harness';
import type { QmpClient } from '../../src/qmp';
import * as libc from '../../src/sys/libc';
import { createTap, type Tap } from '../support/guest/tap';
import { sleep, until } from '../broker/support';
import { isShimMapping } from '../../src/doctor/hotplug-shim';
import { renderWrapper } from '../../src/install/wrapper-script';

export const WRAPPER_SHIM = join(REPO, 'dist/shims/vebpf-wrapper');
const PYTHON = '/usr/bin/python3';
const MONITOR_FD = 30;

// Binds the monitor socket as libvirt does (root, then chowned), drops to the QEMU account,
// and execs the emulator wrapper (whose #! is the wrapper shim) with the listening socket at MONITOR_FD.
const LAUNCHER = `
import os, socket, sys
path, uid, gid, fdnum = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path + '.new')  # the path appears only once it listens: a connect never finds it bound but not listening
s.listen(8)
os.chown(path + '.new', uid, gid)
os.rename(path + '.new', path)
os.dup2(s.fileno(), fdnum)
s.close()
os.set_inheritable(fdnum, True)
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
os.execv(sys.argv[5], sys.argv[5:])
`;

export interface DomainQemu {
  pid: number;
  monitor: string;
  child: ChildProcess;
  /** QEMU's stderr so far (the domain log, where the shim writes too) */
  log(): string;
  kill(): Promise<void>;
}

export interface DomainQemuOptions {
  dir: string;
  uid: number;
  gid: number;
  uuid: string;
  name: string;
  broker: string;
  stateDir: string;
  /** extra QEMU arguments (devices present at start) */
  extra?: string[];
  /** the real emulator the wrapper names (default: QEMU) */
  real?: string;
  /** pcie-root-ports to hot-plug into, pci.1 … pci.N (default 5) */
  ports?: number;
  /** false: the emulator itself, without the wrapper and its shims (a host without virt-ebpf) */
  shim?: boolean;
}

export function startDomainQemu(o: DomainQemuOptions): Promise<DomainQemu> {
  const monitor = join(o.dir, `${o.name}.monitor`);
  chmodSync(o.dir, 0o755);
  // The wrapper as `virt-ebpf install` writes it (src/install/wrapper-script.ts): its #! runs the shim.
  const wrapper = join(o.dir, 'qemu-system-x86_64');
  writeFileSync(wrapper, renderWrapper({ real: o.real ?? QEMU, shim: WRAPPER_SHIM, identity: 'test' }), { mode: 0o755 });
  const args = [
    '-name', `guest=${o.name},debug-threads=on`,
    '-uuid', o.uuid,
    '-S', '-no-user-config', '-nodefaults', '-nographic',
    '-machine', 'q35,accel=tcg',
    '-m', '128',
    '-chardev', `socket,id=charmonitor,fd=${MONITOR_FD},server=on,wait=off`,
    '-mon', 'chardev=charmonitor,id=monitor,mode=control',
    ...Array.from({ length: o.ports ?? 5 }, (_, k) => k + 1).flatMap((i) => {
      const slot = 2 + Math.floor((i - 1) / 8);
      const fn = (i - 1) % 8;
      return ['-device', JSON.stringify({ driver: 'pcie-root-port', port: 15 + i, chassis: i, id: `pci.${i}`, bus: 'pcie.0', addr: `0x${slot.toString(16)}.${fn}`, ...(fn === 0 ? { multifunction: true } : {}) })];
    }),
    ...(o.extra ?? []),
  ];
  const child = spawn(PYTHON, ['-c', LAUNCHER, monitor, String(o.uid), String(o.gid), String(MONITOR_FD), o.shim === false ? o.real ?? QEMU : wrapper, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, VIRT_EBPF_BROKER_SOCKET: o.broker, VIRT_EBPF_DOMAIN_STATE_DIR: o.stateDir },
  });
  let log = '';
  child.stderr!.on('data', (c) => (log += c));
  const exited = gone(child);
  return (async () => {
    await until('the monitor socket to exist', () => existsSync(monitor), 10_000, 20);
    return {
      pid: child.pid!,
      monitor,
      child,
      log: () => log,
      async kill() {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
        await exited;
      },
    };
  })();
}

/** The eBPF objects a process holds: counts of bpf-prog and bpf-map fds. */
export function bpfFdsOf(pid: number): { progs: number; maps: number } {
  let progs = 0;
  let maps = 0;
  for (const name of readdirSync(`/proc/${pid}/fd`)) {
    let t = '';
    try {
      t = readlinkSync(`/proc/${pid}/fd/${name}`);
    } catch {
      continue;
    }
    if (t === 'anon_inode:bpf-prog') progs++;
    if (t === 'anon_inode:bpf-map') maps++;
  }
  return { progs, maps };
}

export function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) Z /.test(stat);
  } catch {
    return false;
  }
}

/**
 * What libvirt does for a tap NIC before its device_add: open each queue of a fresh tap (owned
 * by the QEMU account), `getfd` each over the monitor, `netdev_add` naming them. The tap is
 * pushed to `taps` for the caller to remove. Returns how long the netdev_add took, in ms.
 */
export async function addNetdev(c: QmpClient, id: string, queues: number, taps: Tap[]): Promise<number> {
  const tap = await createTap({ user: 'libvirt-qemu' });
  taps.push(tap);
  const names: string[] = [];
  for (let i = 0; i < queues; i++) {
    const fd = libc.openTapQueue(tap.name);
    try {
      await c.execute('getfd', { fdname: `fd-${id}-${i}` }, { fds: [fd] });
    } finally {
      libc.close(fd);
    }
    names.push(`fd-${id}-${i}`);
  }
  const t0 = process.hrtime.bigint();
  await c.execute('netdev_add', { type: 'tap', id, fds: names.join(':'), vhost: false });
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

/** The hot-plug shim's share of a process's memory in KiB (its mappings in /proc/PID/smaps): resident, and proportional. */
export function shimMemoryKiB(pid: number): { rss: number; pss: number } {
  const maps = readFileSync(`/proc/${pid}/smaps`, 'utf8').split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/).filter((m) => isShimMapping(m.split('\n')[0]));
  const sum = (k: string) => maps.reduce((n, m) => n + Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(m)?.[1] ?? 0), 0);
  return { rss: sum('Rss'), pss: sum('Pss') };
}

export { sleep, until };
