/**
 * `virt-ebpf status [DOMAIN] [--json | --prometheus]`: which running QEMU NICs steer with eBPF
 * RSS, and what the guest configured — read live from the kernel maps QEMU writes.
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { VirtEbpfError } from '../errors';
import { parseArgs } from '../options';
import { discoverQemus, type DiscoverOptions, type QemuProcess, type DiscoveredNic } from './discover';
import { classify, decodeRssView, formatStatus, queueHistogram, statusJson, type DomainStatus, type NicIdentity, type NicState, type NicStatus, type PlainNicStatus, type StatusReport } from './format';
import { readRssMaps } from './live';
import type { NicArgs } from './nics';
import { lookupUser } from '../sys/users';
import { binaryIdentity, DEFAULT_CACHE_DIR, readCache, versionString } from '../emulator';
import { decideSteering, readTapHeader, sampleRuns, STEERING_LABELS, tapQueues, type MapsFact, type RunFact, type Steering } from '../steering';
import { libvirtQemuAccount } from '../broker/config';
import { hostUuidFrom, statusDocument, tableDigest, type HostFacts } from './fleet';
import { statusPrometheus } from './prometheus';
import { STATUS_USAGE } from './usage';

export { discoverQemus, discoverNics, discoverPlainNics, defaultNoEbpfReason, type DiscoverOptions, type QemuProcess, type QemuFacts, type DiscoveredNic, type NicEbpf, type NoEbpfExplainer } from './discover';
export { parseQemuRssArgs, parseNetdevs, numericFds, looksLikeQemu, assignRssMapRoles, type NicArgs, type NetdevArgs, type QemuArgs, type MapShape } from './nics';
export { readRssMaps, type RawRssMaps } from './live';
export {
  decodeRssView,
  rssStateFromRaw,
  queueHistogram,
  classify,
  formatStatus,
  formatHistogram,
  statusJson,
  bar,
  type RssView,
  type QueueShare,
  type NicState,
  type NicStatus,
  type PlainNicStatus,
  type DomainStatus,
  type StatusReport,
} from './format';
export { rssOnAliases, liveRssAliases } from './domain-xml';
import { isHostWide } from '../install/manifest';
import { DEFAULT_PATHS } from '../install/plan';
import { liveRssAliases } from './domain-xml';
export { STATUS_SCHEMA, statusDocument, tableDigest, tableDigestInput, hostUuidFrom, libvirtUuid, type HostFacts, type HostUuidSource, type StatusDocument } from './fleet';
export { statusPrometheus, escapeLabelValue } from './prometheus';
export { STATUS_USAGE, STATUS_SUMMARY } from './usage';

/** A domain given as name, UUID or QEMU pid. */
export function matchesDomain(q: Pick<QemuProcess, 'pid' | 'domain'>, wanted: string): boolean {
  return q.domain.name === wanted || q.domain.uuid?.toLowerCase() === wanted.toLowerCase() || String(q.pid) === wanted;
}

/** The QEMU processes for DOMAIN (all when undefined); DOMAIN_NOT_FOUND when it names none. */
export function selectQemus(domain: string | undefined, opts: DiscoverOptions = {}): QemuProcess[] {
  const all = discoverQemus(opts);
  if (domain === undefined) return all;
  const hit = all.filter((q) => matchesDomain(q, domain));
  if (hit.length === 0) {
    throw new VirtEbpfError('DOMAIN_NOT_FOUND', `no running QEMU with an RSS NIC belongs to domain "${domain}" (${all.length} such QEMU process${all.length === 1 ? '' : 'es'} running)`, {
      remedy: 'name a running domain (`virsh list`), its UUID or its QEMU pid; run `virt-ebpf status` without a domain to list them',
    });
  }
  return hit;
}

/** What the probe knows of a running QEMU binary (/proc/PID/exe). */
export interface EmulatorFacts {
  version?: string;
  /** `hash-*` properties and their defaults; {} when the emulator has none. */
  hashProps?: Record<string, string>;
  problem?: string;
}

export interface StatusOptions extends DiscoverOptions {
  /** Program runs and tap frames over a window, by program id (observeStatus samples them). */
  runs?: ReadonlyMap<number, RunFact>;
  /** The probe's facts for a binary; default: the probe cache in `cacheDir`, nothing probed. */
  emulatorOf?: (exe: string) => EmulatorFacts;
  /** The probe cache (default the root's, which the broker fills). */
  cacheDir?: string;
  /** Whose QEMUs' tap fds may be duplicated (default trustedQemuUids()). */
  trustedUids?: ReadonlySet<number>;
  /** A domain's rss='on' aliases from libvirt's live XML (default: /run/libvirt/qemu/NAME.xml). */
  liveRssAliases?: (name: string | undefined) => Set<string> | undefined;
  /** The install is host-wide (default: its manifest says so); rssFrom is told only then. */
  hostWide?: boolean;
}

