/**
 * What a QEMU command line says about its RSS NICs: every virtio-net device that has `rss` on
 * or names eBPF fds (`ebpf-rss-fds` list / `ebpf_rss_fds` string), with its id, MAC, backend
 * (tap name, queue count, vhost), hash reporting and hash-type settings and the fd entries it
 * was given; the other virtio-net devices apart (`plainNics`: no RSS, so no steering). Works on
 * libvirt's JSON form and on key=value. Pure: the /proc side is in discover.ts.
 */
import { deviceArgs, domainIdentity, isVirtioNetDriver, keyValGet, parseKeyVal, parseQemuBool, RSS_HANDOFF, type DeviceArg, type RssProperty } from '../argv';
import { RSS_MAPS, type RssRole } from '../bpf/rss';

export type FdsProperty = RssProperty['name'];

export interface NetdevArgs {
  id: string;
  type: string;
  /** `ifname=` when given (libvirt passes taps as fds instead). */
  ifname?: string;
  /** Tap fds QEMU inherited (`fd=`, `fds=`). */
  fds: number[];
  /** `queues=`, else the number of tap fds, else 1. */
  queues: number;
  vhost: boolean;
}

export interface NicArgs {
  /** Index of the device's argument in argv. */
  index: number;
  driver: string;
  id?: string;
  netdev?: string;
  mac?: string;
  rss: boolean;
  /** The eBPF fds the device names, as written: digits are inherited fds, other strings QMP `getfd` names. */
  ebpfFds?: { property: FdsProperty; entries: string[] };
  /** `hash` when the command line sets it (libvirt's rss_hash_report): QEMU offers the guest VIRTIO_NET_F_HASH_REPORT. */
  hashReport?: boolean;
  /** The `hash-*` properties (QEMU >= 10.1) the command line sets, as on/off/auto. */
  hashSettings?: Record<string, string>;
  backend?: NetdevArgs;
}

export interface QemuArgs {
  domain: { name?: string; uuid?: string };
  nics: NicArgs[];
  /** The virtio-net devices with neither rss on nor eBPF fds. */
  plainNics: NicArgs[];
}

function get(d: { json?: Record<string, unknown>; keyval?: Array<[string, string]> }, key: string): unknown {
  return d.json ? d.json[key] : keyValGet(d.keyval!, key);
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : typeof v === 'number' ? String(v) : undefined;
}

function fdList(v: unknown): number[] {
  const s = str(v);
  return s !== undefined && /^\d+(:\d+)*$/.test(s) ? s.split(':').map(Number) : [];
}

function ebpfFds(d: DeviceArg): NicArgs['ebpfFds'] {
  for (const p of RSS_HANDOFF.properties) {
    const v = get(d, p.name);
    if (v === undefined) continue;
    const entries = Array.isArray(v) ? v.map((x) => String(x)) : (str(v) ?? '').split(':');
    return { property: p.name, entries };
  }
  return undefined;
}

/** Every `-netdev`, JSON or key=value, by id. */
export function parseNetdevs(argv: readonly string[]): Map<string, NetdevArgs> {
  const out = new Map<string, NetdevArgs>();
  for (let i = 0; i < argv.length - 1; i++) {
    if (argv[i] !== '-netdev' && argv[i] !== '--netdev') continue;
    const text = argv[++i];
    let d: { json?: Record<string, unknown>; keyval?: Array<[string, string]> };
    if (text.trimStart().startsWith('{')) {
      try {
        const j = JSON.parse(text) as unknown;
        if (typeof j !== 'object' || j === null || Array.isArray(j)) continue;
        d = { json: j as Record<string, unknown> };
      } catch {
        continue; // QEMU would have refused it; nothing to report on
      }
    } else {
      d = { keyval: parseKeyVal(text, 'type') };
    }
    const id = str(get(d, 'id'));
    if (id === undefined) continue;
    const fds = [...fdList(get(d, 'fd')), ...fdList(get(d, 'fds'))];
    const q = Number(str(get(d, 'queues')));
    const vhostFds = get(d, 'vhostfd') !== undefined || get(d, 'vhostfds') !== undefined;
    out.set(id, {
      id,
      type: str(get(d, 'type')) ?? '',
      ...(str(get(d, 'ifname')) !== undefined ? { ifname: str(get(d, 'ifname')) } : {}),
      fds,
      queues: Number.isInteger(q) && q > 0 ? q : Math.max(fds.length, 1),
      vhost: parseQemuBool(get(d, 'vhost')) === true || vhostFds,
    });
  }
  return out;
}

