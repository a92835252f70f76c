/**
 * The guest fixture as a libvirt domain: what `bootGuest` does with plain QEMU, done the way a
 * user runs a VM — define, `virt-ebpf enable`, `virsh start` — so libvirt creates the taps and
 * runs QEMU unprivileged (through our wrapper when enabled). The console is the domain's
 * serial port on a unix socket, spoken to with GuestConsole.
 *
 * Verified with libvirt 11.3 (qemu:///system):
 * - libvirtd creates the serial socket itself and passes QEMU the listening fd
 *   (`-chardev socket,fd=N,server=on,wait=off`), so the socket exists when `virsh start` returns
 *   and any directory root can write works. QEMU drops console output while nobody is
 *   connected: start paused, connect, resume, and READY cannot be missed.
 * - DAC labelling chowns `<kernel>`/`<initrd>` to the QEMU user for the run and gives them back
 *   to root on destroy; each domain gets its own copies so two runs never relabel one file.
 * - Without `<acpi/>` libvirt adds `acpi=off`; the guest still sees every vCPU, but a guest
 *   `poweroff` would then not end QEMU.
 *
 * Needs root and the system libvirtd. Always `close()`: destroy, undefine, remove the files.
 */
import { execFile, execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { connect, type Socket } from 'node:net';
import { GuestError } from './error';
import { VirtEbpfError, tail } from '../../../src/errors';
import { guestCmdline, type GuestCmdlineOptions } from './cmdline';
import { repoRoot, type GuestFixture } from './fixture';
import { GuestConsole } from './session';
import { ip } from './tap';

export const LIBVIRT_URI = 'qemu:///system';
/** Per-domain copies of the kernel and initrd, and the console socket. */
export const GUEST_IMAGES_DIR = '/var/lib/libvirt/images/virt-ebpf-guest';
const QEMU_LOG_DIR = '/var/log/libvirt/qemu';
const QEMU_RUN_DIR = '/run/libvirt/qemu';
const DEFAULT_EMULATOR = '/usr/bin/qemu-system-x86_64';

export interface LibvirtNic {
  /** `<driver queues>` (default 4). */
  queues?: number;
  /** `<driver rss='on'>` (default true). */
  rss?: boolean;
  /** `<driver rss_hash_report='on'>`: QEMU offers the guest hash reporting (default off). */
  hashReport?: boolean;
  /** Default: libvirt picks one. */
  mac?: string;
}

export interface GuestDomainXmlOptions {
  name: string;
  kernel: string;
  initrd: string;
  /** The kernel command line, e.g. from guestCmdline(). */
  cmdline: string;
  /** Where libvirt binds the serial console's unix socket. */
  consoleSocket: string;
  nics: readonly LibvirtNic[];
  /** Default: the largest queue count (the guest needs a vCPU per queue pair; scripts/guest/README.md). */
  vcpus?: number;
  memoryMb?: number;
  emulator?: string;
  /** PCIe root ports (cold-plugged NICs use some): q35 hot-plugs only into free ones. */
  hotplugSlots?: number;
}

const xmlEscape = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');

function usage(message: string): VirtEbpfError {
  return new VirtEbpfError('USAGE', message, { remedy: 'fix the libvirt guest options in the caller' });
}

/** Domain names we create, delete and build paths from: nothing a path or XML could misread. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** The guest fixture's domain XML: TCG q35, direct kernel boot, serial console on a unix socket. Pure. */
export function guestDomainXml(o: GuestDomainXmlOptions): string {
  if (!NAME.test(o.name)) throw usage(`domain name "${o.name}" must match ${NAME}`);
  if (o.nics.length === 0) throw usage('the guest domain needs at least one NIC');
  const queues = o.nics.map((n) => n.queues ?? 4);
  if (queues.some((q) => !Number.isInteger(q) || q < 1 || q > 256)) throw usage(`NIC queue counts must be 1..256, got ${queues.join(', ')}`);
  const vcpus = o.vcpus ?? Math.max(...queues);
  const nics = o.nics.map((n, i) =>
    [
      `    <interface type='ethernet'>`,
      ...(n.mac ? [`      <mac address='${xmlEscape(n.mac)}'/>`] : []),
      `      <model type='virtio'/>`,
      `      <driver queues='${queues[i]}'${n.rss ?? true ? " rss='on'" : ''}${n.hashReport ? " rss_hash_report='on'" : ''}/>`,
      `    </interface>`,
    ].join('\n'),
  );
  return [
    `<domain type='qemu'>`,
    `  <name>${xmlEscape(o.name)}</name>`,
    `  <memory unit='MiB'>${o.memoryMb ?? 256}</memory>`,
    `  <vcpu>${vcpus}</vcpu>`,
    `  <os>`,
    `    <type arch='x86_64' machine='q35'>hvm</type>`,
    `    <kernel>${xmlEscape(o.kernel)}</kernel>`,
    `    <initrd>${xmlEscape(o.initrd)}</initrd>`,
    `    <cmdline>${xmlEscape(o.cmdline)}</cmdline>`,
    `  </os>`,
    `  <features><acpi/><apic/></features>`,
    // The guest's `panic=1` reboots: end the domain instead, like bootGuest's -no-reboot.
    `  <on_poweroff>destroy</on_poweroff>`,
    `  <on_reboot>destroy</on_reboot>`,
    `  <on_crash>destroy</on_crash>`,
    `  <devices>`,
    `    <emulator>${xmlEscape(o.emulator ?? DEFAULT_EMULATOR)}</emulator>`,
    `    <controller type='usb' model='none'/>`,
    // Spare root ports need explicit indexes, after pcie-root's 0 (libvirt places the
    // cold-plugged NICs in the first ones and adds none of its own then).
    ...(o.hotplugSlots ? [`    <controller type='pci' index='0' model='pcie-root'/>`] : []),
    ...Array.from({ length: o.hotplugSlots ?? 0 }, (_, i) => `    <controller type='pci' index='${i + 1}' model='pcie-root-port'/>`),
    ...nics,
    `    <serial type='unix'>`,
    `      <source mode='bind' path='${xmlEscape(o.consoleSocket)}'/>`,
    `      <target port='0'/>`,
    `    </serial>`,
    `    <memballoon model='none'/>`,
    `  </devices>`,
    `</domain>`,
    '',
  ].join('\n');
}

export interface DomainInterface {
  /** The host side: the tap libvirt created (e.g. vnet3). */
  tap: string;
  type: string;
  source: string;
  model: string;
  mac: string;
}

/** `virsh -q domiflist NAME` (with or without its header). Pure. */
export function parseDomiflist(text: string): DomainInterface[] {
  const out: DomainInterface[] = [];
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length !== 5 || f[0] === 'Interface' || !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(f[4])) continue;
    out.push({ tap: f[0], type: f[1], source: f[2], model: f[3], mac: f[4].toLowerCase() });
  }
  return out;
}