/** How long observeStatus counts program runs by default. */
export const DEFAULT_SAMPLE_MS = 1000;

/** The probe cache's facts for a binary, without running it. */
export function cachedEmulatorFacts(exe: string, cacheDir = DEFAULT_CACHE_DIR): EmulatorFacts {
  if (exe.endsWith(' (deleted)')) return { problem: 'the binary was replaced after QEMU started: its properties are unknown' };
  try {
    const hit = readCache(cacheDir, binaryIdentity(exe));
    if ('caps' in hit) return { version: versionString(hit.caps.version), hashProps: hit.caps.hashProps };
    // Never probed from here: status runs as root, and the binary is whatever a process names.
    return { problem: `not probed yet (${hit.miss}: ${hit.why}); the broker probes it when a domain starts with it` };
  } catch (e) {
    return { problem: (e as Error).message };
  }
}

/** The NIC's `hash-*` values: its own settings over the emulator's defaults; undefined where the emulator has none. */
function hashPropertiesOf(nic: NicArgs, emulator: EmulatorFacts | undefined): Record<string, string> | undefined {
  const defaults = emulator?.hashProps;
  if (!defaults || Object.keys(defaults).length === 0) return undefined;
  return { ...defaults, ...(nic.hashSettings ?? {}) };
}

function mapsFact(state: NicState | undefined): MapsFact | undefined {
  if (state === undefined || state === 'no-ebpf') return undefined;
  if (state === 'unconfigured') return 'unconfigured';
  if (state === 'unreadable') return 'unreadable';
  return 'configured';
}

/** Whether QEMU may hold an eBPF program for the NIC that could not be tied to it (undefined), holds one (true) or none (false). */
function programFact(nic: DiscoveredNic): boolean | undefined {
  if (nic.ebpf) return true;
  return nic.noEbpf !== undefined && nic.problems.length === 0 ? false : undefined;
}

/**
 * Which steering is in effect on a NIC of QEMU `q.pid` (a NIC QEMU runs hot-plugged has no
 * known tap or hash setting). `q.dupOk`: its tap fds may be duplicated to read the header.
 */
export function steeringOf(q: { pid: number; dupOk: boolean }, nic: DiscoveredNic, state: NicState | undefined, runs?: ReadonlyMap<number, RunFact>): Steering {
  if (!nic.rss) return decideSteering({ rss: false, hashReportOffered: nic.hashReport === true, vhost: nic.backend?.vhost ?? false, program: false });
  const known = nic.origin === 'command-line';
  const queues = tapQueues(nic.tap);
  const maps = mapsFact(state);
  return decideSteering({
    rss: nic.rss,
    hashReportOffered: known ? nic.hashReport === true : undefined,
    vhost: nic.backend?.vhost ?? false,
    program: programFact(nic),
    header: q.dupOk ? readTapHeader(q.pid, nic.tap) : { error: "not read: this QEMU runs as neither root nor libvirt's QEMU account, so its owner could swap the fd under us" },
    ...(nic.ebpf && runs?.has(nic.ebpf.progId) ? { runs: runs.get(nic.ebpf.progId)! } : {}),
    ...(queues !== undefined ? { tapQueues: queues } : {}),
    ...(maps !== undefined ? { maps } : {}),
  });
}

interface NicContext {
  pid?: number;
  dupOk?: boolean;
  emulator?: EmulatorFacts;
  runs?: ReadonlyMap<number, RunFact>;
}

function steeringFor(ctx: NicContext, nic: DiscoveredNic, state: NicState | undefined): { steering?: Steering } {
  if (ctx.pid === undefined) return {};
  try {
    return { steering: steeringOf({ pid: ctx.pid, dupOk: ctx.dupOk ?? false }, nic, state, ctx.runs) };
  } catch (e) {
    return { steering: { kind: 'unknown', label: STEERING_LABELS.unknown, confidence: 'unknown', reason: `could not be decided: ${(e as Error).message}`, evidence: [], guestHashReport: 'unknown' } };
  }
}

