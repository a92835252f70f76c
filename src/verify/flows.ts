/**
 * Deterministic test flows: the same seed gives the same flows on every machine, so a reported
 * disagreement can be reproduced. Mostly IPv4/IPv6 × TCP/UDP with varied addresses and ports;
 * every eighth flow is one that RSS hashes over addresses only (a fragment, or a protocol
 * without ports), so those rules are checked too. Pure.
 */
import type { Flow } from '../rss';

/** mulberry32: tiny, fast, good enough to vary test inputs; never for anything secret. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const DEFAULT_SEED = 1;
const GRE = 47;

function ipv4(rand: () => number): string {
  // 10/8 and 192.168/16 mostly, any unicast sometimes: the hash treats every bit alike.
  const r = rand();
  const byte = (): number => Math.floor(rand() * 256);
  if (r < 0.4) return `10.${byte()}.${byte()}.${1 + Math.floor(rand() * 254)}`;
  if (r < 0.7) return `192.168.${byte()}.${1 + Math.floor(rand() * 254)}`;
  return `${1 + Math.floor(rand() * 223)}.${byte()}.${byte()}.${byte()}`;
}

function ipv6(rand: () => number): string {
  const g = (): string => Math.floor(rand() * 0x10000).toString(16);
  const prefix = rand() < 0.5 ? 'fd00' : '2001:db8';
  const groups = prefix === 'fd00' ? 7 : 6;
  return [prefix, ...Array.from({ length: groups }, g)].join(':');
}

function port(rand: () => number): number {
  // Ephemeral source ports and service ports both occur in real traffic.
  return rand() < 0.5 ? 32768 + Math.floor(rand() * 28232) : 1 + Math.floor(rand() * 32767);
}

export function generateFlows(count: number, seed = DEFAULT_SEED): Flow[] {
  const rand = prng(seed);
  const flows: Flow[] = [];
  for (let i = 0; i < count; i++) {
    const special = i % 8 === 7;
    // Specials cycle through v4 fragment, v6 fragment, v4 GRE, v6 GRE.
    const family: 4 | 6 = (special ? (i >> 3) % 2 : i % 2) === 0 ? 4 : 6;
    const addr = family === 4 ? ipv4 : ipv6;
    const src = addr(rand);
    const dst = addr(rand);
    if (special) {
      flows.push((i >> 4) % 2 === 0 ? { family, proto: 'udp', src, dst, sport: port(rand), dport: port(rand), fragment: true } : { family, proto: GRE, src, dst });
      continue;
    }
    flows.push({ family, proto: i % 4 < 2 ? 'tcp' : 'udp', src, dst, sport: port(rand), dport: port(rand) });
  }
  return flows;
}
