/**
 * Boot the guest fixture under plain QEMU (TCG) with a multiqueue virtio-net NIC on a real tap,
 * the serial console on QEMU's stdio. For tests; libvirt-driven guests reuse GuestConsole and
 * guestCmdline with their own transport. Always `close()` (it kills, reaps and deletes the tap).
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { GuestError } from './error';
import { tail } from '../../../src/errors';
import { guestCmdline, type GuestCmdlineOptions } from './cmdline';
import type { GuestFixture } from './fixture';
import { GuestConsole } from './session';
import { createTap, type TapOptions } from './tap';

export interface BootOptions extends GuestCmdlineOptions {
  fixture: Pick<GuestFixture, 'kernel' | 'initrd'>;
  /** Default /usr/bin/qemu-system-x86_64. */
  qemu?: string;
  /** Queue pairs of the tap and the NIC (default 4). */
  queues?: number;
  /**
   * vCPUs (default: `queues`). Linux 6.1's virtio_net records the queue-pair count it probed
   * with (min(queues, CPUs)) in its RSS state and sends that as max_tx_vq with every
   * `ethtool -X`; QEMU then shrinks to that many pairs. With fewer CPUs than queues, RSS
   * would steer everything to queue 0 while the guest still reports all queues.
   */
  smp?: number;
  /** virtio-net `rss` (default true). */
  rss?: boolean;
  /** Guest MAC (default 52:54:00:12:34:56, QEMU's own default). */
  mac?: string;
  /** Extra `key=value` properties for the virtio-net device. */
  deviceProps?: readonly string[];
  /**
   * eBPF RSS fds of this process, [program, configuration, key, table] (an RssContext's), for
   * QEMU to use instead of loading its own program: QEMU inherits them as fds 3–6 and the
   * device names them in `ebpf-rss-fds` (then written as JSON: a list has no key=value form).
   */
  ebpfRssFds?: readonly number[];
  /** Extra QEMU arguments. */
  qemuArgs?: readonly string[];
  memoryMb?: number;
  tap?: TapOptions;
  /** Until READY (or power-off when then='poweroff'); default 90 s. */
  readyTimeoutMs?: number;
  log?: (line: string) => void;
}

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface BootedGuest {
  readonly console: GuestConsole;
  readonly tap: string;
  readonly pid: number;
  readonly argv: readonly string[];
  readonly mac: string;
  /** Milliseconds from spawning QEMU to READY (or to QEMU's exit when then='poweroff'). */
  readonly bootMs: number;
  readonly exited: Promise<ExitStatus>;
  /** QEMU's stderr so far (last 64 KiB). */
  stderr(): string;
  /** `poweroff -f` in the guest and wait for QEMU to exit; kills it after the timeout. */
  poweroff(timeoutMs?: number): Promise<ExitStatus>;
  /** Kill QEMU if it still runs, reap it, delete the tap. Idempotent. */
  close(): Promise<void>;
}

export const DEFAULT_MAC = '52:54:00:12:34:56';

/** The QEMU argv for the fixture. Pure. */
export function fixtureQemuArgs(o: {
  kernel: string;
  initrd: string;
  append: string;
  tap: string;
  queues: number;
  rss: boolean;
  mac: string;
  memoryMb: number;
  smp: number;
  deviceProps?: readonly string[];
  /** QEMU's fd numbers (as strings) for `ebpf-rss-fds`; switches the device to JSON. */
  ebpfRssFds?: readonly string[];
  qemuArgs?: readonly string[];
}): string[] {
  const props = [
    'netdev=n0',
    `mac=${o.mac}`,
    ...(o.queues > 1 ? ['mq=on', `vectors=${2 * o.queues + 2}`] : []),
    `rss=${o.rss ? 'on' : 'off'}`,
    ...(o.deviceProps ?? []),
  ];
  const device = o.ebpfRssFds ? jsonDevice(props, o.ebpfRssFds) : ['virtio-net-pci', ...props].join(',');
  return [
    '-machine', 'q35,accel=tcg',
    '-m', String(o.memoryMb),
    '-smp', String(o.smp),
    '-no-user-config', '-nodefaults', '-display', 'none', '-no-reboot',
    // signal=off: bytes we write must never be taken as Ctrl-C by QEMU.
    '-chardev', 'stdio,id=con0,signal=off',
    '-serial', 'chardev:con0',
    '-kernel', o.kernel,
    '-initrd', o.initrd,
    '-append', o.append,
    '-netdev', `tap,id=n0,ifname=${o.tap},script=no,downscript=no,vhost=off,queues=${o.queues}`,
    '-device', device,
    ...(o.qemuArgs ?? []),
  ];
}

