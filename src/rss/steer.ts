/**
 * Which queue QEMU's RSS steering program picks for a flow, computed independently of it
 * (the decisions of tools/ebpf/rss.bpf.c as QEMU 10 ships it; checked against the live program):
 *   redirect off                          → default_queue
 *   no enabled hash type covers the packet → default_queue
 *   otherwise → table[hash % indirections_len]; an index past the table → default_queue
 * A hash of 0 indexes entry 0 like any other (QEMU before its "ebpf: Fix RSS error handling"
 * change sent it to default_queue; only a degenerate key makes that difference visible).
 * The program's value is the queue; the kernel's tun driver then takes it modulo the tap's
 * queue count. Pure.
 */
import type { RssConfig } from '../bpf/rss';
import { rssHashInput, type Flow, type HashInputKind } from './flow';
import { toeplitz } from './toeplitz';

/** QEMU's indirection table map holds this many entries (VIRTIO_NET_RSS_MAX_TABLE_LEN). */
export const RSS_TABLE_ENTRIES = 128;

/** Everything the program reads: its configuration, the key as the guest set it, the whole table map. */
export interface RssState {
  config: RssConfig;
  /** The Toeplitz key in the guest's byte order (as `ethtool -x` shows it), 40 bytes. */
  key: Uint8Array;
  /** All entries of the indirection table map (128), not only the first `indirectionsLen`. */
  table: readonly number[];
}

export type SteeringPath = 'redirect-off' | 'no-hash' | 'table' | 'past-table';

export interface Steering {
  queue: number;
  /** The Toeplitz hash (0 when none was computed: path 'redirect-off' or 'no-hash'). */
  hash: number;
  /** What the hash was computed over, when it was. */
  input?: HashInputKind;
  /** The table index used (path 'table') or tried ('past-table'). */
  index?: number;
  path: SteeringPath;
}

export function referenceQueue(flow: Flow, s: RssState): Steering {
  const c = s.config;
  if (!c.redirect) return { queue: c.defaultQueue, hash: 0, path: 'redirect-off' };
  const hi = rssHashInput(flow, c.hashTypes);
  if (!hi) return { queue: c.defaultQueue, hash: 0, path: 'no-hash' };
  const hash = toeplitz(s.key, hi.input);
  // eBPF defines x % 0 as x: with no table length the hash itself is the index.
  const index = c.indirectionsLen === 0 ? hash : hash % c.indirectionsLen;
  if (index >= s.table.length) return { queue: c.defaultQueue, hash, input: hi.kind, index, path: 'past-table' };
  return { queue: s.table[index], hash, input: hi.kind, index, path: 'table' };
}
