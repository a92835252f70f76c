/**
 * What QEMU's RSS object must look like before we load it as root (checked on the
 * QEMU 10.0.2 object). The broker loads only objects it fetched from trusted emulators, but an
 * exact shape check is cheap and turns "QEMU changed its object" into a clear refusal instead
 * of fds that QEMU would mmap with the wrong layout. Pure.
 */
import { VirtEbpfError } from '../errors';
import type { BpfMapSpec, BpfSpec, MapShape } from './spec';

export const RSS_PROGRAM = 'tun_rss_steering_prog';
/** QEMU ≥ 9 uses SEC("socket"); the 2021-era source used SEC("tun_rss_steering"). Either is fine: the type is set explicitly. */
export const RSS_PROGRAM_SECTIONS: readonly string[] = ['socket', 'tun_rss_steering'];
export const RSS_MAX_OBJECT_BYTES = 1024 * 1024;

export const BPF_PROG_TYPE_SOCKET_FILTER = 1;
export const BPF_MAP_TYPE_ARRAY = 2;
export const BPF_F_MMAPABLE = 0x400;

/** The order of fds in `ebpf-rss-fds` (and in an RssContext). */
export const RSS_ROLES = ['program', 'configuration', 'toeplitz_key', 'indirection_table'] as const;
export type RssRole = (typeof RSS_ROLES)[number];

export interface ExpectedMap extends MapShape {
  role: Exclude<RssRole, 'program'>;
}

/** Declaration order in the object equals the `ebpf-rss-fds` order. */
export const RSS_MAPS: readonly ExpectedMap[] = [
  { role: 'configuration', name: 'tap_rss_map_configurations', type: BPF_MAP_TYPE_ARRAY, keySize: 4, valueSize: 10, maxEntries: 1, flags: BPF_F_MMAPABLE },
  { role: 'toeplitz_key', name: 'tap_rss_map_toeplitz_key', type: BPF_MAP_TYPE_ARRAY, keySize: 4, valueSize: 40, maxEntries: 1, flags: BPF_F_MMAPABLE },
  { role: 'indirection_table', name: 'tap_rss_map_indirection_table', type: BPF_MAP_TYPE_ARRAY, keySize: 4, valueSize: 2, maxEntries: 128, flags: BPF_F_MMAPABLE },
];

const MAP_TYPE_NAMES: Record<number, string> = { 1: 'hash', 2: 'array', 3: 'prog_array', 5: 'percpu_hash', 6: 'percpu_array', 9: 'lru_hash', 12: 'array_of_maps', 13: 'hash_of_maps', 27: 'ringbuf' };
const hex = (n: number): string => `0x${n.toString(16)}`;
const typeName = (t: number): string => `${t}${MAP_TYPE_NAMES[t] ? ` (${MAP_TYPE_NAMES[t]})` : ''}`;

export const UNEXPECTED_REMEDY =
  'this QEMU build ships an RSS eBPF object this version of virt-ebpf does not know; upgrade virt-ebpf or use a supported QEMU (10.0.x is known to work)';

function mapProblems(got: BpfMapSpec, want: ExpectedMap): string[] {
  const p: string[] = [];
  const m = `map ${got.name}`;
  if (got.source !== 'btf') p.push(`${m} is a ${got.source} map, expected a BTF-defined map in .maps`);
  if (got.type !== want.type) p.push(`${m} has type ${typeName(got.type)}, expected ${typeName(want.type)}`);
  if (got.keySize !== want.keySize) p.push(`${m} has key size ${got.keySize}, expected ${want.keySize}`);
  if (got.valueSize !== want.valueSize) p.push(`${m} has value size ${got.valueSize}, expected ${want.valueSize}`);
  if (got.maxEntries !== want.maxEntries) p.push(`${m} has ${got.maxEntries} entries, expected ${want.maxEntries}`);
  if (got.flags !== want.flags) p.push(`${m} has flags ${hex(got.flags)}, expected ${hex(want.flags)} (BPF_F_MMAPABLE)`);
  // A pinned map would be shared with whatever sits at that bpffs path: never for a per-NIC context.
  if (got.pinning !== 0) p.push(`${m} asks to be pinned (pinning ${got.pinning}), expected none`);
  if (got.numaNode !== 0) p.push(`${m} sets numa_node ${got.numaNode}, expected none`);
  if (got.mapExtra !== 0) p.push(`${m} sets map_extra ${got.mapExtra}, expected none`);
  return p;
}

