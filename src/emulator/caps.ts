/**
 * Emulator capabilities as plain data, and the pure decision that turns a recorded probe
 * transcript into them. Everything here is deterministic and free of I/O, so recorded
 * transcripts of real QEMU builds replay through exactly the code the live probe runs.
 */
import { createHash } from 'node:crypto';
import { isRssProperty, RSS_HANDOFF, rssProperty, type RssProperty } from '../argv';
import { VirtEbpfError } from '../errors';
import {
  DeviceProperty,
  QemuVersion,
  QmpReply,
  RSS_HELPER_NAME,
  decodeBase64Strict,
  parseCommandNames,
  parseDeviceProperties,
  parseEbpfObject,
  parseHelperPaths,
  parseVersion,
} from '../qmp';
import { isJsonObject } from '../json';

export type { RssProperty } from '../argv';
export type RssProtocol = 'request-ebpf' | 'helper';

/** What makes "the same emulator": a replaced or touched binary must be probed again. */
export interface BinaryIdentity {
  realpath: string;
  dev: number;
  ino: number;
  size: number;
  mtimeMs: number;
  ctimeMs: number;
}

export interface EmulatorCaps {
  /** as the caller named it */
  path: string;
  realpath: string;
  identity: BinaryIdentity;
  version: QemuVersion;
  supported: boolean;
  /** why not supported (absent when supported) */
  reason?: string;
  protocol: RssProtocol | null;
  property: RssProperty | null;
  /**
   * QOM type of every property of the virtio-net device probed (e.g. mq: "bool", vectors:
   * "uint32"), so a key=value -device can be rewritten as typed JSON; {} if there was none.
   */
  deviceProps: Record<string, string>;
  /**
   * The device's per-hash-type properties (`hash-ipv4`, `hash-tcp6ex`, …, on/off/auto, QEMU >=
   * 10.1) with the default QEMU reports for each: which hash types QEMU advertises to the guest
   * besides `rss`/`hash`. {} for an emulator without them.
   */
  hashProps: Record<string, string>;
  /** request-ebpf: the ELF object, base64 */
  rssObject?: string;
  rssObjectSha256?: string;
  /** helper protocol: absolute path QEMU names for qemu-ebpf-rss-helper */
  helperPath?: string;
  /** ISO 8601 */
  probedAt: string;
}

/** One command and QEMU's reply, as recorded (libvirt's .replies files, in JSON). */
export interface QmpExchange {
  execute: string;
  arguments?: Record<string, unknown>;
  reply: QmpReply;
}

export interface ProbeTranscript {
  greeting: Record<string, unknown>;
  exchanges: QmpExchange[];
}

export const RSS_DEVICE = 'virtio-net-pci';
/**
 * Asked only when RSS_DEVICE does not exist (e.g. qemu-system-x86_64-microvm, which has no
 * PCI): the bare virtio-net device carries the same rss/ebpf properties on every transport.
 */
export const FALLBACK_RSS_DEVICE = 'virtio-net-device';
const HELPER_COMMANDS = ['query-helper-paths', 'find-ebpf-rss-helper'] as const;

/** The first round of probe commands; independent of each other, so they can be pipelined. */
export const BASE_PROBE_COMMANDS: ReadonlyArray<{ execute: string; arguments?: Record<string, unknown> }> = [
  { execute: 'query-version' },
  { execute: 'query-commands' },
  { execute: 'device-list-properties', arguments: { typename: RSS_DEVICE } },
];

/** Given QEMU's command list, the one command that yields the RSS object or helper (or none). */
export function sourceCommand(commands: readonly string[]): { execute: string; arguments?: Record<string, unknown> } | null {
  if (commands.includes('request-ebpf')) return { execute: 'request-ebpf', arguments: { id: 'rss' } };
  const helper = HELPER_COMMANDS.find((c) => commands.includes(c));
  return helper ? { execute: helper } : null;
}

