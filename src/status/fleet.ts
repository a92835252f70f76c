/**
 * What a fleet collector reads from `status --json` besides the domains: the schema version,
 * the host, when the facts were collected, and a digest of each NIC's RSS configuration that
 * compares across hosts (docs/status-schema.md defines all of it). Pure.
 */
import { createHash } from 'node:crypto';
import type { RssView, StatusReport } from './format';

/** The JSON document's schema; the number changes only when a v1 reader would misread a document. */
export const STATUS_SCHEMA = 'virt-ebpf.status/v1';

/** Where the host UUID comes from, in libvirt's own order (libvirtd.conf). */
export type HostUuidSource = 'host_uuid' | 'machine-id' | 'smbios';

export interface HostFacts {
  /** The kernel's host name (uname -n). */
  name: string;
  /** The UUID libvirt reports for the host (`virsh capabilities`), lowercase, when it can be known without asking libvirt. */
  uuid?: string;
  /** Which of libvirt's sources gave `uuid`, or would have (with `uuidProblem`). */
  uuidSource?: HostUuidSource;
  /** Why `uuid` is absent. */
  uuidProblem?: string;
}

export type StatusDocument = { schema: typeof STATUS_SCHEMA; collectedAt: string; host: HostFacts } & StatusReport;

export function statusDocument(report: StatusReport, host: HostFacts, collectedAt: Date): StatusDocument {
  return { schema: STATUS_SCHEMA, collectedAt: collectedAt.toISOString(), host, ...report };
}

/**
 * The text the table digest hashes: every field of the RSS configuration in the maps, one
 * `name=value` line each, decimal numbers, the key as lowercase hex, the table entries in use
 * comma-separated, each line ending in a newline.
 */
export function tableDigestInput(v: RssView): string {
  return [
    'virt-ebpf.rss/v1',
    `redirect=${v.redirect ? 1 : 0}`,
    `populate_hash=${v.populateHash ? 1 : 0}`,
    `hash_types=${v.hashTypes}`,
    `indirections_len=${v.indirectionsLen}`,
    `default_queue=${v.defaultQueue}`,
    `key=${v.key}`,
    `table=${v.table.join(',')}`,
    '',
  ].join('\n');
}

/** `sha256:` and the lowercase hex SHA-256 of tableDigestInput: equal digests, the same RSS configuration in the maps. */
export function tableDigest(v: RssView): string {
  return `sha256:${createHash('sha256').update(tableDigestInput(v), 'utf8').digest('hex')}`;
}

/** A UUID as libvirt accepts it (virUUIDParse, virUUIDIsValid): lowercase with dashes, or undefined. */
export function libvirtUuid(text: string | undefined): string | undefined {
  const hex = text?.trim().toLowerCase().replace(/[-\s]/g, '');
  if (hex === undefined || !/^[0-9a-f]{32}$/.test(hex)) return undefined;
  if (new Set(hex).size === 1) return undefined; // libvirt rejects a UUID whose digits are all the same
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function confString(text: string, key: string): string | undefined {
  return new RegExp(`^[ \\t]*${key}[ \\t]*=[ \\t]*"([^"]*)"`, 'm').exec(text)?.[1];
}

/**
 * The host UUID libvirtd uses, decided the way it decides: `host_uuid` in libvirtd.conf, else
 * `host_uuid_source` ("smbios", the default: the SMBIOS system UUID, which the kernel shows as
 * /sys/class/dmi/id/product_uuid; "machine-id": /etc/machine-id). Where libvirt would make up a
 * temporary UUID, only libvirt knows it: absent, with why.
 */
export function hostUuidFrom(src: { libvirtdConf?: string; productUuid?: string; machineId?: string }): Omit<HostFacts, 'name'> {
  const conf = src.libvirtdConf ?? '';
  const set = confString(conf, 'host_uuid');
  if (set !== undefined) {
    const uuid = libvirtUuid(set);
    return uuid ? { uuid, uuidSource: 'host_uuid' } : { uuidSource: 'host_uuid', uuidProblem: `libvirtd.conf host_uuid "${set}" is not a UUID libvirt accepts` };
  }
  const source = confString(conf, 'host_uuid_source') ?? 'smbios';
  if (source === 'machine-id') {
    const uuid = libvirtUuid(src.machineId);
    return uuid ? { uuid, uuidSource: 'machine-id' } : { uuidSource: 'machine-id', uuidProblem: '/etc/machine-id holds no usable UUID: libvirt makes up a temporary one (virsh capabilities shows it)' };
  }
  if (source !== 'smbios') return { uuidProblem: `libvirtd.conf host_uuid_source "${source}" is neither smbios nor machine-id` };
  const uuid = libvirtUuid(src.productUuid);
  if (uuid) return { uuid, uuidSource: 'smbios' };
  return {
    uuidSource: 'smbios',
    uuidProblem: `${src.productUuid === undefined ? 'no SMBIOS system UUID (/sys/class/dmi/id/product_uuid)' : 'the SMBIOS system UUID is not valid'}: libvirt makes up a temporary one (virsh capabilities shows it); set host_uuid in libvirtd.conf to make it stable`,
  };
}