/** Every way `spec` differs from the RSS object we know; empty means it is acceptable. */
export function rssProblems(spec: BpfSpec): string[] {
  const p: string[] = [];
  if (spec.size > RSS_MAX_OBJECT_BYTES) p.push(`object is ${spec.size} bytes, over the ${RSS_MAX_OBJECT_BYTES}-byte limit`);

  const prog = spec.programs.find((x) => x.name === RSS_PROGRAM);
  if (!prog) p.push(`missing program ${RSS_PROGRAM}`);
  else if (!RSS_PROGRAM_SECTIONS.includes(prog.section)) p.push(`program ${RSS_PROGRAM} is in section ${prog.section}, expected ${RSS_PROGRAM_SECTIONS.join(' or ')}`);
  for (const x of spec.programs) if (x !== prog) p.push(`unexpected program ${x.name || '(unnamed)'} in section ${x.section}`);

  const known = new Set(RSS_MAPS.map((m) => m.name));
  for (const want of RSS_MAPS) {
    const got = spec.maps.find((m) => m.name === want.name);
    if (!got) p.push(`missing map ${want.name}`);
    else p.push(...mapProblems(got, want));
  }
  for (const m of spec.maps) if (!known.has(m.name)) p.push(`unexpected map ${m.name}`);
  const dupes = spec.maps.filter((m, i) => spec.maps.findIndex((o) => o.name === m.name) !== i);
  for (const d of dupes) p.push(`map ${d.name} is declared twice`);

  if (p.length === 0) {
    const order = spec.maps.map((m) => m.name);
    const want = RSS_MAPS.map((m) => m.name);
    if (order.join() !== want.join()) p.push(`maps are declared in the order ${order.join(', ')}; expected ${want.join(', ')}`);
  }
  return p;
}

/** Accept exactly QEMU's RSS object (one program, the three maps above); anything else is BPF_UNEXPECTED_OBJECT naming what differs. */
export function validateRssSpec(spec: BpfSpec): BpfSpec {
  const problems = rssProblems(spec);
  if (problems.length > 0) {
    const shown = problems.slice(0, 3).join('; ') + (problems.length > 3 ? `; and ${problems.length - 3} more` : '');
    throw new VirtEbpfError('BPF_UNEXPECTED_OBJECT', `unexpected RSS eBPF object: ${shown}`, {
      remedy: UNEXPECTED_REMEDY,
      detail: problems.join('\n'),
      fields: { problems },
    });
  }
  return spec;
}

/** QEMU's `struct EBPFRSSConfig` (packed, host byte order), the single value of the configuration map. */
export interface RssConfig {
  redirect: boolean;
  populateHash: boolean;
  /** VIRTIO_NET_RSS_HASH_TYPE_* bits */
  hashTypes: number;
  indirectionsLen: number;
  defaultQueue: number;
}

export const RSS_CONFIG_SIZE = 10;

/** Decode the configuration value. Little-endian: QEMU writes it in host order and we only support LE hosts (x86_64, aarch64). */
export function decodeRssConfig(value: Uint8Array): RssConfig {
  if (value.length < RSS_CONFIG_SIZE) {
    throw new VirtEbpfError('BPF_UNEXPECTED_OBJECT', `RSS configuration value is ${value.length} bytes, expected ${RSS_CONFIG_SIZE}`, {
      remedy: 'read the whole value of tap_rss_map_configurations (key 0)',
    });
  }
  const b = Buffer.from(value.buffer, value.byteOffset, RSS_CONFIG_SIZE);
  return {
    redirect: b[0] !== 0,
    populateHash: b[1] !== 0,
    hashTypes: b.readUInt32LE(2),
    indirectionsLen: b.readUInt16LE(6),
    defaultQueue: b.readUInt16LE(8),
  };
}
