/**
 * A flow as RSS sees it, and the bytes RSS hashes for it. The input follows the virtio/Microsoft
 * rules as QEMU's steering program applies them: for IPv4, source and destination address, then
 * source and destination port when the packet is TCP (UDP) and TCPv4 (UDPv4) is enabled, else
 * the addresses alone when IPv4 is enabled, else nothing (no hash). IPv6 likewise with TCPv6,
 * UDPv6, IPv6. Fragments never contribute ports. Pure.
 *
 * Not modelled: IPv6 extension-header addresses (home address option, type 2 routing header)
 * that the _EX types substitute for the packet's own addresses. Flows here never carry them,
 * so for these flows the _EX bits change nothing.
 */
import { VirtEbpfError } from '../errors';
import { HASH_TYPE } from './hash-types';

export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;

export interface Flow {
  family: 4 | 6;
  /** 'tcp', 'udp', or another IP protocol number (carried without ports). */
  proto: 'tcp' | 'udp' | number;
  src: string;
  dst: string;
  /** TCP/UDP only. */
  sport?: number;
  dport?: number;
  /** A fragment (IPv4: MF set; IPv6: a fragment header). RSS does not hash the ports of fragments. */
  fragment?: boolean;
}

export type HashInputKind = 'ipv4' | 'ipv4-tcp' | 'ipv4-udp' | 'ipv6' | 'ipv6-tcp' | 'ipv6-udp';

export interface HashInput {
  kind: HashInputKind;
  input: Buffer;
}

function badAddress(text: string, family: 4 | 6): VirtEbpfError {
  return new VirtEbpfError('USAGE', `"${text}" is not an IPv${family} address`, { remedy: `give an IPv${family} address in its usual text form` });
}

export function parseIpv4(text: string): Buffer {
  const parts = text.split('.');
  if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) throw badAddress(text, 4);
  return Buffer.from(parts.map(Number));
}

/** RFC 4291 text forms: hex groups with at most one `::`, optionally ending in dotted IPv4. */
export function parseIpv6(text: string): Buffer {
  let groups: string[];
  let tail: number[] = [];
  let body = text;
  const v4 = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const b = parseIpv4(v4[2]);
    tail = [(b[0] << 8) | b[1], (b[2] << 8) | b[3]];
    body = v4[1].endsWith('::') ? v4[1] : v4[1].slice(0, -1);
  }
  const halves = body.split('::');
  if (halves.length > 2) throw badAddress(text, 6);
  const split = (s: string): string[] => (s === '' ? [] : s.split(':'));
  const want = 8 - tail.length;
  if (halves.length === 2) {
    const head = split(halves[0]);
    const rest = split(halves[1]);
    if (head.length + rest.length >= want) throw badAddress(text, 6);
    groups = [...head, ...Array(want - head.length - rest.length).fill('0'), ...rest];
  } else {
    groups = split(halves[0]);
    if (groups.length !== want) throw badAddress(text, 6);
  }
  if (groups.some((g) => !/^[0-9a-fA-F]{1,4}$/.test(g))) throw badAddress(text, 6);
  const out = Buffer.alloc(16);
  [...groups.map((g) => parseInt(g, 16)), ...tail].forEach((v, i) => out.writeUInt16BE(v, 2 * i));
  return out;
}

export function parseAddress(text: string, family: 4 | 6): Buffer {
  return family === 4 ? parseIpv4(text) : parseIpv6(text);
}

export function protoNumber(flow: Pick<Flow, 'proto'>): number {
  return flow.proto === 'tcp' ? IPPROTO_TCP : flow.proto === 'udp' ? IPPROTO_UDP : flow.proto;
}

function port(value: number | undefined, what: string): number {
  if (value === undefined || !Number.isInteger(value) || value < 0 || value > 0xffff) {
    throw new VirtEbpfError('USAGE', `flow ${what} ${value} is not a port number`, { remedy: 'give TCP/UDP flows ports from 0 to 65535' });
  }
  return value;
}

/**
 * The bytes QEMU's program feeds to Toeplitz for `flow` under `hashTypes`, or null when no enabled
 * type covers the packet (the program then computes no hash and uses the default queue).
 */
export function rssHashInput(flow: Flow, hashTypes: number): HashInput | null {
  const v4 = flow.family === 4;
  const addrs = Buffer.concat([parseAddress(flow.src, flow.family), parseAddress(flow.dst, flow.family)]);
  const p = protoNumber(flow);
  const l4 = flow.fragment ? undefined : p === IPPROTO_TCP ? 'tcp' : p === IPPROTO_UDP ? 'udp' : undefined;
  const on = (bit: number): boolean => (hashTypes & bit) !== 0;
  if (l4 !== undefined && on(v4 ? (l4 === 'tcp' ? HASH_TYPE.TCPv4 : HASH_TYPE.UDPv4) : l4 === 'tcp' ? HASH_TYPE.TCPv6 : HASH_TYPE.UDPv6)) {
    const ports = Buffer.alloc(4);
    ports.writeUInt16BE(port(flow.sport, 'source port'), 0);
    ports.writeUInt16BE(port(flow.dport, 'destination port'), 2);
    return { kind: `ipv${flow.family}-${l4}`, input: Buffer.concat([addrs, ports]) };
  }
  if (on(v4 ? HASH_TYPE.IPv4 : HASH_TYPE.IPv6)) return { kind: v4 ? 'ipv4' : 'ipv6', input: addrs };
  return null;
}

/** One line for a person: `udp4 10.0.0.1:5000 → 10.0.0.2:80`, `ip6 proto 47 … → …`, `… (fragment)`. */
export function describeFlow(f: Flow): string {
  const host = (a: string): string => (f.family === 6 ? `[${a}]` : a);
  const p = protoNumber(f);
  const withPorts = p === IPPROTO_TCP || p === IPPROTO_UDP;
  const name = `${p === IPPROTO_TCP ? 'tcp' : p === IPPROTO_UDP ? 'udp' : 'ip'}${f.family}${withPorts ? '' : ` proto ${p}`}`;
  const ends = withPorts ? `${host(f.src)}:${f.sport} → ${host(f.dst)}:${f.dport}` : `${f.src} → ${f.dst}`;
  return `${name} ${ends}${f.fragment ? ' (fragment)' : ''}`;
}