function find(t: ProbeTranscript, execute: string): QmpExchange | undefined {
  return t.exchanges.find((x) => x.execute === execute);
}

function mustReturn(t: ProbeTranscript, execute: string): unknown {
  const x = find(t, execute);
  if (!x) throw new VirtEbpfError('QMP_PROTOCOL', `probe transcript has no ${execute} exchange`, { remedy: 'record the transcript with the current probe' });
  if ('error' in x.reply) {
    throw new VirtEbpfError('QMP_PROTOCOL', `${execute} failed: ${x.reply.error.desc}`, {
      remedy: 'every QEMU answers this command; check that the emulator is QEMU',
      fields: { command: execute, class: x.reply.error.class },
    });
  }
  return x.reply.return;
}

export function versionString(v: QemuVersion): string {
  return `${v.major}.${v.minor}.${v.micro}`;
}

export function decideProperty(props: readonly DeviceProperty[], device = RSS_DEVICE): { property: RssProperty | null; problem?: string } {
  for (const want of RSS_HANDOFF.properties) {
    const got = props.find((p) => p.name === want.name);
    if (!got) continue;
    return (want.qomTypes as readonly string[]).includes(got.type)
      ? { property: rssProperty(want.name)! }
      : { property: null, problem: `${device} property ${want.name} has unexpected type "${got.type}" (expected ${want.qomTypes[0]})` };
  }
  return { property: null };
}

/** The `hash-*` properties and their defaults as QEMU reports them (`auto` for OnOffAuto ones). */
export function hashProperties(props: readonly DeviceProperty[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of props) {
    if (!/^hash-[a-z0-9]+$/.test(p.name)) continue;
    const d = p.defaultValue;
    out[p.name] = typeof d === 'string' ? d : typeof d === 'boolean' ? (d ? 'on' : 'off') : 'auto';
  }
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => a.localeCompare(b)));
}

const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

type Source =
  | { protocol: 'request-ebpf'; object: Buffer }
  | { protocol: 'helper'; helperPath: string }
  | { protocol: RssProtocol; problem: string }
  | null;

function decideSource(t: ProbeTranscript, commands: readonly string[]): Source {
  const cmd = sourceCommand(commands);
  if (!cmd) return null;
  const x = find(t, cmd.execute);
  const protocol: RssProtocol = cmd.execute === 'request-ebpf' ? 'request-ebpf' : 'helper';
  if (!x) return { protocol, problem: `${cmd.execute} was not asked` };
  if ('error' in x.reply) return { protocol, problem: `${cmd.execute} failed: ${x.reply.error.desc}` };
  if (protocol === 'request-ebpf') {
    let object: Buffer;
    try {
      object = parseEbpfObject(x.reply.return);
    } catch (e) {
      return { protocol, problem: `request-ebpf returned an unusable object: ${(e as Error).message}` };
    }
    if (object.length < ELF_MAGIC.length || !object.subarray(0, 4).equals(ELF_MAGIC)) {
      return { protocol, problem: `request-ebpf returned ${object.length} bytes that are not an ELF object` };
    }
    return { protocol, object };
  }
  let helpers;
  try {
    helpers = parseHelperPaths(x.reply.return, cmd.execute);
  } catch (e) {
    return { protocol, problem: (e as Error).message };
  }
  const h = helpers.find((p) => p.name === RSS_HELPER_NAME);
  if (!h) return { protocol, problem: `${cmd.execute} names no ${RSS_HELPER_NAME}` };
  if (!h.path.startsWith('/')) return { protocol, problem: `${cmd.execute} gives a relative helper path "${h.path}"` };
  return { protocol, helperPath: h.path };
}

/**
 * The probe's decision. Throws only when the transcript is not QEMU-like at all (no version,
 * no command list); an emulator that merely cannot do eBPF RSS is a result with a reason.
 */
