/**
 * How V8 runs the broker. Its JavaScript is glue — its work is the kernel's (bpf() and the
 * verifier, on loader threads) and moving fds — in a daemon that lives as long as the host, so
 * it runs V8 for memory rather than speed:
 *   --no-turbofan        the interpreter and the baseline compiler (Sparkplug) serve it. The
 *                        first function that turns hot (at start-up, the module loader's path
 *                        functions) would page TurboFan's own code in, ~3.7 MiB of node's
 *                        binary, resident for the broker's life.
 *   --optimize-for-size  a heap that grows less between collections and is given back once the
 *                        broker goes quiet (V8's memory reducer); with Node's defaults, garbage
 *                        from a burst of starts stays resident until the next one.
 * A flag node was started with wins (`node --turbofan …`, `--no-optimize-for-size`); the benches
 * measure the broker both ways.
 */
import { setFlagsFromString } from 'node:v8';

const BROKER_V8_FLAGS = ['turbofan', 'optimize-for-size'] as const;
const WANTED: Record<(typeof BROKER_V8_FLAGS)[number], boolean> = { turbofan: false, 'optimize-for-size': true };
const ALIASES: Record<string, string> = { opt: 'turbofan' };

/** The flags it set. Call before the broker's modules load: loading them is what turns the first functions hot. */
export function brokerV8(execArgv: readonly string[] = process.execArgv): string[] {
  const given = new Set(execArgv.map((a) => a.replace(/^--(no-)?/, '').replace(/_/g, '-')).map((n) => ALIASES[n] ?? n));
  const set: string[] = [];
  for (const name of BROKER_V8_FLAGS) {
    if (given.has(name)) continue;
    const flag = `--${WANTED[name] ? '' : 'no-'}${name}`;
    setFlagsFromString(flag);
    set.push(flag);
  }
  return set;
}