function nicIdentity(nic: DiscoveredNic, emulator: EmulatorFacts | undefined): NicIdentity {
  const hashProperties = hashPropertiesOf(nic, emulator);
  return {
    ...(nic.id !== undefined ? { id: nic.id } : {}),
    ...(nic.netdev !== undefined ? { netdev: nic.netdev } : {}),
    ...(nic.mac !== undefined ? { mac: nic.mac } : {}),
    ...(nic.tap !== undefined ? { tap: nic.tap } : {}),
    ...(nic.backend ? { queues: nic.backend.queues, vhost: nic.backend.vhost } : {}),
    hashReport: nic.hashReport === true,
    ...(hashProperties ? { hashProperties } : {}),
  };
}

export function nicStatus(nic: DiscoveredNic, ctx: NicContext = {}): NicStatus {
  const base = { origin: nic.origin, ...nicIdentity(nic, ctx.emulator), problems: [...nic.problems] };
  const withSteering = (s: NicStatus): NicStatus => ({ ...s, ...steeringFor(ctx, nic, s.state) });
  if (!nic.ebpf) {
    if (nic.noEbpf !== undefined) return withSteering({ ...base, state: 'no-ebpf', summary: `asked for RSS but runs without eBPF: ${nic.noEbpf}` });
    return withSteering({ ...base, state: 'unreadable', summary: 'eBPF fds named but unusable (see below)' });
  }
  let read: NicStatus;
  try {
    const raw = readRssMaps(nic.ebpf.mapIds);
    const rss = decodeRssView(raw);
    const { state, summary } = classify(rss, raw.keyValue.every((b) => b === 0));
    read = { ...base, ebpf: nic.ebpf, state, summary, rss, tableDigest: tableDigest(rss), histogram: queueHistogram(rss.table, nic.backend?.queues) };
  } catch (e) {
    read = { ...base, ebpf: nic.ebpf, state: 'unreadable', summary: `cannot read the maps: ${(e as Error).message}` };
  }
  return withSteering(read);
}

export function plainNicStatus(pid: number, nic: DiscoveredNic, emulator?: EmulatorFacts): PlainNicStatus {
  return { ...nicIdentity(nic, emulator), steering: steeringOf({ pid, dupOk: false }, nic, undefined) };
}

/**
 * Whose tap fds status duplicates (pidfd_getfd) to read the vnet header: root's and libvirt's
 * QEMU account's processes. Any other user could swap what an fd number points to between our
 * look at /proc and the copy (a FUSE file whose close never returns, say).
 */
export function trustedQemuUids(qemuConf?: string): ReadonlySet<number> {
  const uids = new Set([0]);
  try {
    uids.add(lookupUser(libvirtQemuAccount(qemuConf).user).uid);
  } catch {
    /* no such account here: root's QEMUs only */
  }
  return uids;
}

function userName(uid: number): string | undefined {
  try {
    return lookupUser(String(uid)).name;
  } catch {
    return undefined; // a uid without an account: show the number
  }
}

/** The report for these QEMUs; maps and taps are read now, program runs come from `opts.runs`. */
export function buildReport(qemus: readonly QemuProcess[], opts: StatusOptions = {}): StatusReport {
  const emulatorOf = opts.emulatorOf ?? ((exe: string) => cachedEmulatorFacts(exe, opts.cacheDir));
  const trusted = opts.trustedUids ?? trustedQemuUids();
  const hostWide = opts.hostWide ?? isHostWide(DEFAULT_PATHS.manifest);
  const domains: DomainStatus[] = qemus.map((q) => {
    const emulator = q.exe !== undefined ? emulatorOf(q.exe) : undefined;
    // Only a host-wide host has a policy that turns rss on (elsewhere rss the XML does not ask
    // for comes from somewhere we cannot name, e.g. <qemu:commandline>).
    const asked = hostWide ? (opts.liveRssAliases ?? liveRssAliases)(q.domain.name) : undefined;
    const rssFrom = (n: DiscoveredNic): Pick<NicStatus, 'rssFrom'> => (asked && n.id !== undefined && n.origin === 'command-line' ? { rssFrom: asked.has(n.id) ? 'domain' : 'host-policy' } : {});
    return {
      pid: q.pid,
      ...(q.domain.name !== undefined ? { name: q.domain.name } : {}),
      ...(q.domain.uuid !== undefined ? { uuid: q.domain.uuid } : {}),
      ...(q.uid !== undefined ? { uid: q.uid } : {}),
      ...(q.uid !== undefined && userName(q.uid) !== undefined ? { user: userName(q.uid) } : {}),
      ...(q.exe !== undefined ? { emulator: { path: q.exe, ...(emulator?.version ? { version: emulator.version } : {}), ...(emulator?.problem ? { problem: emulator.problem } : {}) } } : {}),
      nics: q.nics.map((n) => ({ ...nicStatus(n, { pid: q.pid, dupOk: q.uid !== undefined && trusted.has(q.uid), emulator, runs: opts.runs }), ...rssFrom(n) })),
      plainNics: q.plainNics.map((n) => plainNicStatus(q.pid, n, emulator)),
    };
  });
  return { domains };
}