export function decideCaps(t: ProbeTranscript, binary: { path: string; identity: BinaryIdentity }, probedAt: string): EmulatorCaps {
  const version = parseVersion(mustReturn(t, 'query-version'));
  const commands = parseCommandNames(mustReturn(t, 'query-commands'));
  const v = versionString(version);
  const base = { path: binary.path, realpath: binary.identity.realpath, identity: binary.identity, version, deviceProps: {} as Record<string, string>, hashProps: {} as Record<string, string>, probedAt };
  const unsupported = (reason: string, protocol: RssProtocol | null = null, property: RssProperty | null = null): EmulatorCaps => ({
    ...base,
    supported: false,
    reason,
    protocol,
    property,
  });

  const asked = t.exchanges.filter((x) => x.execute === 'device-list-properties');
  const propsX = asked.find((x) => 'return' in x.reply);
  if (asked.length === 0) return unsupported(`QEMU ${v}: ${RSS_DEVICE} properties were not asked`);
  if (!propsX) {
    const why = asked.map((x) => ('error' in x.reply ? x.reply.error.desc : '')).join('; ');
    return unsupported(`QEMU ${v} has no usable virtio-net device: ${why}`);
  }
  const device = String(propsX.arguments?.typename ?? RSS_DEVICE);
  const props = parseDeviceProperties((propsX.reply as { return: unknown }).return);
  base.deviceProps = Object.fromEntries(props.map((p) => [p.name, p.type]));
  base.hashProps = hashProperties(props);
  if (!props.some((p) => p.name === 'rss')) return unsupported(`QEMU ${v}: ${device} has no rss property (RSS needs QEMU >= 5.1); upgrade QEMU`);

  const { property, problem: propProblem } = decideProperty(props, device);
  const source = decideSource(t, commands);
  if (propProblem) return unsupported(`QEMU ${v}: ${propProblem}`, source?.protocol ?? null);
  if (source && 'problem' in source) return unsupported(`QEMU ${v}: ${source.problem}`, source.protocol, property);

  if (!source && !property) {
    return unsupported(
      `QEMU ${v} has no request-ebpf (needs QEMU >= 9.0) and no ebpf_rss_fds property; upgrade QEMU to >= 9.0 (on Debian 12: bookworm-backports)`,
    );
  }
  if (!source) {
    return unsupported(`QEMU ${v} has the ${property!.name} property but no way to get the eBPF object (neither request-ebpf nor query-helper-paths: built without eBPF?)`, null, property);
  }
  if (!property) {
    const has = source.protocol === 'request-ebpf' ? 'request-ebpf' : 'the eBPF RSS helper';
    return unsupported(`QEMU ${v} offers ${has} but ${device} has no ebpf-rss-fds/ebpf_rss_fds property to take the fds`, source.protocol);
  }
  if ('object' in source) {
    return {
      ...base,
      supported: true,
      protocol: 'request-ebpf',
      property,
      rssObject: source.object.toString('base64'),
      rssObjectSha256: sha256(source.object),
    };
  }
  return { ...base, supported: true, protocol: 'helper', property, helperPath: source.helperPath };
}

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** For callers that cannot go on without eBPF RSS: the unsupported result as a typed error. */
export function assertSupported(caps: EmulatorCaps): void {
  if (caps.supported) return;
  throw new VirtEbpfError('EMULATOR_UNSUPPORTED', `emulator ${caps.path} cannot take eBPF RSS fds: ${caps.reason ?? 'unknown reason'}`, {
    remedy: 'use QEMU >= 9.0 built with eBPF (request-ebpf and the ebpf-rss-fds property), or leave eBPF RSS off for this domain',
    fields: { path: caps.path, realpath: caps.realpath, version: versionString(caps.version) },
  });
}

