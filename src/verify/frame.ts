/**
 * Ethernet frames for a flow: Ethernet II + IPv4 (no options) or IPv6 (+ a fragment header for
 * fragments) + a full TCP or UDP header, or 8 opaque bytes for other protocols. Checksums are
 * correct, so the same frames could be written into a tap. Pure.
 */
import { parseAddress, protoNumber, IPPROTO_TCP, IPPROTO_UDP, type Flow } from '../rss';

export const ETH_P_IP = 0x0800;
export const ETH_P_IPV6 = 0x86dd;
const IPPROTO_FRAGMENT = 44;

export interface FrameOptions {
  srcMac?: string;
  dstMac?: string;
  payload?: Buffer;
  /** IPv4 identification / IPv6 fragment identification. */
  ident?: number;
}

const DEFAULT_SRC_MAC = '02:00:00:00:00:01';
const DEFAULT_DST_MAC = '52:54:00:12:34:56';

function mac(text: string): Buffer {
  const parts = text.split(':');
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) throw new RangeError(`not a MAC address: ${text}`);
  return Buffer.from(parts.map((p) => parseInt(p, 16)));
}

/** RFC 1071 ones' complement sum, folded, not yet inverted. */
function sum16(bufs: readonly Buffer[]): number {
  let s = 0;
  for (const b of bufs) {
    for (let i = 0; i + 1 < b.length; i += 2) s += (b[i] << 8) | b[i + 1];
    if (b.length % 2) s += b[b.length - 1] << 8;
  }
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

const checksum = (bufs: readonly Buffer[]): number => ~sum16(bufs) & 0xffff;

function l4Segment(flow: Flow, proto: number, pseudo: (len: number) => Buffer, payload: Buffer): Buffer {
  if (proto === IPPROTO_TCP) {
    const h = Buffer.alloc(20);
    h.writeUInt16BE(flow.sport ?? 0, 0);
    h.writeUInt16BE(flow.dport ?? 0, 2);
    h.writeUInt32BE(1, 4); // seq
    h[12] = 5 << 4; // data offset: 5 words
    h[13] = 0x02; // SYN
    h.writeUInt16BE(65535, 14); // window
    const seg = Buffer.concat([h, payload]);
    seg.writeUInt16BE(checksum([pseudo(seg.length), seg]), 16);
    return seg;
  }
  if (proto === IPPROTO_UDP) {
    const h = Buffer.alloc(8);
    h.writeUInt16BE(flow.sport ?? 0, 0);
    h.writeUInt16BE(flow.dport ?? 0, 2);
    h.writeUInt16BE(8 + payload.length, 4);
    const seg = Buffer.concat([h, payload]);
    seg.writeUInt16BE(checksum([pseudo(seg.length), seg]) || 0xffff, 6);
    return seg;
  }
  return Buffer.concat([Buffer.alloc(8), payload]);
}

export function buildFrame(flow: Flow, opts: FrameOptions = {}): Buffer {
  const payload = opts.payload ?? Buffer.from('virt-ebpf verify');
  const ident = (opts.ident ?? 1) & 0xffff;
  const src = parseAddress(flow.src, flow.family);
  const dst = parseAddress(flow.dst, flow.family);
  const proto = protoNumber(flow);
  const eth = Buffer.concat([mac(opts.dstMac ?? DEFAULT_DST_MAC), mac(opts.srcMac ?? DEFAULT_SRC_MAC), Buffer.alloc(2)]);

  if (flow.family === 4) {
    eth.writeUInt16BE(ETH_P_IP, 12);
    const pseudo = (len: number): Buffer => {
      const p = Buffer.alloc(12);
      src.copy(p, 0);
      dst.copy(p, 4);
      p[9] = proto;
      p.writeUInt16BE(len, 10);
      return p;
    };
    const seg = l4Segment(flow, proto, pseudo, payload);
    const ip = Buffer.alloc(20);
    ip[0] = 0x45;
    ip.writeUInt16BE(20 + seg.length, 2);
    ip.writeUInt16BE(ident, 4);
    ip.writeUInt16BE(flow.fragment ? 0x2000 : 0x4000, 6); // first fragment with MF, else DF
    ip[8] = 64;
    ip[9] = proto;
    src.copy(ip, 12);
    dst.copy(ip, 16);
    ip.writeUInt16BE(checksum([ip]), 10);
    return Buffer.concat([eth, ip, seg]);
  }

  eth.writeUInt16BE(ETH_P_IPV6, 12);
  const pseudo = (len: number): Buffer => {
    const p = Buffer.alloc(40);
    src.copy(p, 0);
    dst.copy(p, 16);
    p.writeUInt32BE(len, 32);
    p[39] = proto;
    return p;
  };
  const seg = l4Segment(flow, proto, pseudo, payload);
  const frag = flow.fragment ? Buffer.alloc(8) : Buffer.alloc(0);
  if (flow.fragment) {
    frag[0] = proto;
    frag.writeUInt16BE(0x0001, 2); // offset 0, M flag
    frag.writeUInt32BE(ident, 4);
  }
  const ip = Buffer.alloc(40);
  ip.writeUInt32BE(0x60000000, 0);
  ip.writeUInt16BE(frag.length + seg.length, 4);
  ip[6] = flow.fragment ? IPPROTO_FRAGMENT : proto;
  ip[7] = 64;
  src.copy(ip, 8);
  dst.copy(ip, 24);
  return Buffer.concat([eth, ip, frag, seg]);
}
