/**
 * Turn raw map values into what a person (or a script, with --json) wants to know: is RSS on,
 * with which hash types and key, and how the indirection table spreads over the queues. Pure.
 */
import { decodeRssConfig, hashTypeNames, keyFromMapValue, type RssState } from '../rss';
import type { RawRssMaps } from './live';
import type { NicEbpf } from './discover';
import { steeringLine, type Steering } from '../steering';

/** The decoded maps; `table` holds only the entries in use (the first `indirectionsLen`). */
export interface RssView {
  redirect: boolean;
  populateHash: boolean;
  hashTypes: number;
  hashTypeNames: string[];
  indirectionsLen: number;
  defaultQueue: number;
  /** The key as the guest set it (what `ethtool -x` shows), lowercase hex. */
  key: string;
  table: number[];
}

export function decodeRssView(raw: RawRssMaps): RssView {
  const c = decodeRssConfig(raw.config);
  return {
    redirect: c.redirect,
    populateHash: c.populateHash,
    hashTypes: c.hashTypes,
    hashTypeNames: hashTypeNames(c.hashTypes),
    indirectionsLen: c.indirectionsLen,
    defaultQueue: c.defaultQueue,
    key: keyFromMapValue(raw.keyValue).toString('hex'),
    table: raw.table.slice(0, Math.min(c.indirectionsLen, raw.table.length)),
  };
}

/** What the reference needs (rss/steer.ts): the config, the key in guest order, the whole table map. */
export function rssStateFromRaw(raw: RawRssMaps): RssState {
  return { config: decodeRssConfig(raw.config), key: keyFromMapValue(raw.keyValue), table: raw.table };
}

export interface QueueShare {
  queue: number;
  entries: number;
  /** entries / table length, 0..1 */
  share: number;
}

/** Entries per queue, for queues 0 .. max(queues-1, highest queue in the table). */
export function queueHistogram(table: readonly number[], queues = 0): QueueShare[] {
  const n = Math.max(queues, table.length ? Math.max(...table) + 1 : 0);
  const counts = new Array<number>(n).fill(0);
  for (const q of table) counts[q]++;
  return counts.map((entries, queue) => ({ queue, entries, share: table.length ? entries / table.length : 0 }));
}

/**
 * What the maps hold (which steering is in effect is the NIC's `steering`, see src/steering):
 * - active: the guest sent an RSS configuration through the eBPF path; the table steers while
 *   the program is attached.
 * - unconfigured: QEMU wrote nothing yet (all zero): no RSS configuration reached the maps.
 * - software: the configuration's hash-report flag is set. QEMU 10.0-11.1 never write it so
 *   (with hash reporting negotiated they steer in software and leave the maps untouched).
 * - redirect-off: a hash configuration without steering: everything to the default queue.
 * - no-ebpf: the NIC asked for RSS but holds no program.
 * - unreadable: the maps could not be read or the fds are inconsistent.
 */
export type NicState = 'active' | 'unconfigured' | 'software' | 'redirect-off' | 'no-ebpf' | 'unreadable';

export function classify(view: RssView, rawKeyAllZero: boolean): { state: NicState; summary: string } {
  const types = `hash ${view.hashTypeNames.join(' ') || 'none'} (0x${view.hashTypes.toString(16)})`;
  if (!view.redirect && !view.populateHash && view.hashTypes === 0 && view.indirectionsLen === 0 && view.defaultQueue === 0 && rawKeyAllZero) {
    return { state: 'unconfigured', summary: 'not configured yet: no RSS configuration reached the maps (no `ethtool -X` yet, or hash reporting keeps QEMU off the eBPF path: see steer)' };
  }
  if (view.populateHash) return { state: 'software', summary: `the hash-report flag is set in the configuration (QEMU steers in software with hash reporting); ${types}` };
  if (!view.redirect) return { state: 'redirect-off', summary: `steering off: every packet goes to queue ${view.defaultQueue}; ${types}` };
  return { state: 'active', summary: `on: ${view.indirectionsLen} table entries, default queue ${view.defaultQueue}, ${types}` };
}

/** What names a virtio-net NIC and its backend, for NICs with RSS and without alike. */
export interface NicIdentity {
  id?: string;
  netdev?: string;
  mac?: string;
  tap?: string;
  queues?: number;
  vhost?: boolean;
  /** `hash` on QEMU's command line (libvirt's rss_hash_report): hash reporting offered to the guest. */
  hashReport: boolean;
  /**
   * The device's `hash-*` properties (QEMU >= 10.1, as its probe lists them) with this NIC's
   * value: set on the command line, else QEMU's default. Absent where the emulator has none or
   * could not be probed.
   */
  hashProperties?: Record<string, string>;
}

export interface NicStatus extends NicIdentity {
  /** 'unnamed-program': a program QEMU holds that no command-line NIC names (a hot-plugged NIC). */
  origin: 'command-line' | 'unnamed-program';
  ebpf?: NicEbpf;
  /** Which steering is in effect, how sure, and on what evidence. */
  steering?: Steering;
  state: NicState;
  summary: string;
  rss?: RssView;
  /**
   * Who turned rss on for this NIC: the domain's XML (`<driver rss='on'>`) or the host-wide
   * policy (install --host-wide; the XML says nothing of rss). Absent when the install is not
   * host-wide, or libvirt's live XML of the domain cannot be read (not a libvirt domain, not root).
   */
  rssFrom?: 'domain' | 'host-policy';
  /** `sha256:…` of `rss` (fleet.ts tableDigest), present with it: equal on two NICs that steer the same. */
  tableDigest?: string;
  histogram?: QueueShare[];
  problems: string[];
}

