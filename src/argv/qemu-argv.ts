/**
 * The QEMU command line as data: find the virtio-net devices that want eBPF RSS, name the
 * fds the command line refers to, and rewrite device arguments to carry our fds.
 * Pure functions only; the exec/wrapper edges do the I/O.
 */
import { VirtEbpfError } from '../errors';
import { KeyVal, keyValGet, parseKeyVal, parseQemuBool, serializeKeyVal } from './keyval';

import { RSS_PROPERTY_NAMES, type RssProperty } from './handoff';
export type { RssProperty };

export interface DeviceArg {
  /** index in argv of the device's argument (the token after -device) */
  index: number;
  form: 'json' | 'keyval';
  driver: string;
  id?: string;
  netdev?: string;
  /** JSON form: the parsed object; keyval form: the ordered pairs */
  json?: Record<string, unknown>;
  keyval?: KeyVal;
}

export interface RssDevice extends DeviceArg {
  /** the device already names eBPF fds (set by the user): leave it alone */
  hasFds: boolean;
}

const DEVICE_OPTS = new Set(['-device', '--device']);
/** options whose values may name inherited fds (libvirt passes monitor, taps and vhost by number) */
const FD_BEARING_OPTS = new Set(['-chardev', '-netdev', '-nic', '-add-fd', '-device', '-object', '-blockdev', '-drive', '-fsdev', '-mon', '-qmp', '-incoming', '-audiodev', '-vnc']);
const FD_KEYS = new Set(['fd', 'fds', 'vhostfd', 'vhostfds', 'sock-fd']);

export function isVirtioNetDriver(driver: string): boolean {
  return /^virtio-net(-pci(-transitional|-non-transitional)?|-device|-ccw)?$/.test(driver);
}

function norm(opt: string): string {
  return opt.startsWith('--') ? opt.slice(1) : opt;
}

export function parseDeviceArg(text: string, index: number): DeviceArg {
  if (text.trimStart().startsWith('{')) {
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new VirtEbpfError('ARGV_INVALID', `-device argument ${index} is not valid JSON: ${(e as Error).message}`, {
        remedy: 'fix the -device JSON on the command line (QEMU would reject it too)',
      });
    }
    if (typeof json !== 'object' || json === null || Array.isArray(json) || typeof (json as { driver?: unknown }).driver !== 'string') {
      throw new VirtEbpfError('ARGV_INVALID', `-device argument ${index} is JSON without a "driver" string`, {
        remedy: 'give -device JSON objects a "driver" member',
      });
    }
    const o = json as Record<string, unknown>;
    return { index, form: 'json', driver: o.driver as string, id: str(o.id), netdev: str(o.netdev), json: o };
  }
  const kv = parseKeyVal(text, 'driver');
  return { index, form: 'keyval', driver: keyValGet(kv, 'driver') ?? '', id: keyValGet(kv, 'id'), netdev: keyValGet(kv, 'netdev'), keyval: kv };
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

export function deviceArgs(argv: readonly string[]): DeviceArg[] {
  const out: DeviceArg[] = [];
  for (let i = 0; i < argv.length - 1; i++) {
    if (DEVICE_OPTS.has(argv[i])) {
      out.push(parseDeviceArg(argv[i + 1], i + 1));
      i++;
    }
  }
  return out;
}

function rssOn(d: DeviceArg): boolean {
  const v = d.form === 'json' ? d.json!.rss : keyValGet(d.keyval!, 'rss');
  return parseQemuBool(v) === true;
}

function namesFds(d: DeviceArg): boolean {
  const has = (k: string) => (d.form === 'json' ? d.json![k] !== undefined : keyValGet(d.keyval!, k) !== undefined);
  return RSS_PROPERTY_NAMES.some(has);
}

/** Whether a device (from the command line or a QMP device_add) wants eBPF RSS fds, and already names some. */
export function isRssDevice(d: DeviceArg): { wants: boolean; hasFds: boolean } {
  return { wants: isVirtioNetDriver(d.driver) && rssOn(d), hasFds: namesFds(d) };
}

/** virtio-net devices with rss on, in command-line order. */
export function findRssDevices(argv: readonly string[]): RssDevice[] {
  return deviceArgs(argv)
    .map((d) => ({ d, rss: isRssDevice(d) }))
    .filter(({ rss }) => rss.wants)
    .map(({ d, rss }) => ({ ...d, hasFds: rss.hasFds }));
}

