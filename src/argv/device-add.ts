/**
 * A QMP hot-plug line (`device_add`, `netdev_add`) as the hot-plug shim sees it inside QEMU
 * (bytes, one line): does it add something that wants fds of one of the kinds (handoff.ts), and
 * where do the fds go? The same rules as for the command line (qemu-argv.ts, and host-policy.ts
 * under the host-wide mode). The answer is a byte offset in the line — just inside the
 * `arguments` object — where the shim splices the property in; the shim itself knows no rule.
 * Pure.
 */
import { handoffOf, type DeviceArg } from './qemu-argv';
import { hostTurnsRssOn, type HostRss } from './host-policy';
import { HANDOFFS, RSS_HANDOFF, typeKey, type HandoffKind } from './handoff';

export interface DeviceAddPlan {
  /** byte offset just after the `{` that opens `arguments` */
  at: number;
  /** the device's id, for messages */
  id?: string;
  device: DeviceArg;
  /** the kind of fds it gets */
  kind: HandoffKind;
  /** the host policy turns rss on: `"rss":true,` goes in at `at` with the fds */
  addRss: boolean;
}

const WS = new Set([0x20, 0x09, 0x0a, 0x0d]);

function skipWs(b: Buffer, i: number): number {
  while (i < b.length && WS.has(b[i])) i++;
  return i;
}

/** Just past the JSON string starting at b[i] (a quote), or -1. */
function stringEnd(b: Buffer, i: number): number {
  for (i++; i < b.length; i++) {
    if (b[i] === 0x5c) i++;
    else if (b[i] === 0x22) return i + 1;
  }
  return -1;
}

/** Just past the JSON value starting at b[i], or -1 (only nesting and strings matter here). */
function valueEnd(b: Buffer, i: number): number {
  let depth = 0;
  for (; i < b.length; i++) {
    const c = b[i];
    if (c === 0x22) {
      i = stringEnd(b, i) - 1;
      if (i < 0) return -1;
      if (depth === 0) return i + 1;
    } else if (c === 0x7b || c === 0x5b) {
      depth++;
    } else if (c === 0x7d || c === 0x5d) {
      if (depth === 0) return i; // the end of the object or array a scalar stands in
      if (--depth === 0) return i + 1;
    } else if (depth === 0 && (c === 0x2c || WS.has(c))) {
      return i;
    }
  }
  return depth === 0 ? i : -1;
}

/**
 * Byte offsets of each member of the object at b[i] ('{'): key (decoded) → offset of its value.
 * undefined when the object is malformed or has a key twice (QEMU refuses duplicate keys; the
 * line then goes to QEMU as it is, to be refused there).
 */
function members(b: Buffer, i: number): Map<string, number> | undefined {
  if (b[i] !== 0x7b) return undefined;
  const out = new Map<string, number>();
  i = skipWs(b, i + 1);
  if (b[i] === 0x7d) return out;
  for (;;) {
    if (b[i] !== 0x22) return undefined;
    const ke = stringEnd(b, i);
    if (ke < 0) return undefined;
    let key: string;
    try {
      key = JSON.parse(b.subarray(i, ke).toString('utf8')) as string;
    } catch {
      return undefined;
    }
    i = skipWs(b, ke);
    if (b[i] !== 0x3a) return undefined;
    const v = skipWs(b, i + 1);
    if (out.has(key)) return undefined;
    out.set(key, v);
    const ve = valueEnd(b, v);
    if (ve < 0) return undefined;
    i = skipWs(b, ve);
    if (b[i] === 0x7d) return out;
    if (b[i] !== 0x2c) return undefined;
    i = skipWs(b, i + 1);
  }
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

/** Where a hot-plug that wants fds of one of `kinds` takes them; null for any other line. */
export function planDeviceAdd(line: Buffer, hostRss: HostRss = 'off', kinds: readonly HandoffKind[] = HANDOFFS): DeviceAddPlan | null {
  let msg: unknown;
  try {
    msg = JSON.parse(line.toString('utf8'));
  } catch {
    return null;
  }
  if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) return null;
  const m = msg as Record<string, unknown>;
  const args = m.arguments;
  const option = kinds.find((k) => k.qmpCommand === m.execute)?.option;
  if (!option || typeof args !== 'object' || args === null || Array.isArray(args)) return null;
  const a = args as Record<string, unknown>;
  const type = a[typeKey(option)];
  if (typeof type !== 'string') return null;
  const device: DeviceArg = { index: -1, form: 'json', driver: type, id: str(a.id), netdev: str(a.netdev), json: a };
  const wanted = handoffOf(device, option, kinds);
  const addRss = !wanted && option === RSS_HANDOFF.option && hostTurnsRssOn(device, hostRss);
  const kind = wanted?.kind ?? (addRss ? RSS_HANDOFF : undefined);
  const hasFds = wanted ? wanted.hasFds : kind?.properties.some((p) => a[p.name] !== undefined);
  if (!kind || hasFds) return null;
  const top = members(line, skipWs(line, 0));
  const argsAt = top?.get('arguments');
  if (argsAt === undefined || members(line, argsAt) === undefined) return null;
  return { at: argsAt + 1, id: device.id, device, kind, addRss };
}
