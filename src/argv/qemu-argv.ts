/**
 * The QEMU command line as data: find the devices and netdevs that want fds of ours (the kinds
 * of handoff.ts), name the fds the command line refers to, and rewrite their arguments to carry
 * our fds. Pure functions only; the exec/wrapper edges do the I/O.
 */
import { VirtEbpfError } from '../errors';
import { KeyVal, keyValGet, parseKeyVal, parseQemuBool, serializeKeyVal } from './keyval';

import { HANDOFFS, isVirtioNetDriver, typeKey, type FdPropertyRef, type HandoffKind, type RssProperty } from './handoff';
export type { RssProperty };
export { isVirtioNetDriver };

export interface DeviceArg {
  /** index in argv of the argument (the token after -device or -netdev) */
  index: number;
  form: 'json' | 'keyval';
  /** a device's driver; a netdev's type */
  driver: string;
  id?: string;
  netdev?: string;
  /** JSON form: the parsed object; keyval form: the ordered pairs */
  json?: Record<string, unknown>;
  keyval?: KeyVal;
}

export interface HandoffDevice extends DeviceArg {
  /** the kind of fds it wants */
  kind: HandoffKind;
  /** it already names fds of that kind (set by the user): leave it alone */
  hasFds: boolean;
}

/** An RSS device (the RSS kind's HandoffDevice). */
export type RssDevice = HandoffDevice;

/** options whose values may name inherited fds (libvirt passes monitor, taps and vhost by number) */
const FD_BEARING_OPTS = new Set(['-chardev', '-netdev', '-nic', '-add-fd', '-device', '-object', '-blockdev', '-drive', '-fsdev', '-mon', '-qmp', '-incoming', '-audiodev', '-vnc']);
/** keys whose values are fd numbers: QEMU's own, and every kind's properties (a user may set them) */
const FD_KEYS = new Set(['fd', 'fds', 'vhostfd', 'vhostfds', 'sock-fd', 'sock-fds', ...HANDOFFS.flatMap((k) => k.properties.map((p) => p.name))]);

function norm(opt: string): string {
  return opt.startsWith('--') ? opt.slice(1) : opt;
}

export function parseDeviceArg(text: string, index: number, option: HandoffKind['option'] = '-device'): DeviceArg {
  const tk = typeKey(option);
  if (text.trimStart().startsWith('{')) {
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new VirtEbpfError('ARGV_INVALID', `${option} argument ${index} is not valid JSON: ${(e as Error).message}`, {
        remedy: `fix the ${option} JSON on the command line (QEMU would reject it too)`,
      });
    }
    if (typeof json !== 'object' || json === null || Array.isArray(json) || typeof (json as Record<string, unknown>)[tk] !== 'string') {
      throw new VirtEbpfError('ARGV_INVALID', `${option} argument ${index} is JSON without a "${tk}" string`, {
        remedy: `give ${option} JSON objects a "${tk}" member`,
      });
    }
    const o = json as Record<string, unknown>;
    return { index, form: 'json', driver: o[tk] as string, id: str(o.id), netdev: str(o.netdev), json: o };
  }
  const kv = parseKeyVal(text, tk);
  return { index, form: 'keyval', driver: keyValGet(kv, tk) ?? '', id: keyValGet(kv, 'id'), netdev: keyValGet(kv, 'netdev'), keyval: kv };
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

/** Every argument of one option (`-device`, `-netdev`; `--` spellings too), in command-line order. */
export function optionArgs(argv: readonly string[], option: HandoffKind['option']): DeviceArg[] {
  const out: DeviceArg[] = [];
  for (let i = 0; i < argv.length - 1; i++) {
    if (norm(argv[i]) === option) {
      out.push(parseDeviceArg(argv[i + 1], i + 1, option));
      i++;
    }
  }
  return out;
}

export function deviceArgs(argv: readonly string[]): DeviceArg[] {
  return optionArgs(argv, '-device');
}

function getter(d: DeviceArg): (key: string) => unknown {
  return (k) => (d.form === 'json' ? d.json![k] : keyValGet(d.keyval!, k));
}

/**
 * The kind of fds an argument of `option` (from the command line or a QMP command) wants, and
 * whether it already names some of that kind; null when it wants none.
 */
export function handoffOf(d: DeviceArg, option: HandoffKind['option'], kinds: readonly HandoffKind[] = HANDOFFS): { kind: HandoffKind; hasFds: boolean } | null {
  const get = getter(d);
  const kind = kinds.find((k) => k.option === option && k.wants(d.driver, get));
  return kind ? { kind, hasFds: kind.properties.some((p) => get(p.name) !== undefined) } : null;
}

/** Every device and netdev that wants fds of one of `kinds`, in command-line order. */
export function findHandoffDevices(argv: readonly string[], kinds: readonly HandoffKind[] = HANDOFFS): HandoffDevice[] {
  const options = [...new Set(kinds.map((k) => k.option))];
  return options
    .flatMap((option) => optionArgs(argv, option).flatMap((d) => {
      const h = handoffOf(d, option, kinds);
      return h ? [{ ...d, ...h }] : [];
    }))
    .sort((a, b) => a.index - b.index);
}

/** virtio-net devices with rss on, in command-line order. */
export function findRssDevices(argv: readonly string[]): RssDevice[] {
  return findHandoffDevices(argv).filter((d) => d.kind.kind === 'rss');
}

function fdNumbers(value: unknown): number[] {
  if (Array.isArray(value)) return value.flatMap(fdNumbers);
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

export function propertyValue(prop: FdPropertyRef, fds: readonly (number | string)[]): string | string[] {
  return prop.type === 'list' ? fds.map(String) : fds.map(String).join(':');
}

/**
 * Give each listed device its fds under its property. A key=value device is converted to JSON
 * when the property is a list (key=value cannot express a list); otherwise its form is kept.
 */
export function withFds(
  argv: readonly string[],
  assignments: ReadonlyArray<{ device: HandoffDevice; fds: readonly (number | string)[]; prop: FdPropertyRef }>,
  propTypes: Readonly<Record<string, string>> = {},
): string[] {
  const out = [...argv];
  for (const { device, fds, prop } of assignments) {
    const value = propertyValue(prop, fds);
    if (device.form === 'keyval' && typeof value === 'string') {
      out[device.index] = serializeKeyVal([...device.keyval!, [prop.name, value]], typeKey(device.kind.option));
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
