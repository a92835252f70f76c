/**
 * Read the three RSS maps of a NIC by kernel id (BPF_MAP_GET_FD_BY_ID + BPF_MAP_LOOKUP_ELEM).
 * QEMU writes them through mmap; the syscall reads the same memory, one element at a time, so
 * the table comes back as 128 two-byte values whatever the mmap's per-element padding. Root.
 */
import { mapLookup, openMapById } from '../bpf/live';
import { RSS_MAPS } from '../bpf/rss';
import type { OwnedFd } from '../fdpass';
import { RSS_TABLE_ENTRIES } from '../rss';

export interface RawRssMaps {
  /** The configuration value, 10 bytes. */
  config: Buffer;
  /** The key map's value, 40 bytes, in the map's layout (see rss/maps.ts). */
  keyValue: Buffer;
  /** Every entry of the indirection table map. */
  table: number[];
}

/** `mapIds` in `ebpf-rss-fds` order: configuration, key, indirection table. */
export function readRssMaps(mapIds: readonly [number, number, number]): RawRssMaps {
  const fds: OwnedFd[] = [];
  try {
    for (const id of mapIds) fds.push(openMapById(id));
    const [config, key, table] = fds;
    return {
      config: mapLookup(config.fd, 0, RSS_MAPS[0].valueSize),
      keyValue: mapLookup(key.fd, 0, RSS_MAPS[1].valueSize),
      table: Array.from({ length: RSS_TABLE_ENTRIES }, (_, i) => mapLookup(table.fd, i, RSS_MAPS[2].valueSize).readUInt16LE(0)),
    };
  } finally {
    for (const f of fds) f.close();
  }
}
