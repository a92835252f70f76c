/**
 * The fds virt-ebpf hands to QEMU, as one table of kinds. A kind says what takes its fds (a
 * `-device` or a `-netdev`, hot-plugged by `device_add` or `netdev_add`), which of those want
 * them, which properties carry them (in order of preference), their type as QEMU declares it
 * and as written, and how many fds a context has. Everything that names a property or a kind
 * reads it here: the probe (which property this QEMU has), the command-line and monitor planners
 * (argv/, the broker's exec-plan and device-plan), status (which fds a running QEMU names), the
 * shims (the constants C is generated from). A new property of a kind is one entry in its
 * `properties`; what a new kind takes besides its entry here: docs/architecture.md, "What a
 * change touches". Pure data.
 */
import { parseQemuBool } from './keyval';

export interface FdProperty {
  /** the property's name */
  readonly name: string;
  /** how it is written: a JSON list of fd names, or one string of names joined by ':' */
  readonly type: 'list' | 'string';
  /** the types QEMU's device-list-properties gives it */
  readonly qomTypes: readonly string[];
}

/** A property as the code passes it around (descriptors, caches): its name and how it is written. */
export interface FdPropertyRef {
  readonly name: string;
  readonly type: FdProperty['type'];
}

export interface HandoffKind {
  readonly kind: string;
  /** the command-line option that creates what takes the fds */
  readonly option: '-device' | '-netdev';
  /** the QMP command that hot-plugs it */
  readonly qmpCommand: 'device_add' | 'netdev_add';
  /**
   * A word every such command that wants fds contains: the hot-plug shim sends a line to the
   * broker when it names `qmpCommand` and this (its only look at a line; the broker decides).
   */
  readonly marker: string;
  /**
   * The QMP command a manager sends just before `qmpCommand` for such a device, if any (libvirt
   * adds a NIC's netdev, then its device): the hot-plug shim connects to the broker when it
   * reads one, so the broker sets the connection up (credentials, the peer's domain) while QEMU
   * adds the netdev, and the `qmpCommand` line that follows only sends its request. The shim lets
   * that connection go at the next line that is not one it sends to the broker.
   */
  readonly warmOn?: 'netdev_add';
  /** fds in one context, in the order the property takes them */
  readonly fdsPerContext: number;
  /** the properties that carry them, the one to prefer first */
  readonly properties: readonly FdProperty[];
  /** whether a `type` (a device's driver, a netdev's type) with these properties wants this kind's fds */
  wants(type: string, get: (key: string) => unknown): boolean;
}

/** The key an option's object names its type by: `driver` for -device, `type` for -netdev. */
export function typeKey(option: HandoffKind['option']): 'driver' | 'type' {
  return option === '-device' ? 'driver' : 'type';
}

export function isVirtioNetDriver(driver: string): boolean {
  return /^virtio-net(-pci(-transitional|-non-transitional)?|-device|-ccw)?$/.test(driver);
}

/** virtio-net eBPF RSS: the steering program and its three maps (bpf/rss.ts has their order). */
export const RSS_HANDOFF = {
  kind: 'rss',
  option: '-device',
  qmpCommand: 'device_add',
  marker: 'rss',
  warmOn: 'netdev_add',
  fdsPerContext: 4,
  properties: [
    { name: 'ebpf-rss-fds', type: 'list', qomTypes: ['list'] },
    { name: 'ebpf_rss_fds', type: 'string', qomTypes: ['str', 'string'] },
  ],
  wants: (driver: string, get: (key: string) => unknown) => isVirtioNetDriver(driver) && parseQemuBool(get('rss')) === true,
} as const satisfies HandoffKind;

/** Every kind, in the order the planners look (a device wants the first kind that wants it). */
export const HANDOFFS: readonly HandoffKind[] = [RSS_HANDOFF];

/** The table's entry for a kind's name; an unknown name is a programming error. */
export function handoffKind(kind: string): HandoffKind {
  const k = HANDOFFS.find((x) => x.kind === kind);
  if (!k) throw new Error(`no handoff kind ${kind}`);
  return k;
}

type Props = (typeof RSS_HANDOFF.properties)[number];
/** An RSS property as the code passes it around: its name and how it is written. */
export type RssProperty = { [P in Props as P['name']]: { name: P['name']; type: P['type'] } }[Props['name']];

export const RSS_PROPERTY_NAMES: readonly string[] = RSS_HANDOFF.properties.map((p) => p.name);

/** The table's entry for a property name, or undefined. */
export function rssProperty(name: string): RssProperty | undefined {
  const p = RSS_HANDOFF.properties.find((x) => x.name === name);
  return p ? ({ name: p.name, type: p.type } as RssProperty) : undefined;
}

/** Whether {name, type} is one of the table's properties as written (caches and replies carry it). */
export function isRssProperty(v: unknown): v is RssProperty {
  if (typeof v !== 'object' || v === null || Object.keys(v).length !== 2) return false;
  const o = v as { name?: unknown; type?: unknown };
  return RSS_HANDOFF.properties.some((p) => p.name === o.name && p.type === o.type);
}