export interface LibvirtGuestOptions extends GuestCmdlineOptions {
  /** Domain name; a domain of that name must not exist. */
  name: string;
  fixture: Pick<GuestFixture, 'kernel' | 'initrd'>;
  /** Default: one NIC, 4 queues, rss on. */
  nics?: readonly LibvirtNic[];
  vcpus?: number;
  memoryMb?: number;
  emulator?: string;
  /** Spare PCIe root ports for NICs hot-plugged later. */
  hotplugSlots?: number;
  /**
   * Run `virt-ebpf enable NAME` (the checkout's CLI) between define and start, with the policy
   * given; `false` starts the domain as defined. Default: enable with the configured policy.
   */
  enable?: false | { policy?: 'strict' | 'fallback' };
  /** Until READY; default 90 s. `0`: do not wait (the console still collects). */
  readyTimeoutMs?: number;
  log?: (line: string) => void;
  /** Called after each command the driver runs for the user to see (define, enable, start, resume). */
  onStep?: (step: { command: string; output: string; ms: number }) => void;
  /** Directory for the per-domain files (default GUEST_IMAGES_DIR). */
  imagesDir?: string;
}

export interface LibvirtGuest {
  readonly name: string;
  readonly uuid: string;
  /** QEMU's pid as libvirt recorded it (of the QEMU running now: see reconnect). */
  readonly pid: number;
  readonly console: GuestConsole;
  /** One per NIC, in XML order: the tap libvirt created and the guest's MAC. */
  readonly interfaces: readonly DomainInterface[];
  /** The XML we defined (before `enable`). */
  readonly xml: string;
  /** Milliseconds from `virsh start` to READY (0 when not waited for). */
  readonly bootMs: number;
  /** The domain log's last lines (libvirt's and QEMU's messages, the wrapper's too). */
  logTail(lines?: number): string;
  /**
   * Put a host address on a NIC's tap (e.g. "10.199.0.1/30"), after checking no interface has
   * it already (a leftover would silently take our traffic). Removed with the tap.
   */
  addHostAddress(cidr: string, nic?: number): Promise<void>;
  /**
   * After libvirt started another QEMU for the domain (`virsh restore`, a managed-save start):
   * its pid, its taps (host IPv6 off again) and a new console connection. The guest keeps
   * running from where it was: no READY to wait for.
   */
  reconnect(): Promise<void>;
  /**
   * After a migration: the domain now runs on `host` (another libvirtd), its console on
   * `consoleSocket` (the path the migrated XML gave it). Reads pid, taps and log there from now
   * on, and reconnects.
   */
  moveTo(host: LibvirtHost, consoleSocket: string): Promise<void>;
  /** Where the domain runs now (this machine's libvirtd unless moved). */
  readonly host: LibvirtHost;
  /** The serial console's unix socket of the running QEMU. */
  readonly consoleSocket: string;
  /** Destroy, undefine, remove the domain's files and log. Idempotent. */
  close(): Promise<void>;
  /** Leave the domain running after this process (closes only the console connection). */
  detach(): void;
}

