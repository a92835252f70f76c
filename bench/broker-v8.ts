/**
 * How the benches start the broker's node: with the flags the unit gives it
 * (src/broker/v8.ts), or with flags that keep V8's defaults (a flag node was started with wins
 * over the broker's own), to measure what those settings change.
 */
import { BROKER_NODE_FLAGS } from '../src/broker/v8';

export const V8_DEFAULT_FLAGS: readonly string[] = ['--turbofan', '--no-optimize-for-size'];

/** The broker's node flags: V8's defaults if `v8Defaults`, else the unit's. */
export function brokerNodeFlags(v8Defaults: boolean): string[] {
  return [...(v8Defaults ? V8_DEFAULT_FLAGS : BROKER_NODE_FLAGS)];
}

/**
 * How long a broker is left idle before its memory counts as idle: V8 gives back what its heap
 * grew by only in a memory-reducing collection, which a full collection schedules ~8 s later.
 */
export const V8_IDLE_MS = 15_000;