/** A virtio-net NIC of the same QEMU without RSS: no eBPF, no maps, steering none. */
export interface PlainNicStatus extends NicIdentity {
  steering: Steering;
}

export interface DomainStatus {
  pid: number;
  name?: string;
  uuid?: string;
  uid?: number;
  /** The account name of `uid`. */
  user?: string;
  /** The running binary (/proc/PID/exe) and what its probe says, when known. */
  emulator?: { path: string; version?: string; problem?: string };
  nics: NicStatus[];
  /** Its virtio-net NICs without RSS. */
  plainNics: PlainNicStatus[];
}

export interface StatusReport {
  domains: DomainStatus[];
}

const BAR = 32;
const EIGHTHS = ['', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];

/** A bar of `BAR` cells at share 1, in eighths of a cell. */
export function bar(share: number, width = BAR): string {
  const eighths = Math.round(Math.max(0, Math.min(1, share)) * width * 8);
  return '█'.repeat(Math.floor(eighths / 8)) + EIGHTHS[eighths % 8];
}

/** `q0 ████████████████████████ 96 (75%)`, one line per queue, aligned. */
export function formatHistogram(h: readonly QueueShare[]): string[] {
  const qw = Math.max(...h.map((x) => `q${x.queue}`.length));
  const nw = Math.max(...h.map((x) => String(x.entries).length));
  return h.map((x) => `${`q${x.queue}`.padEnd(qw)} ${bar(x.share).padEnd(BAR + 1)}${String(x.entries).padStart(nw)} (${pct(x.share)})`);
}

function pct(share: number): string {
  const p = share * 100;
  return `${Number.isInteger(p) ? p : p.toFixed(1)}%`;
}

function domainTitle(d: DomainStatus): string {
  const who = d.user !== undefined ? `user ${d.user}` : d.uid !== undefined ? `uid ${d.uid}` : '';
  const extra = [d.uuid ? `uuid ${d.uuid}` : '', `pid ${d.pid}`, who].filter(Boolean).join(', ');
  return `${d.name ?? '(unnamed QEMU)'}  (${extra})`;
}

function nicTitle(n: NicStatus | (PlainNicStatus & { origin?: undefined })): string {
  if (n.origin === 'unnamed-program') return '(a NIC not on the command line: hot-plugged?)';
  const parts = [n.id ?? '(no id)', n.mac, n.tap ? `tap ${n.tap}` : undefined, n.queues ? `${n.queues} queue${n.queues > 1 ? 's' : ''}` : undefined, n.netdev ? `netdev ${n.netdev}` : undefined, n.vhost ? 'vhost' : undefined];
  return parts.filter(Boolean).join('  ');
}

function ebpfLine(e: NicEbpf): string {
  const how =
    e.source === 'fd-numbers'
      ? `ebpf-rss-fds ${e.fds!.join(',')}`
      : e.source === 'fd-names'
        ? `fds passed by name (${e.matchedBy === 'order' ? 'matched by device order' : 'the only unnamed program'})`
        : e.source === 'self-loaded'
          ? `loaded by QEMU itself (${e.matchedBy === 'order' ? 'matched by device order' : 'its only RSS program'})`
          : `QEMU's fd ${e.fds?.join(',') ?? '?'}, named on no command-line NIC`;
  return `prog ${e.progId}  maps ${e.mapIds.join(' ')}  via ${how}`;
}

/** The human report: per domain, per NIC, the state, key and a histogram to read at a glance. */
export function formatStatus(r: StatusReport): string {
  if (r.domains.length === 0) return 'no running QEMU has a virtio-net NIC with RSS';
  const out: string[] = [];
  for (const d of r.domains) {
    if (out.length) out.push('');
    out.push(domainTitle(d));
    for (const n of d.nics) {
      out.push(`  ${nicTitle(n)}`);
      const row = (label: string, text: string): void => {
        out.push(`    ${label.padEnd(6)} ${text}`);
      };
      if (n.ebpf) row('eBPF', ebpfLine(n.ebpf));
      if (n.steering) row('steer', steeringLine(n.steering));
      row('RSS', n.rssFrom === 'host-policy' ? `${n.summary} (rss by the host-wide policy: the domain's XML does not ask)` : n.summary);
      if (n.rss && n.state !== 'unconfigured') {
        row('key', n.rss.key);
        if (n.histogram?.length) {
          const lines = formatHistogram(n.histogram);
          row('table', lines[0]);
          for (const l of lines.slice(1)) out.push(`    ${''.padEnd(6)} ${l}`);
        }
      }
      for (const p of n.problems) row('!', p);
    }
    for (const n of d.plainNics) {
      out.push(`  ${nicTitle(n)}`);
      out.push(`    ${'steer'.padEnd(6)} ${steeringLine(n.steering)}`);
    }
  }
  return out.join('\n');
}

/** `--json`: the report as data (docs/status-schema.md; the key as hex, the table as numbers). */
export function statusJson(r: StatusReport): string {
  return JSON.stringify(r, null, 2);
}
