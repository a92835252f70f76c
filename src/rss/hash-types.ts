/**
 * virtio-net's RSS hash types (VIRTIO_NET_RSS_HASH_TYPE_*, virtio spec 5.1.6.5.6.4 and
 * QEMU's include/standard-headers/linux/virtio_net.h). The guest picks a subset; QEMU writes it
 * into the configuration map as `hash_types`. Pure.
 */
export const HASH_TYPE = {
  IPv4: 1 << 0,
  TCPv4: 1 << 1,
  UDPv4: 1 << 2,
  IPv6: 1 << 3,
  TCPv6: 1 << 4,
  UDPv6: 1 << 5,
  IP_EX: 1 << 6,
  TCP_EX: 1 << 7,
  UDP_EX: 1 << 8,
} as const;

export type HashTypeName = keyof typeof HASH_TYPE;

/** Every type virtio defines. */
export const HASH_TYPES_ALL = 0x1ff;

/** What Linux's virtio_net asks for by default (IPv4/6 with TCP and UDP ports, no _EX): 0x3f. */
export const HASH_TYPES_LINUX_DEFAULT = HASH_TYPE.IPv4 | HASH_TYPE.TCPv4 | HASH_TYPE.UDPv4 | HASH_TYPE.IPv6 | HASH_TYPE.TCPv6 | HASH_TYPE.UDPv6;

/** Names of the set bits, in bit order; bits virtio does not define appear as `bitN`. */
export function hashTypeNames(bits: number): string[] {
  const out: string[] = [];
  for (let b = 0; b < 32; b++) {
    if (((bits >>> b) & 1) === 0) continue;
    const name = (Object.keys(HASH_TYPE) as HashTypeName[]).find((n) => HASH_TYPE[n] === 1 << b);
    out.push(name ?? `bit${b}`);
  }
  return out;
}