function fdNumbers(value: unknown): number[] {
  const s = typeof value === 'number' ? String(value) : typeof value === 'string' ? value : '';
  if (!/^\d+(:\d+)*$/.test(s)) return [];
  return s.split(':').map(Number);
}

function collectJson(v: unknown, out: Set<number>): void {
  if (Array.isArray(v)) return v.forEach((x) => collectJson(x, out));
  if (typeof v !== 'object' || v === null) return;
  for (const [k, x] of Object.entries(v)) {
    if (FD_KEYS.has(k)) fdNumbers(x).forEach((n) => out.add(n));
    else collectJson(x, out);
  }
}

/** Every fd number the command line refers to (monitor, taps, vhost, add-fd, …). */
export function namedFds(argv: readonly string[]): number[] {
  const out = new Set<number>();
  for (let i = 0; i < argv.length - 1; i++) {
    const opt = norm(argv[i]);
    if (!FD_BEARING_OPTS.has(opt)) continue;
    const v = argv[++i];
    if (opt === '-incoming') {
      const m = /^fd:(\d+)$/.exec(v);
      if (m) out.add(Number(m[1]));
      continue;
    }
    if (v.trimStart().startsWith('{')) {
      try {
        collectJson(JSON.parse(v), out);
      } catch {
        /* QEMU will reject it; nothing of ours to keep open */
      }
      continue;
    }
    for (const [k, x] of parseKeyVal(v)) if (FD_KEYS.has(k)) fdNumbers(x).forEach((n) => out.add(n));
  }
  return [...out].sort((a, b) => a - b);
}

const INT_TYPES = /^(u?int(8|16|32|64)?|size)$/;

/** Convert a key=value device to its JSON form, typing values by QEMU's property types. */
export function keyvalToJson(kv: KeyVal, propTypes: Readonly<Record<string, string>>): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const [k, v] of kv) {
    const t = propTypes[k];
    if (t === 'bool') {
      const b = parseQemuBool(v);
      if (b === undefined) {
        throw new VirtEbpfError('ARGV_INVALID', `-device property ${k}=${v} is not a boolean`, { remedy: `use ${k}=on or ${k}=off` });
      }
      o[k] = b;
    } else if (t !== undefined && INT_TYPES.test(t) && /^-?\d+$/.test(v)) {
      o[k] = Number(v);
    } else {
      o[k] = v;
    }
  }
  return o;
}

export function propertyValue(prop: RssProperty, fds: readonly (number | string)[]): string | string[] {
  return prop.type === 'list' ? fds.map(String) : fds.map(String).join(':');
}

/**
 * Give each listed device its fds. A key=value device is converted to JSON when the property is
 * a list (key=value cannot express a list); otherwise its form is kept.
 */
export function withRssFds(
  argv: readonly string[],
  assignments: ReadonlyArray<{ device: DeviceArg; fds: readonly (number | string)[] }>,
  prop: RssProperty,
  propTypes: Readonly<Record<string, string>> = {},
): string[] {
  const out = [...argv];
  for (const { device, fds } of assignments) {
    const value = propertyValue(prop, fds);
    if (device.form === 'keyval' && typeof value === 'string') {
      out[device.index] = serializeKeyVal([...device.keyval!, [prop.name, value]], 'driver');
    } else {
      const json = device.form === 'json' ? { ...device.json! } : keyvalToJson(device.keyval!, propTypes);
      json[prop.name] = value;
      out[device.index] = JSON.stringify(json);
    }
  }
  return out;
}

/** The value after the last occurrence of an option, e.g. `-name guest=foo,debug-threads=on`. */
export function optionValue(argv: readonly string[], opt: string): string | undefined {
  let v: string | undefined;
  for (let i = 0; i < argv.length - 1; i++) if (norm(argv[i]) === opt) v = argv[i + 1];
  return v;
}

/** The domain identity libvirt puts on the command line: `-name guest=NAME,…` and `-uuid`. */
export function domainIdentity(argv: readonly string[]): { name?: string; uuid?: string } {
  const nameArg = optionValue(argv, '-name');
  const name = nameArg === undefined ? undefined : keyValGet(parseKeyVal(nameArg, 'guest'), 'guest');
  return { name, uuid: optionValue(argv, '-uuid') };
}