/** The fixture's device as JSON: on/off become booleans and digits numbers, as QEMU's JSON form wants. */
function jsonDevice(props: readonly string[], fds: readonly string[]): string {
  const o: Record<string, unknown> = { driver: 'virtio-net-pci' };
  for (const p of props) {
    const [k, v] = [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)];
    o[k] = v === 'on' ? true : v === 'off' ? false : /^\d+$/.test(v) ? Number(v) : v;
  }
  o['ebpf-rss-fds'] = [...fds];
  return JSON.stringify(o);
}

export async function bootGuest(opts: BootOptions): Promise<BootedGuest> {
  const append = guestCmdline(opts);
  const queues = opts.queues ?? 4;
  const mac = opts.mac ?? DEFAULT_MAC;
  const qemu = opts.qemu ?? '/usr/bin/qemu-system-x86_64';
  const tap = await createTap(opts.tap);
  const argv = fixtureQemuArgs({
    kernel: opts.fixture.kernel,
    initrd: opts.fixture.initrd,
    append,
    tap: tap.name,
    queues,
    rss: opts.rss ?? true,
    mac,
    memoryMb: opts.memoryMb ?? 256,
    smp: opts.smp ?? queues,
    deviceProps: opts.deviceProps,
    ebpfRssFds: opts.ebpfRssFds?.map((_, i) => String(3 + i)),
    qemuArgs: opts.qemuArgs,
  });

  const started = performance.now();
  // Extra stdio entries become the child's fds 3, 4, …; the first three stay pipes.
  const child = spawn(qemu, argv, { stdio: ['pipe', 'pipe', 'pipe', ...(opts.ebpfRssFds ?? [])] }) as ChildProcessWithoutNullStreams;
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d: string) => {
    stderr = (stderr + d).slice(-65536);
  });
  // QEMU may die while we write; the console reports that, the write must not throw.
  child.stdin.on('error', () => undefined);
  let status: ExitStatus | null = null;
  const exited = new Promise<ExitStatus>((resolve) => {
    child.on('close', (code, signal) => resolve((status = { code, signal })));
    child.on('error', (e) => {
      stderr += `\n${e.message}`;
      if (child.pid === undefined) resolve((status = { code: null, signal: null }));
    });
  });
  // Last resort if the test process dies without close() (an uncaught error still runs
  // 'exit' handlers, synchronously): leave neither QEMU nor the tap behind.
  const killOnExit = (): void => {
    if (status === null) child.kill('SIGKILL');
    tap.removeSync();
  };
  process.once('exit', killOnExit);

  const describeEnd = (): string => `${tail(stderr, 20)}${status ? `\nexit: code=${status.code} signal=${status.signal}` : ''}`;
  const console = new GuestConsole(child.stdout, child.stdin, { log: opts.log, describeEnd });

  let closing: Promise<void> | null = null;
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      if (status === null) child.kill('SIGKILL');
      await exited;
      process.removeListener('exit', killOnExit);
      await tap.remove();
    })());

  try {
    const timeout = opts.readyTimeoutMs ?? 90_000;
    if (opts.then === 'poweroff') {
      await console.waitFor((e) => e.kind === 'poweroff', timeout, 'POWEROFF marker');
      await withTimeout(exited, 30_000, 'QEMU exit after guest power-off', describeEnd);
    } else {
      await console.waitReady(timeout);
    }
  } catch (e) {
    await close();
    throw e;
  }
  const bootMs = Math.round(performance.now() - started);

  return {
    console,
    tap: tap.name,
    pid: child.pid ?? -1,
    argv,
    mac,
    bootMs,
    exited,
    stderr: () => stderr,
    async poweroff(timeoutMs = 30_000): Promise<ExitStatus> {
      if (status === null && !console.ended) console.send('@poweroff poweroff -f');
      try {
        return await withTimeout(exited, timeoutMs, 'QEMU exit after poweroff -f', describeEnd);
      } finally {
        await close();
      }
    },
    close,
  };
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string, evidence: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new GuestError('GUEST_TIMEOUT', `guest fixture: no ${what} within ${ms} ms`, { remedy: 'see the emulator output in the detail', detail: evidence() })),
      ms,
    );
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}
