/**
 * `status --prometheus`: the status document in the Prometheus text exposition format (0.0.4),
 * one metric family per fact, for node_exporter's textfile collector or any scraper. Pure.
 * docs/status-schema.md lists the families and their labels.
 */
import { STEERING_LABELS, type Confidence, type Steering, type SteeringKind } from '../steering';
import type { DomainStatus, NicState, NicStatus, PlainNicStatus } from './format';
import type { StatusDocument } from './fleet';

type Labels = Record<string, string>;

interface Family {
  name: string;
  help: string;
  samples: Array<{ labels: Labels; value: number }>;
}

const STEERING_KINDS = Object.keys(STEERING_LABELS) as SteeringKind[];
const CONFIDENCES: Confidence[] = ['certain', 'likely', 'unknown'];
const NIC_STATES: NicState[] = ['active', 'unconfigured', 'software', 'redirect-off', 'no-ebpf', 'unreadable'];
const MAP_ROLES = ['config', 'key', 'table'] as const;

/** A label value as the format wants it: backslash, double quote and newline escaped. */
export function escapeLabelValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

function sampleValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

function renderFamily(f: Family): string[] {
  const lines = [`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} gauge`];
  for (const s of f.samples) {
    const labels = Object.entries(s.labels).map(([k, v]) => `${k}="${escapeLabelValue(v)}"`);
    lines.push(`${f.name}${labels.length ? `{${labels.join(',')}}` : ''} ${sampleValue(s.value)}`);
  }
  return lines;
}

/** Labels that name each listed QEMU: its domain name and UUID, made unique with the pid where they are not. */
function domainKeys(domains: readonly DomainStatus[]): Labels[] {
  const base = domains.map((d) => ({ domain: d.name ?? `pid ${d.pid}`, uuid: d.uuid ?? '' }));
  const seen = new Map<string, number>();
  for (const k of base) seen.set(JSON.stringify(k), (seen.get(JSON.stringify(k)) ?? 0) + 1);
  return base.map((k, i) => (seen.get(JSON.stringify(k))! > 1 ? { ...k, domain: `${k.domain} (pid ${domains[i].pid})` } : k));
}

type AnyNic = { rss: true; nic: NicStatus } | { rss: false; nic: PlainNicStatus };

/** The `nic` label: the device id, else the MAC, else `prog:ID` (what `verify --nic` takes); `#N` (its place in the domain) where that is not unique. */
function nicKeys(nics: readonly AnyNic[]): string[] {
  const base = nics.map(({ nic }, i) => nic.id ?? nic.mac ?? ('ebpf' in nic && nic.ebpf ? `prog:${nic.ebpf.progId}` : `#${i}`));
  return base.map((k, i) => (base.indexOf(k) !== base.lastIndexOf(k) ? `${k}#${i}` : k));
}

function oneOf<T extends string>(label: string, all: readonly T[], current: T): Array<{ labels: Labels; value: number }> {
  return all.map((v) => ({ labels: { [label]: v }, value: v === current ? 1 : 0 }));
}

/** The exposition: HELP and TYPE per family, then its samples; families without samples are left out. */
export function statusPrometheus(doc: StatusDocument): string {
  const families = new Map<string, Family>();
  const add = (name: string, help: string, labels: Labels, value: number): void => {
    const f = families.get(name) ?? { name, help, samples: [] };
    families.set(name, f);
    f.samples.push({ labels, value });
  };
  const host = doc.host.name;
  add('virt_ebpf_status_info', 'The status schema, the host name and the host UUID libvirt uses (empty when only libvirt knows it).', { schema: doc.schema, host, host_uuid: doc.host.uuid ?? '', host_uuid_source: doc.host.uuidSource ?? '' }, 1);
  add('virt_ebpf_status_collected_timestamp_seconds', 'When these facts were collected, in seconds since the Unix epoch.', {}, Date.parse(doc.collectedAt) / 1000);
  add('virt_ebpf_domains', 'Running QEMU processes with a virtio-net NIC with RSS.', {}, doc.domains.length);

  const keys = domainKeys(doc.domains);
  doc.domains.forEach((d, di) => {
    const dk = keys[di];
    add('virt_ebpf_domain_info', 'A running QEMU with an RSS NIC: its pid, account and emulator version.', { ...dk, pid: String(d.pid), user: d.user ?? (d.uid !== undefined ? String(d.uid) : ''), emulator_version: d.emulator?.version ?? '' }, 1);
    const nics: AnyNic[] = [...d.nics.map((nic): AnyNic => ({ rss: true, nic })), ...d.plainNics.map((nic): AnyNic => ({ rss: false, nic }))];
    const nk = nicKeys(nics);
    nics.forEach((n, ni) => {
      const key = { ...dk, nic: nk[ni] };
      const nic = n.nic;
      add(
        'virt_ebpf_nic_info',
        'A virtio-net NIC of a listed QEMU: host, MAC, tap, netdev, whether it asked for RSS, vhost, whether it is on QEMU\'s command line (origin), and who turned rss on (rss_from: domain, host-policy, or empty).',
        { ...key, host, mac: nic.mac ?? '', tap: nic.tap ?? '', netdev: nic.netdev ?? '', rss: n.rss ? 'on' : 'off', vhost: String(nic.vhost ?? false), origin: n.rss ? n.nic.origin : 'command-line', rss_from: n.rss ? (n.nic.rssFrom ?? '') : '' },
        1,
      );
      if (nic.queues !== undefined) add('virt_ebpf_nic_queues', 'Queue pairs of the NIC\'s tap backend (QEMU\'s command line).', key, nic.queues);
      const steering: Steering | undefined = nic.steering;
      if (steering) {
        for (const s of oneOf('kind', STEERING_KINDS, steering.kind)) add('virt_ebpf_nic_steering', 'Which receive steering is in effect: 1 for the kind in effect, 0 for the others.', { ...key, ...s.labels }, s.value);
        for (const s of oneOf('confidence', CONFIDENCES, steering.confidence)) add('virt_ebpf_nic_steering_confidence', 'How sure the steering answer is: 1 for its confidence, 0 for the others.', { ...key, ...s.labels }, s.value);
      }
      if (!n.rss) return;
      const r = n.nic;
      for (const s of oneOf('state', NIC_STATES, r.state)) add('virt_ebpf_nic_rss_state', 'What the NIC\'s RSS maps hold: 1 for its state, 0 for the others.', { ...key, ...s.labels }, s.value);
      add('virt_ebpf_nic_problems', 'Problems found with the NIC\'s eBPF fds (see status for the text).', key, r.problems.length);
      if (r.ebpf) {
        add('virt_ebpf_nic_program_id', 'Kernel id of the NIC\'s eBPF steering program.', key, r.ebpf.progId);
        r.ebpf.mapIds.forEach((id, i) => add('virt_ebpf_nic_map_id', 'Kernel ids of the NIC\'s RSS maps, by role.', { ...key, map: MAP_ROLES[i] }, id));
      }
      if (r.tableDigest !== undefined) add('virt_ebpf_nic_table_digest_info', 'Digest of the RSS configuration in the maps (docs/status-schema.md): equal digests, the same configuration.', { ...key, digest: r.tableDigest }, 1);
      for (const h of r.histogram ?? []) add('virt_ebpf_nic_table_entries', 'Indirection table entries in use that point at each queue.', { ...key, queue: String(h.queue) }, h.entries);
    });
  });
  return [...families.values()].flatMap(renderFamily).join('\n') + '\n';
}