/** A libvirtd the guest can run under: its URI and where it keeps pid files and QEMU logs. */
export interface LibvirtHost {
  uri: string;
  runDir: string;
  logDir: string;
}

export const THIS_HOST: LibvirtHost = { uri: LIBVIRT_URI, runDir: QEMU_RUN_DIR, logDir: QEMU_LOG_DIR };

function run(cmd: string, args: readonly string[], timeoutMs = 120_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 << 20, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (err) {
        reject(
          new GuestError('GUEST_BOOT', `${cmd} ${args.join(' ')} failed: ${tail(stderr.trim() || err.message, 3).replace(/\n/g, ' | ')}`, {
            remedy: 'see the message; libvirtd must run (scripts/setup.sh starts it) and the domain log may say more',
            detail: stderr,
            cause: err,
          }),
        );
      } else resolve(stdout);
    });
  });
}

const virsh = (...args: string[]): Promise<string> => run('virsh', ['-q', '-c', LIBVIRT_URI, ...args]);

function virshSync(...args: string[]): void {
  try {
    execFileSync('virsh', ['-q', '-c', LIBVIRT_URI, ...args], { stdio: 'ignore', timeout: 30_000 });
  } catch {
    /* best effort: already gone */
  }
}

async function domainExists(name: string): Promise<boolean> {
  try {
    await virsh('domuuid', name);
    return true;
  } catch {
    return false;
  }
}

function connectConsole(path: string, timeoutMs: number): Promise<Socket> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = (): void => {
      const s = connect(path);
      s.once('connect', () => {
        s.removeAllListeners('error');
        resolve(s);
      });
      s.once('error', (e) => {
        s.destroy();
        if (Date.now() > deadline) {
          reject(
            new GuestError('GUEST_BOOT', `cannot connect to the guest console ${path}: ${e.message}`, {
              remedy: 'check that the domain runs (`virsh list`) and see its log in /var/log/libvirt/qemu/',
              cause: e,
            }),
          );
        } else setTimeout(attempt, 50);
      });
    };
    attempt();
  });
}

/** QEMU's pid as libvirt's system driver records it (virsh has no command that prints it). */
function readPid(name: string, runDir = QEMU_RUN_DIR): number {
  try {
    return Number(readFileSync(join(runDir, `${name}.pid`), 'utf8').trim());
  } catch {
    return -1;
  }
}

function cli(): string {
  return join(repoRoot(), 'dist', 'src', 'cli', 'main.js');
}

/**
 * Define the guest fixture as a libvirt domain, enable eBPF RSS on it (unless `enable: false`),
 * start it paused, attach the console, resume it and wait for READY.
 */
