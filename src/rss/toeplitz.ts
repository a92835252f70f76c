/**
 * The Toeplitz hash as RSS defines it (Microsoft's "RSS hashing functions", virtio 5.1.6.4.3.1):
 * for every set bit of the input, most significant bit of the first byte first, XOR into the
 * result the 32 key bits that start at that bit's position. Pure.
 */

/** The key of Microsoft's RSS verification suite (also the default of many NIC drivers). */
export const MS_RSS_KEY: Buffer = Buffer.from('6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa', 'hex');

/** virtio-net's key size (VIRTIO_NET_RSS_MAX_KEY_SIZE), the size of QEMU's key map value. */
export const RSS_KEY_SIZE = 40;

export function toeplitz(key: Uint8Array, input: Uint8Array): number {
  // The window needs 32 key bits beyond the last input bit.
  if (key.length < input.length + 4) throw new RangeError(`a ${key.length}-byte key cannot hash ${input.length} bytes`);
  let hash = 0;
  let window = ((key[0] << 24) | (key[1] << 16) | (key[2] << 8) | key[3]) >>> 0;
  for (let i = 0; i < input.length; i++) {
    const next = key[i + 4];
    for (let b = 7; b >= 0; b--) {
      if ((input[i] >> b) & 1) hash = (hash ^ window) >>> 0;
      window = ((window << 1) | ((next >> b) & 1)) >>> 0;
    }
  }
  return hash >>> 0;
}
