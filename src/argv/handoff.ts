/**
 * The fds virt-ebpf hands to QEMU, as one table: which device properties carry a context's fds
 * (in order of preference), their type as QEMU declares it and as written on a device, and how
 * many fds a context has. Everything that names a property reads it here: the probe (which one
 * this QEMU has), the command-line and monitor planners (argv/, the broker's exec-plan and
 * device-plan), status (which fds a running QEMU names), the shims' refusal (the constants C is
 * generated from). A new property of the same kind is one entry below. Pure data.
 */

export interface FdProperty {
  /** the device property's name */
  readonly name: string;
  /** how it is written: a JSON list of fd names, or one string of names joined by ':' */
  readonly type: 'list' | 'string';
  /** the types QEMU's device-list-properties gives it */
  readonly qomTypes: readonly string[];
}

export interface HandoffKind {
  readonly kind: 'rss';
  /** fds in one context, in the order the property takes them */
  readonly fdsPerContext: number;
  /** the properties that carry them, the one to prefer first */
  readonly properties: readonly FdProperty[];
}

/** virtio-net eBPF RSS: the steering program and its three maps (bpf/rss.ts has their order). */
export const RSS_HANDOFF = {
  kind: 'rss',
  fdsPerContext: 4,
  properties: [
    { name: 'ebpf-rss-fds', type: 'list', qomTypes: ['list'] },
    { name: 'ebpf_rss_fds', type: 'string', qomTypes: ['str', 'string'] },
  ],
} as const satisfies HandoffKind;

type Props = (typeof RSS_HANDOFF.properties)[number];
/** A property as the code passes it around: its name and how it is written. */
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