export async function startLibvirtGuest(opts: LibvirtGuestOptions): Promise<LibvirtGuest> {
  const { name } = opts;
  if (!NAME.test(name)) throw usage(`domain name "${name}" must match ${NAME}`);
  if (await domainExists(name)) {
    throw new GuestError('GUEST_BOOT', `a libvirt domain named ${name} already exists`, {
      remedy: `remove it (\`virsh destroy ${name}; virsh undefine ${name}\`) or choose another name`,
    });
  }
  const dir = join(opts.imagesDir ?? GUEST_IMAGES_DIR, name);
  const kernel = join(dir, 'vmlinuz');
  const initrd = join(dir, 'initrd.img');
  let consoleSocket = join(dir, 'console.sock');
  const logFile = join(QEMU_LOG_DIR, `${name}.log`);
  let host = THIS_HOST;
  const logTail = (lines = 20): string => {
    try {
      return tail(readFileSync(join(host.logDir, `${name}.log`), 'utf8'), lines);
    } catch {
      return '';
    }
  };

  const removeFiles = (): void => {
    rmSync(dir, { recursive: true, force: true });
    rmSync(logFile, { force: true });
    try {
      rmdirSync(dirname(dir)); // only when no other guest uses it
    } catch {
      /* not empty, or gone */
    }
  };
  let socket: Socket | undefined;
  let defined = false;
  // Last resort if the process dies without close(): no domain, no files left behind.
  const cleanupSync = (): void => {
    socket?.destroy();
    if (defined) {
      virshSync('destroy', name);
      virshSync('undefine', name);
    }
    removeFiles();
  };
  process.once('exit', cleanupSync);
  let closing: Promise<void> | null = null;
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      socket?.destroy();
      if (defined) {
        // Where it runs now (after a migration, possibly another libvirtd), then its definitions.
        for (const uri of new Set([host.uri, LIBVIRT_URI])) {
          await run('virsh', ['-q', '-c', uri, 'destroy', name]).catch(() => undefined);
          await run('virsh', ['-q', '-c', uri, 'undefine', name]).catch(() => undefined);
        }
      }
      removeFiles();
      process.removeListener('exit', cleanupSync);
    })());

  try {
    // A leftover of a killed run with this name: its domain is gone (checked above).
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    copyFileSync(opts.fixture.kernel, kernel);
    copyFileSync(opts.fixture.initrd, initrd);
    const xml = guestDomainXml({
      name,
      kernel,
      initrd,
      cmdline: guestCmdline(opts),
      consoleSocket,
      nics: opts.nics ?? [{}],
      vcpus: opts.vcpus,
      memoryMb: opts.memoryMb,
      emulator: opts.emulator,
      hotplugSlots: opts.hotplugSlots,
    });
    const xmlFile = join(dir, 'domain.xml');
    writeFileSync(xmlFile, xml);
    const step = async (command: string, doIt: () => Promise<string>): Promise<string> => {
      const t0 = performance.now();
      const output = await doIt();
      opts.onStep?.({ command, output, ms: Math.round(performance.now() - t0) });
      return output;
    };
    await step(`virsh define ${xmlFile}`, () => virsh('define', xmlFile));
    defined = true;
    if (opts.enable !== false) {
      const args = ['enable', name, ...(opts.enable?.policy ? ['--policy', opts.enable.policy] : [])];
      await step(`virt-ebpf ${args.join(' ')}`, () => run(process.execPath, [cli(), ...args], 60_000));
    }
    const uuid = (await virsh('domuuid', name)).trim();

    // What belongs to the running QEMU: read again when libvirt starts another (a restore).
    let pid = -1;
    let interfaces: DomainInterface[] = [];
    let guestConsole: GuestConsole;
    const attach = async (): Promise<void> => {
      pid = readPid(name, host.runDir);
      interfaces = parseDomiflist(await run('virsh', ['-q', '-c', host.uri, 'domiflist', name]));
      for (const i of interfaces) {
        // No IPv6 on the host side: router solicitations and MLD reports would be guest RX
        // traffic on queues nobody predicted.
        try {
          writeFileSync(`/proc/sys/net/ipv6/conf/${i.tap}/disable_ipv6`, '1');
        } catch {
          /* IPv6 disabled on the host altogether */
        }
      }
      socket?.destroy();
      socket = await connectConsole(consoleSocket, 10_000);
      socket.on('error', () => undefined); // the console reports the end; the error itself is noise
      guestConsole = new GuestConsole(socket, socket, { log: opts.log, describeEnd: () => logTail(20) });
    };
    const started = performance.now();
    await step(`virsh start --paused ${name}`, () => virsh('start', '--paused', name));
    await attach();
    await step(`virsh resume ${name}`, () => virsh('resume', name));
    const timeout = opts.readyTimeoutMs ?? 90_000;
    if (timeout > 0) await guestConsole!.waitReady(timeout);
    const bootMs = timeout > 0 ? Math.round(performance.now() - started) : 0;

    return {
      name,
      uuid,
      get pid() {
        return pid;
      },
      get console() {
        return guestConsole;
      },
      get interfaces() {
        return interfaces;
      },
      xml,
      bootMs,
      logTail,
      reconnect: attach,
      async moveTo(to: LibvirtHost, socketPath: string): Promise<void> {
        host = to;
        consoleSocket = socketPath;
        await attach();
      },
      get host() {
        return host;
      },
      get consoleSocket() {
        return consoleSocket;
      },
      async addHostAddress(cidr: string, nic = 0): Promise<void> {
        const tap = interfaces[nic]?.tap;
        if (!tap) throw usage(`the domain has no NIC #${nic}`);
        const holder = (await ip(['-o', '-4', 'addr', 'show', 'to', cidr.split('/')[0]])).trim().split(/\s+/)[1];
        if (holder) {
          throw new GuestError('GUEST_BOOT', `host address ${cidr} is already on ${holder}`, {
            remedy: `remove it (\`ip addr del ${cidr} dev ${holder}\`) or choose another address`,
          });
        }
        await ip(['addr', 'add', cidr, 'dev', tap]);
      },
      close,
      detach(): void {
        socket?.destroy();
        process.removeListener('exit', cleanupSync);
      },
    };
  } catch (e) {
    const log = logTail(20);
    await close();
    if (e instanceof VirtEbpfError && log && !e.detail?.includes(log)) {
      throw new VirtEbpfError(e.code, e.message, { remedy: e.remedy, detail: [e.detail, `--- ${logFile} ---`, log].filter(Boolean).join('\n'), cause: e });
    }
    throw e;
  }
}
