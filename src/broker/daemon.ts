/**
 * Wiring the broker to the host: config, allowlist from libvirt's qemu.conf, and the resolver
 * that turns an emulator path into a pool source — only for trusted emulators in the allowed
 * directories, through the cached probe, so a changed binary gets a new pool.
 */
import { readFileSync, realpathSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { VirtEbpfError } from '../errors';
import { trustedFile } from '../sys/trust';
import { setNoNewPrivs } from '../sys/libc';
import { DPKG_INFO_DIR, EmulatorAllowlist } from '../emulator/allowlist';
import { DEFAULT_PATHS } from '../install/plan';
import { isHookless, isHostWide, wrapperTargets } from '../install/manifest';
import { lookupUser } from '../sys/users';
import { createLogger, Logger } from '../log';
import { BrokerConfig, libvirtQemuAccount } from './config';
import { Allowlist, Broker, type BrokerOptions } from './server';
import type { PoolSource, RefillTiming } from './pool';
import { Loader } from './loader';
import type { Policy } from '../policy';
import { HANDOFFS, RSS_HANDOFF, type HostRss } from '../argv';
import type { EmulatorCaps } from '../emulator/caps';
import { ActivationSocket, socketModeProblem, takeActivationSocket } from './activation';

function groupId(name: string): number | undefined {
  if (/^\d+$/.test(name)) return Number(name);
  try {
    const text = readFileSync('/etc/group', 'utf8');
    const line = text.split('\n').find((l) => l.split(':')[0] === name);
    return line ? Number(line.split(':')[2]) : undefined;
  } catch {
    return undefined;
  }
}

export function allowlistFor(config: BrokerConfig, qemuConf?: string): Allowlist {
  const account = libvirtQemuAccount(qemuConf);
  const users = config.allowUsers ?? [account.user];
  // A group admits every member of it (newgrp): none unless configured.
  const groups = config.allowGroups ?? [];
  const uids = new Set<number>([0]);
  const gids = new Set<number>();
  for (const u of users) {
    try {
      uids.add(lookupUser(u).uid);
    } catch {
      /* an account that does not exist (yet) cannot connect either */
    }
  }
  for (const g of groups) {
    const gid = groupId(g);
    if (gid !== undefined) gids.add(gid);
  }
  return { uids, gids };
}

export type Resolved = PoolSource & { propTypes: Record<string, string> };

export interface ResolverOptions {
  /** which emulators may ever be run (checked before anything is executed) */
  allowlist: EmulatorAllowlist;
  /** the account each probe runs as (probeAccount): no root, no capabilities */
  probeAs?: () => { uid: number; gid: number };
  loader?: Loader;
}

/** What the resolver knows of one binary: its caps and a source per kind, or why it cannot be served. */
interface Probed {
  identity: string;
  caps?: EmulatorCaps;
  key?: string;
  loadContext?: typeof import('../context').loadContext;
  sources?: Map<string, Resolved>;
  error?: unknown;
}

/** A pool's key: the emulator build and the kind of its contexts. */
export function sourceKey(buildKey: string, kind: string): string {
  return `${buildKey} ${kind}`;
}

export function makeResolver(config: BrokerConfig, logger: Logger, onNewBuild: (oldKey: string) => void, opts: ResolverOptions) {
  const { loader } = opts;
  const current = new Map<string, string>(); // realpath -> build key
  // realpath -> the outcome for the binary with that identity: its caps and a source per kind,
  // or why it cannot be served. The probe cache would give the same answer, but reading and
  // parsing it (~30 KB with the eBPF object) on every acquire is most of the broker's handoff
  // time; a stat is enough to know the binary is unchanged. A failed probe is remembered too: it
  // is not run again for the same binary. Concurrent first requests share one probe.
  const memo = new Map<string, { identity: string; probed: Promise<Probed> }>();
  return async (emulator: string, kind = RSS_HANDOFF.kind): Promise<Resolved> => {
    let real: string;
    try {
      real = realpathSync.native(emulator);
    } catch {
      throw new VirtEbpfError('EMULATOR_NOT_FOUND', `emulator ${emulator} does not exist`, { remedy: 'point the domain at an installed QEMU' });
    }
    if (!config.emulatorDirs.includes(dirname(real))) {
      throw new VirtEbpfError('BROKER_DENIED', `emulator ${real} is not in an allowed directory (${config.emulatorDirs.join(', ')})`, {
        remedy: 'install QEMU there or add its directory to emulatorDirs in /etc/virt-ebpf/config.json',
      });
    }
    opts.allowlist.check(real, emulator);
    const st = trustedFile(real, 'emulator').stat;
    const identity = `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
    let entry = memo.get(real);
    if (entry?.identity !== identity) {
      const probed = probe(real, identity);
      entry = { identity, probed };
      memo.set(real, entry);
      // A probe killed by a signal says nothing of the binary: the next request probes again.
      const mine = entry;
      probed.catch(() => memo.get(real) === mine && memo.delete(real));
    }
    const hit = await entry.probed;
    if (hit.error) throw hit.error;
    let source = hit.sources!.get(kind);
    if (!source) {
      const { caps, loadContext } = hit;
      source = {
        key: sourceKey(hit.key!, kind),
        // With a loader (the daemon), the verifier runs off the main thread; without (tests), here.
        load: () => (loader ? loader.load(caps!, kind, true) : loadContext!(caps!, kind)),
        loadInBackground: loader ? () => loader.load(caps!, kind, false) : undefined,
        propTypes: caps!.deviceProps ?? {},
      };
      hit.sources!.set(kind, source);
    }
    return source;
  };

  async function probe(real: string, identity: string): Promise<Probed> {
    // Loaded on the first emulator resolved: the probe and the loader are not needed to answer anything else.
    const [{ probeEmulator }, { assertSupported, loadContext }] = await Promise.all([import('../emulator'), import('../context')]);
    const supported: typeof assertSupported = assertSupported;
    let caps;
    try {
      caps = (await probeEmulator(real, { cacheDir: config.cacheDir, runAs: opts.probeAs?.() })).caps;
      supported(caps);
    } catch (e) {
      // What the binary answered is remembered; a probe killed by a signal says nothing of it.
      const exit = (e as { fields?: { exit?: { signal?: string | null } } }).fields?.exit;
      if (!exit?.signal) return { identity, error: e };
      throw e;
    }
    const id = caps.identity;
    const key = `${id.realpath}#${id.dev}:${id.ino}:${id.size}:${id.mtimeMs}:${id.ctimeMs}`;
    const old = current.get(real);
    if (old !== undefined && old !== key) {
      logger.info('emulator changed: dropping its pre-loaded contexts', { emulator: real });
      for (const k of HANDOFFS) onNewBuild(sourceKey(old, k.kind));
    }
    current.set(real, key);
    return { identity, caps, key, loadContext, sources: new Map() };
  }
}

/** Probes run as uids from here on, one no account names and no other process runs as. */
export const PROBE_ID_BASE = 0x7f000000;

/**
 * The account one probe runs as: a fresh uid (PROBE_ID_BASE + a random 16-bit number), never
 * root and never libvirt's QEMU account — every domain's QEMU runs as that one, and a QEMU a
 * guest owns could ptrace a probe of its own uid and forge the eBPF object it reports (ptrace
 * needs the uids to match, so sharing a group does not open that door).
 *
 * The gid is the same fresh number, except where /dev/kvm is opened through its group (kvm,
 * mode 0660 on Debian): then that group, because QEMU builds without TCG (Debian's microvm
 * build) cannot start even `-machine none` without /dev/kvm — libvirt's QEMU account is in
 * that group for the same reason. Root's group is never taken.
 */
export function probeAccount(kvm: { gid: number; mode: number } | null = kvmDevice()): { uid: number; gid: number } {
  // Web Crypto's global, not node:crypto at the top of this file: OpenSSL starts (~1.2 MiB
  // resident) at the first probe, not at every broker start.
  const id = PROBE_ID_BASE + crypto.getRandomValues(new Uint16Array(1))[0];
  const viaGroup = kvm !== null && kvm.gid !== 0 && (kvm.mode & 0o060) === 0o060;
  return { uid: id, gid: viaGroup ? kvm.gid : id };
}

function kvmDevice(): { gid: number; mode: number } | null {
  try {
    const st = statSync('/dev/kvm');
    return st.isCharacterDevice() ? { gid: st.gid, mode: st.mode } : null;
  } catch {
    return null;
  }
}

/** Say where a socket-activated broker listens, and what would keep its peers out. */
function reportActivation(a: ActivationSocket, config: BrokerConfig, allow: Allowlist, logger: Logger, qemuConf?: string): void {
  logger.info('listening socket from socket activation', { fd: a.fd, name: a.name, path: a.path });
  if (a.path === undefined || a.path.startsWith('@')) return;
  if (a.path !== config.socket) {
    logger.warn('the activated socket is not the configured one: the wrapper and the hook connect to the configured socket', { activated: a.path, configured: config.socket });
  }
  // Who may connect through the file's group: allowlisted groups, and the primary groups of
  // allowlisted accounts (libvirt's QEMU account by default).
  const groups = new Set(allow.gids);
  for (const u of config.allowUsers ?? [libvirtQemuAccount(qemuConf).user]) {
    try {
      groups.add(lookupUser(u).gid);
    } catch {
      /* no such account: it cannot connect either */
    }
  }
  const problem = socketModeProblem(statSync(a.path), groups);
  if (problem) logger.warn(`activated socket ${a.path}: ${problem}`);
}

/** `read(manifest)`, read again only when the install manifest changed (an install can run while the broker does). */
function fromManifest<T>(manifest: string, read: (path: string) => T): () => T {
  let stamp: string | undefined;
  let now: T;
  return () => {
    let st = 'none'; // no install
    try {
      const s = statSync(manifest, { throwIfNoEntry: false }); // the common miss without an exception's cost
      if (s) st = `${s.ino}:${s.mtimeMs}`;
    } catch {
      /* unreadable: as no install */
    }
    if (st !== stamp) {
      stamp = st;
      now = read(manifest);
    }
    return now;
  };
}

export async function startBroker(config: BrokerConfig, opts: { logger?: Logger; qemuConf?: string; refillTiming?: RefillTiming; manifest?: string; hookEnv?: BrokerOptions['hookEnv'] } = {}): Promise<Broker> {
  const logger = opts.logger ?? createLogger(config.log.level, config.log.format as 'text' | 'json');
  // Before anything else can start a child: the activation variables leave the environment here.
  const activation = takeActivationSocket();
  const allow = allowlistFor(config, opts.qemuConf);
  let broker: Broker | undefined;
  // Whatever the broker starts from here on cannot gain privileges by execve.
  setNoNewPrivs();
  const loader = new Loader({ threads: config.pool.loaderThreads, warn: (message, meta) => logger.warn(message, meta) });
  if (config.pool.loaderIdleMs !== undefined) logger.warn('pool.loaderIdleMs has no effect: loads hold no thread of the broker\'s own', { remedy: 'remove it from the config' });
  const manifest = opts.manifest ?? DEFAULT_PATHS.manifest;
  const allowlist = new EmulatorAllowlist({
    configured: config.emulators,
    wrapped: () => wrapperTargets(manifest),
    watch: [DPKG_INFO_DIR, manifest],
  });
  const install = fromManifest(manifest, (m) => ({ hostWide: isHostWide(m), hookless: isHookless(m) }));
  const resolve = makeResolver(config, logger, (oldKey) => broker?.pool.drop(oldKey), { allowlist, probeAs: probeAccount, loader });
  broker = new Broker({
    socket: config.socket,
    // Beside the socket: root's own directory (/run/virt-ebpf), gone at reboot as the processes are.
    peerStore: join(dirname(config.socket), 'peers'),
    allow,
    poolSize: config.pool.size,
    refillTiming: opts.refillTiming,
    onClose: () => loader.close(),
    maxReservedPerDomain: config.pool.maxReservedPerDomain,
    limits: config.limits,
    policy: config.policy as Policy,
    // The host-wide policy: the configured one while the install is host-wide.
    hostRss: () => (install().hostWide ? (config.hostWide.rss as HostRss) : 'off'),
    hookless: () => install().hookless,
    reservations: { ttlMs: config.pool.reservationTtlMs, maxTotal: config.pool.maxReserved },
    resolve,
    logger,
    listenFd: activation?.fd,
    hookEnv: opts.hookEnv,
  });
  await broker.start();
  if (activation) reportActivation(activation, config, allow, logger, opts.qemuConf);
  return broker;
}
