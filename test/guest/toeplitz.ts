/**
 * Reference Toeplitz hash (virtio/Microsoft RSS definition) for predicting which RX queue a
 * flow lands on: for every set bit of the input, most significant first, XOR in the 32 key
 * bits that start at that bit position.
 */
export function toeplitz(key: Buffer, input: Buffer): number {
  if (key.length < input.length + 4) throw new RangeError(`a ${key.length}-byte key cannot hash ${input.length} bytes`);
  let hash = 0;
  let window = key.readUInt32BE(0);
  for (let i = 0; i < input.length; i++) {
    const next = key[i + 4];
    for (let b = 7; b >= 0; b--) {
      if ((input[i] >> b) & 1) hash ^= window;
      window = ((window << 1) | ((next >> b) & 1)) >>> 0;
    }
  }
  return hash >>> 0;
}

/** Hash input of an IPv4 UDP/TCP flow as RSS defines it: saddr, daddr, sport, dport. */
export function ipv4L4Input(src: string, dst: string, sport: number, dport: number): Buffer {
  const b = Buffer.alloc(12);
  src.split('.').forEach((o, i) => b.writeUInt8(Number(o), i));
  dst.split('.').forEach((o, i) => b.writeUInt8(Number(o), 4 + i));
  b.writeUInt16BE(sport, 8);
  b.writeUInt16BE(dport, 10);
  return b;
}
