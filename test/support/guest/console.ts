/**
 * Pure parsers for the guest fixture's serial console (protocol: scripts/guest/README.md) and
 * for the ethtool output the guest prints. No I/O here: the driver feeds text in.
 */
import { GuestError } from './error';

export interface ConsoleBlock {
  /** Label chosen by whoever issued the command (`@label`), or assigned by the guest. */
  label: string;
  command: string;
  /** Everything the command printed (stdout and stderr), lines joined with '\n'. */
  output: string;
  rc: number;
}

export type ConsoleEvent =
  | { kind: 'begin'; label: string; command: string }
  | { kind: 'block'; block: ConsoleBlock }
  | { kind: 'ready' }
  | { kind: 'poweroff' }
  /** A line outside any block: kernel log, firmware, anything not ours. */
  | { kind: 'line'; text: string };

const BEGIN = /^=== VEBPF BEGIN (\S+) \$ ?(.*) ===$/;
const END = /^=== VEBPF END (\S+) rc=(\d+) ===$/;
const READY = '=== VEBPF READY ===';
const POWEROFF = '=== VEBPF POWEROFF ===';

/**
 * Incremental: the serial stream arrives in arbitrary chunks, so partial lines are kept until
 * their newline comes. A block is reported once, when its END marker arrives.
 */
export class ConsoleParser {
  #partial = '';
  #open: { label: string; command: string; lines: string[] } | null = null;

  feed(chunk: string): ConsoleEvent[] {
    const text = this.#partial + chunk;
    const lines = text.split('\n');
    this.#partial = lines.pop() ?? '';
    const events: ConsoleEvent[] = [];
    for (const raw of lines) this.#line(raw.replace(/\r/g, ''), events);
    return events;
  }