function onOffAuto(v: unknown): string | undefined {
  if (v === 'auto') return 'auto';
  const b = parseQemuBool(v);
  return b === undefined ? undefined : b ? 'on' : 'off';
}

/** The `hash-*` settings of a device, or undefined when it sets none. */
function hashSettings(d: DeviceArg): Record<string, string> | undefined {
  const keys = d.json ? Object.keys(d.json) : d.keyval!.map(([k]) => k);
  const out: Record<string, string> = {};
  for (const k of keys.filter((x) => /^hash-[a-z0-9]+$/.test(x)).sort()) {
    const v = onOffAuto(get(d, k));
    if (v !== undefined) out[k] = v;
  }
  return Object.keys(out).length ? out : undefined;
}

/** The virtio-net devices that want RSS or carry eBPF fds, in command-line order, the others, and the domain identity. */
export function parseQemuRssArgs(argv: readonly string[]): QemuArgs {
  let devices: DeviceArg[];
  try {
    devices = deviceArgs(argv);
  } catch {
    devices = []; // a -device QEMU itself would reject: this process is not running as we think
  }
  const netdevs = parseNetdevs(argv);
  const nics: NicArgs[] = [];
  const plainNics: NicArgs[] = [];
  for (const d of devices) {
    if (!isVirtioNetDriver(d.driver)) continue;
    const rss = parseQemuBool(get(d, 'rss')) === true;
    const fds = ebpfFds(d);
    const mac = str(get(d, 'mac'));
    const backend = d.netdev ? netdevs.get(d.netdev) : undefined;
    const hash = parseQemuBool(get(d, 'hash'));
    const settings = hashSettings(d);
    (rss || fds ? nics : plainNics).push({
      index: d.index,
      driver: d.driver,
      ...(d.id !== undefined ? { id: d.id } : {}),
      ...(d.netdev !== undefined ? { netdev: d.netdev } : {}),
      ...(mac !== undefined ? { mac } : {}),
      rss,
      ...(fds ? { ebpfFds: fds } : {}),
      ...(hash !== undefined ? { hashReport: hash } : {}),
      ...(settings ? { hashSettings: settings } : {}),
      ...(backend ? { backend } : {}),
    });
  }
  const { name, uuid } = domainIdentity(argv);
  return { domain: { ...(name !== undefined ? { name } : {}), ...(uuid !== undefined ? { uuid } : {}) }, nics, plainNics };
}

/** The fd numbers of `ebpfFds` when all four (or the helper protocol's list) are inherited numbers. */
export function numericFds(nic: NicArgs): number[] | undefined {
  const e = nic.ebpfFds?.entries;
  if (!e || e.length === 0 || e.some((x) => !/^\d+$/.test(x))) return undefined;
  return e.map(Number);
}

/** Whether argv[0] or the executable is a QEMU system emulator (or a wrapper named like one). */
export function looksLikeQemu(argv0: string | undefined, exe?: string): boolean {
  const base = (p: string | undefined): string => (p ?? '').split('/').pop() ?? '';
  return [argv0, exe].some((p) => /^qemu(-system-|-kvm$)/.test(base(p)) || base(p) === 'kvm');
}

/** A map as /proc fdinfo or BPF_OBJ_GET_INFO_BY_FD describes it. */
export interface MapShape {
  id: number;
  valueSize: number;
  maxEntries: number;
}

/**
 * Which map is which, by shape: configuration (10-byte value, 1 entry), key (40, 1),
 * indirection table (2, 128). Returns the ids in `ebpf-rss-fds` order, or the reason it cannot.
 */
export function assignRssMapRoles(maps: readonly MapShape[]): { ids: [number, number, number] } | { problem: string } {
  const ids: number[] = [];
  for (const want of RSS_MAPS) {
    const hits = maps.filter((m) => m.valueSize === want.valueSize && m.maxEntries === want.maxEntries);
    if (hits.length !== 1) {
      const role = want.role as RssRole;
      return { problem: `${hits.length === 0 ? 'no' : 'more than one'} map shaped like the RSS ${role.replace('_', ' ')} (value ${want.valueSize} B, ${want.maxEntries} entries) among ${maps.map((m) => m.id).join(', ') || 'none'}` };
    }
    ids.push(hits[0].id);
  }
  return { ids: ids as [number, number, number] };
}
