/**
 * The values of QEMU's three RSS maps, as bytes (bpf/rss.ts has their layout). QEMU writes them through its mmap
 * in host byte order; we support little-endian hosts only (as decodeRssConfig does). Pure.
 *
 * The key map holds QEMU's `struct toeplitz_key_data_t { u32 leftmost_32_bits; u8 next_byte[36]; }`:
 * QEMU copies the guest's key and converts its first word with ntohl, so the program can
 * read those 32 bits as a native integer. On a little-endian host the first four bytes therefore
 * appear reversed in the map; the rest is the key as the guest gave it.
 */
import { VirtEbpfError } from '../errors';
import { decodeRssConfig, RSS_CONFIG_SIZE, type RssConfig } from '../bpf/rss';
import { RSS_KEY_SIZE } from './toeplitz';

export { decodeRssConfig, RSS_CONFIG_SIZE, type RssConfig };

function sizeError(what: string, got: number, want: number): VirtEbpfError {
  return new VirtEbpfError('BPF_UNEXPECTED_OBJECT', `RSS ${what} value is ${got} bytes, expected ${want}`, {
    remedy: 'the map is not the QEMU RSS map it was taken for; check the map ids',
  });
}

/** The guest's key from the key map's value. */
export function keyFromMapValue(value: Uint8Array): Buffer {
  if (value.length < RSS_KEY_SIZE) throw sizeError('key', value.length, RSS_KEY_SIZE);
  const key = Buffer.from(value.subarray(0, RSS_KEY_SIZE));
  key.subarray(0, 4).reverse();
  return key;
}

/** The key map's value for a guest key (what QEMU would write). */
export function keyToMapValue(key: Uint8Array): Buffer {
  if (key.length !== RSS_KEY_SIZE) throw sizeError('key', key.length, RSS_KEY_SIZE);
  const value = Buffer.from(key);
  value.subarray(0, 4).reverse();
  return value;
}

/** The configuration map's value (QEMU's packed `struct EBPFRSSConfig`). */
export function encodeRssConfig(c: RssConfig): Buffer {
  const b = Buffer.alloc(RSS_CONFIG_SIZE);
  b[0] = c.redirect ? 1 : 0;
  b[1] = c.populateHash ? 1 : 0;
  b.writeUInt32LE(c.hashTypes >>> 0, 2);
  b.writeUInt16LE(c.indirectionsLen, 6);
  b.writeUInt16LE(c.defaultQueue, 8);
  return b;
}