  /** Flush a trailing line without newline (end of stream). */
  end(): ConsoleEvent[] {
    const events: ConsoleEvent[] = [];
    if (this.#partial !== '') this.#line(this.#partial.replace(/\r/g, ''), events);
    this.#partial = '';
    return events;
  }

  #line(line: string, events: ConsoleEvent[]): void {
    const begin = BEGIN.exec(line);
    if (begin) {
      // A BEGIN inside an open block means the previous command never finished (the guest
      // powered off or restarted); its lines are kept as plain lines rather than lost.
      if (this.#open) for (const l of this.#open.lines) events.push({ kind: 'line', text: l });
      this.#open = { label: begin[1], command: begin[2], lines: [] };
      events.push({ kind: 'begin', label: begin[1], command: begin[2] });
      return;
    }
    const end = END.exec(line);
    if (end && this.#open && end[1] === this.#open.label) {
      const { label, command, lines } = this.#open;
      this.#open = null;
      events.push({ kind: 'block', block: { label, command, output: lines.join('\n'), rc: Number(end[2]) } });
      return;
    }
    if (this.#open) {
      this.#open.lines.push(line);
    } else if (line === READY) {
      events.push({ kind: 'ready' });
    } else if (line === POWEROFF) {
      events.push({ kind: 'poweroff' });
    } else {
      events.push({ kind: 'line', text: line });
    }
  }
}

/** Every complete block in a whole console transcript, in order. */
export function parseConsoleBlocks(transcript: string): ConsoleBlock[] {
  const p = new ConsoleParser();
  return [...p.feed(transcript), ...p.end()].flatMap((e) => (e.kind === 'block' ? [e.block] : []));
}

function outputError(what: string, text: string, why: string): GuestError {
  return new GuestError('GUEST_OUTPUT', `cannot parse ${what}: ${why}`, {
    remedy: 'check that the guest runs the ethtool this fixture was built with; the raw output is in the error detail',
    detail: text,
  });
}

export interface RssConfig {
  iface: string;
  /** Number of RX rings ethtool reported. */
  rings: number;
  /** Indirection table size (the device's, e.g. 128 for QEMU's virtio-net). */
  size: number;
  table: number[];
  /** Hash key as lowercase hex without separators, absent when the driver reports none. */
  key?: string;
  /** The hash function that is on, e.g. 'toeplitz'. */
  hashFunc?: string;
  hashFuncs: Record<string, boolean>;
}

/** Parse `ethtool -x IFACE` (ethtool 6.x layout). */
export function parseEthtoolRss(text: string): RssConfig {
  const lines = text.replace(/\r/g, '').split('\n');
  const head = lines.findIndex((l) => /^RX flow hash indirection table for \S+ with \d+ RX ring\(s\):$/.test(l));
  if (head < 0) throw outputError('ethtool -x output', text, 'no "RX flow hash indirection table" header');
  const [, iface, rings] = /for (\S+) with (\d+) RX/.exec(lines[head]) ?? [];
  const table: number[] = [];
  let i = head + 1;
  for (; i < lines.length; i++) {
    const row = /^\s*(\d+):((?:\s+\d+)+)\s*$/.exec(lines[i]);
    if (!row) break;
    if (Number(row[1]) !== table.length) {
      throw outputError('ethtool -x output', text, `row starts at ${row[1]}, expected ${table.length}`);
    }
    for (const v of row[2].trim().split(/\s+/)) table.push(Number(v));
  }
  let key: string | undefined;
  const hashFuncs: Record<string, boolean> = {};
  for (; i < lines.length; i++) {
    if (lines[i] === 'RSS hash key:') {
      const k = (lines[i + 1] ?? '').trim();
      if (/^[0-9a-f]{2}(:[0-9a-f]{2})*$/i.test(k)) key = k.replace(/:/g, '').toLowerCase();
      i++;
    } else if (lines[i] === 'RSS hash function:') {
      for (i++; i < lines.length; i++) {
        const f = /^\s+(\S+): (on|off)$/.exec(lines[i]);
        if (!f) { i--; break; }
        hashFuncs[f[1]] = f[2] === 'on';
      }
    }
  }
  const hashFunc = Object.keys(hashFuncs).find((f) => hashFuncs[f]);
  return { iface, rings: Number(rings), size: table.length, table, ...(key ? { key } : {}), ...(hashFunc ? { hashFunc } : {}), hashFuncs };
}

export interface NicStats {
  stats: Record<string, number>;
  /** Packets received per RX queue, index = queue number. */
  rxPackets: number[];
  txPackets: number[];
}

/**
 * Parse `ethtool -S IFACE`. Per-queue names differ between kernels ("rx_queue_0_packets" in
 * 6.1's virtio_net, "rx0_packets" in others); both are accepted.
 */
export function parseEthtoolStats(text: string): NicStats {
  const stats: Record<string, number> = {};
  for (const line of text.replace(/\r/g, '').split('\n')) {
    const m = /^\s+([^:\s][^:]*):\s+(\d+)\s*$/.exec(line);
    if (m) stats[m[1]] = Number(m[2]);
  }
  if (Object.keys(stats).length === 0) throw outputError('ethtool -S output', text, 'no counters');
  const perQueue = (dir: 'rx' | 'tx'): number[] => {
    const out: number[] = [];
    for (const [name, value] of Object.entries(stats)) {
      const m = new RegExp(`^${dir}(?:_queue_|)(\\d+)_packets$`).exec(name);
      if (m) out[Number(m[1])] = value;
    }
    return Array.from(out, (v) => v ?? 0);
  };
  return { stats, rxPackets: perQueue('rx'), txPackets: perQueue('tx') };
}

export interface ChannelCounts {
  rx?: number;
  tx?: number;
  other?: number;
  combined?: number;
}

/** Parse `ethtool -l IFACE`: pre-set maximums and current settings ("n/a" → absent). */
export function parseEthtoolChannels(text: string): { max: ChannelCounts; current: ChannelCounts } {
  const max: ChannelCounts = {};
  const current: ChannelCounts = {};
  let into: ChannelCounts | null = null;
  for (const line of text.replace(/\r/g, '').split('\n')) {
    if (/^Pre-set maximums:/.test(line)) into = max;
    else if (/^Current hardware settings:/.test(line)) into = current;
    else {
      const m = /^(RX|TX|Other|Combined):\s+(\d+|n\/a)\s*$/.exec(line);
      if (m && into && m[2] !== 'n/a') into[m[1].toLowerCase() as keyof ChannelCounts] = Number(m[2]);
    }
  }
  if (into === null) throw outputError('ethtool -l output', text, 'no "Pre-set maximums" section');
  return { max, current };
}