/** Status from /proc, the kernel's maps and the taps, at once (no program runs counted, nothing probed). */
export function collectStatus(domain?: string, opts: StatusOptions = {}): StatusReport {
  return buildReport(selectQemus(domain, opts), opts);
}

/**
 * Status with the program runs counted over `sampleMs` (0: not counted), so that steering is as
 * sure as it can be from the host. Emulators are never run from here: their hash-* properties
 * come from the broker's probe cache.
 */
export async function observeStatus(domain?: string, opts: StatusOptions & { sampleMs?: number } = {}): Promise<StatusReport> {
  const qemus = selectQemus(domain, opts);
  const sampleMs = opts.sampleMs ?? DEFAULT_SAMPLE_MS;
  const targets = qemus.flatMap((q) => q.nics.flatMap((n) => (n.ebpf ? [{ progId: n.ebpf.progId, ...(n.tap ? { tap: n.tap } : {}) }] : [])));
  const runs = sampleMs > 0 ? await sampleRuns(targets, sampleMs) : undefined;
  return buildReport(qemus, { ...opts, ...(runs ? { runs } : {}) });
}

export function requireRootFor(what: string): void {
  if (process.getuid?.() !== 0) {
    throw new VirtEbpfError('NOT_ROOT', `${what} reads other processes' fds and BPF maps by id, which needs root`, { remedy: `run it as root (sudo virt-ebpf ${what})` });
  }
}

/** `--sample MS`: 0 to 60000 whole milliseconds. */
export function parseSampleMs(v: string | undefined): number {
  if (v === undefined) return DEFAULT_SAMPLE_MS;
  if (!/^[0-9]{1,5}$/.test(v) || Number(v) > 60_000) {
    throw new VirtEbpfError('USAGE', `--sample must be whole milliseconds from 0 to 60000, not "${v}"`, { remedy: `usage: ${STATUS_USAGE}` });
  }
  return Number(v);
}

function readOptional(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined; // absent or unreadable: hostUuidFrom says what that means
  }
}

/** This host's name and libvirt's host UUID as far as files tell it (libvirtd is not asked). */
export function readHostFacts(libvirtdConf = '/etc/libvirt/libvirtd.conf'): HostFacts {
  return {
    name: hostname(),
    ...hostUuidFrom({ libvirtdConf: readOptional(libvirtdConf), productUuid: readOptional('/sys/class/dmi/id/product_uuid'), machineId: readOptional('/etc/machine-id') }),
  };
}

/**
 * The CLI entry. Exit code 0, or 1 when a NIC's maps could not be read — except with
 * --prometheus, where an unreadable NIC is a sample (its rss_state) and the exposition is
 * complete, so a textfile collector's timer keeps publishing.
 */
export async function runStatus(argv: readonly string[]): Promise<{ stdout: string; code: number }> {
  const a = parseArgs(argv, { flags: ['json', 'prometheus'], values: ['sample'] }, 'status');
  if (a.positional.length > 1) throw new VirtEbpfError('USAGE', `status takes at most one DOMAIN, got ${a.positional.length}`, { remedy: `usage: ${STATUS_USAGE}` });
  if (a.flags.has('json') && a.flags.has('prometheus')) throw new VirtEbpfError('USAGE', 'status: --json and --prometheus are two output formats; choose one', { remedy: `usage: ${STATUS_USAGE}` });
  const sampleMs = parseSampleMs(a.values.get('sample'));
  requireRootFor('status');
  const report = await observeStatus(a.positional[0], { sampleMs });
  const code = report.domains.some((d) => d.nics.some((n) => n.state === 'unreadable')) ? 1 : 0;
  if (!a.flags.has('json') && !a.flags.has('prometheus')) return { stdout: formatStatus(report) + '\n', code };
  const doc = statusDocument(report, readHostFacts(), new Date());
  if (a.flags.has('prometheus')) return { stdout: statusPrometheus(doc), code: 0 };
  return { stdout: statusJson(doc) + '\n', code };
}
