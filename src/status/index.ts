/**
 * `virt-ebpf status [DOMAIN] [--json]`: which running QEMU NICs steer with eBPF RSS, and what the
 * guest configured — read live from the kernel maps QEMU writes.
 */
import { VirtEbpfError } from '../errors';
import { parseArgs } from '../options';
import { discoverQemus, type DiscoverOptions, type QemuProcess, type DiscoveredNic } from './discover';
import { classify, decodeRssView, formatStatus, queueHistogram, statusJson, type DomainStatus, type NicStatus, type StatusReport } from './format';
import { readRssMaps } from './live';
import { lookupUser } from '../sys/users';

export { discoverQemus, discoverNics, defaultNoEbpfReason, type DiscoverOptions, type QemuProcess, type QemuFacts, type DiscoveredNic, type NicEbpf, type NoEbpfExplainer } from './discover';
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
  type DomainStatus,
  type StatusReport,
} from './format';

export const STATUS_USAGE = 'virt-ebpf status [DOMAIN] [--json]';

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

export function nicStatus(nic: DiscoveredNic): NicStatus {
  const base = {
    origin: nic.origin,
    ...(nic.id !== undefined ? { id: nic.id } : {}),
    ...(nic.netdev !== undefined ? { netdev: nic.netdev } : {}),
    ...(nic.mac !== undefined ? { mac: nic.mac } : {}),
    ...(nic.tap !== undefined ? { tap: nic.tap } : {}),
    ...(nic.backend ? { queues: nic.backend.queues, vhost: nic.backend.vhost } : {}),
    problems: [...nic.problems],
  };
  if (!nic.ebpf) {
    if (nic.noEbpf !== undefined) return { ...base, state: 'no-ebpf', summary: `asked for RSS but runs without eBPF: ${nic.noEbpf}` };
    return { ...base, state: 'unreadable', summary: 'eBPF fds named but unusable (see below)' };
  }
  try {
    const raw = readRssMaps(nic.ebpf.mapIds);
    const rss = decodeRssView(raw);
    const { state, summary } = classify(rss, raw.keyValue.every((b) => b === 0));
    return { ...base, ebpf: nic.ebpf, state, summary, rss, histogram: queueHistogram(rss.table, nic.backend?.queues) };
  } catch (e) {
    return { ...base, ebpf: nic.ebpf, state: 'unreadable', summary: `cannot read the maps: ${(e as Error).message}` };
  }
}

function userName(uid: number): string | undefined {
  try {
    return lookupUser(String(uid)).name;
  } catch {
    return undefined; // a uid without an account: show the number
  }
}

export function collectStatus(domain?: string, opts: DiscoverOptions = {}): StatusReport {
  const domains: DomainStatus[] = selectQemus(domain, opts).map((q) => ({
    pid: q.pid,
    ...(q.domain.name !== undefined ? { name: q.domain.name } : {}),
    ...(q.domain.uuid !== undefined ? { uuid: q.domain.uuid } : {}),
    ...(q.uid !== undefined ? { uid: q.uid } : {}),
    ...(q.uid !== undefined && userName(q.uid) !== undefined ? { user: userName(q.uid) } : {}),
    nics: q.nics.map(nicStatus),
  }));
  return { domains };
}

export function requireRootFor(what: string): void {
  if (process.getuid?.() !== 0) {
    throw new VirtEbpfError('NOT_ROOT', `${what} reads other processes' fds and BPF maps by id, which needs root`, { remedy: `run it as root (sudo virt-ebpf ${what})` });
  }
}

/** The CLI entry: exit code 0, or 1 when a NIC's maps could not be read. */
export async function runStatus(argv: readonly string[]): Promise<{ stdout: string; code: number }> {
  const a = parseArgs(argv, { flags: ['json'] }, 'status');
  if (a.positional.length > 1) throw new VirtEbpfError('USAGE', `status takes at most one DOMAIN, got ${a.positional.length}`, { remedy: `usage: ${STATUS_USAGE}` });
  requireRootFor('status');
  const report = collectStatus(a.positional[0]);
  const text = a.flags.has('json') ? statusJson(report) : formatStatus(report);
  const unreadable = report.domains.some((d) => d.nics.some((n) => n.state === 'unreadable'));
  return { stdout: text + '\n', code: unreadable ? 1 : 0 };
}