/** The ELF bytes of a request-ebpf emulator (checked against its digest). */
export function rssObjectBytes(caps: EmulatorCaps): Buffer {
  if (caps.protocol !== 'request-ebpf' || caps.rssObject === undefined) {
    throw new VirtEbpfError('EMULATOR_UNSUPPORTED', `${caps.path} does not provide its eBPF object through request-ebpf`, {
      remedy: caps.reason ?? 'use the helper protocol for this emulator',
    });
  }
  const bytes = Buffer.from(caps.rssObject, 'base64');
  if (sha256(bytes) !== caps.rssObjectSha256) {
    throw new VirtEbpfError('CACHE_CORRUPT', `cached eBPF object of ${caps.path} does not match its digest`, {
      remedy: 'probe the emulator again without the cache',
    });
  }
  return bytes;
}

// ---- strict shape check for caps read back from disk ----

const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0;
const isInt = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0;
const isStr = (v: unknown): v is string => typeof v === 'string';

const CAPS_KEYS = new Set(['path', 'realpath', 'identity', 'version', 'supported', 'reason', 'protocol', 'property', 'deviceProps', 'hashProps', 'rssObject', 'rssObjectSha256', 'helperPath', 'probedAt']);

/** Why `v` is not a well-formed EmulatorCaps, or null when it is. Unknown keys are refused too. */
export function capsShapeProblem(v: unknown): string | null {
  if (!isJsonObject(v)) return 'not an object';
  for (const k of Object.keys(v)) if (!CAPS_KEYS.has(k)) return `unknown key ${k}`;
  if (!isStr(v.path) || !isStr(v.realpath) || !v.realpath.startsWith('/')) return 'bad path/realpath';
  const id = v.identity;
  if (!isJsonObject(id) || Object.keys(id).length !== 6 || id.realpath !== v.realpath || ![id.dev, id.ino, id.size].every(isInt) || !isNum(id.mtimeMs) || !isNum(id.ctimeMs)) return 'bad identity';
  const ver = v.version;
  if (!isJsonObject(ver) || Object.keys(ver).length !== 4 || ![ver.major, ver.minor, ver.micro].every(isInt) || !isStr(ver.package)) return 'bad version';
  const dp = v.deviceProps;
  if (!isJsonObject(dp) || !Object.values(dp).every(isStr)) return 'bad deviceProps';
  const hp = v.hashProps;
  if (!isJsonObject(hp) || !Object.entries(hp).every(([k, x]) => /^hash-[a-z0-9]+$/.test(k) && isStr(x))) return 'bad hashProps';
  if (typeof v.supported !== 'boolean') return 'bad supported';
  if (v.supported ? v.reason !== undefined : !isStr(v.reason)) return 'reason must be present exactly when unsupported';
  if (v.protocol !== null && v.protocol !== 'request-ebpf' && v.protocol !== 'helper') return 'bad protocol';
  const p = v.property;
  const propOk = p === null || isRssProperty(p);
  if (!propOk) return 'bad property';
  if (!isStr(v.probedAt) || Number.isNaN(Date.parse(v.probedAt))) return 'bad probedAt';
  const hasObject = v.rssObject !== undefined || v.rssObjectSha256 !== undefined;
  if (v.supported) {
    if (p === null) return 'supported without a property';
    if (v.protocol === 'request-ebpf') {
      if (!isStr(v.rssObject) || !isStr(v.rssObjectSha256) || v.helperPath !== undefined) return 'request-ebpf caps need rssObject and its digest only';
      let bytes: Buffer;
      try {
        bytes = decodeBase64Strict(v.rssObject);
      } catch {
        return 'rssObject is not base64';
      }
      if (!bytes.subarray(0, 4).equals(ELF_MAGIC)) return 'rssObject is not ELF';
      if (sha256(bytes) !== v.rssObjectSha256) return 'rssObject does not match its digest';
    } else if (v.protocol === 'helper') {
      if (!isStr(v.helperPath) || !v.helperPath.startsWith('/') || hasObject) return 'helper caps need an absolute helperPath only';
    } else return 'supported without a protocol';
  } else if (hasObject || v.helperPath !== undefined) return 'unsupported caps carry no object or helper';
  return null;
}
