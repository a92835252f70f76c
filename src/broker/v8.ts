/**
 * How V8 runs the broker. Its JavaScript is glue — its work is the kernel's (bpf() and the
 * verifier, on libuv's pool threads) and moving fds — in a daemon that lives as long as the host, so
 * V8 runs it for memory rather than speed:
 *   --no-turbofan, --no-maglev  the interpreter and the baseline compiler (Sparkplug) serve it.
 *                        The first function that turns hot (at start-up, the module loader's
 *                        path functions) would page the optimizing compiler's own code in,
 *                        ~3.7 MiB of node's binary, resident for the broker's life. (Node 20
 *                        has Maglev off already; later Nodes turn it on.)
 *   --optimize-for-size  a young generation of 1 MiB instead of up to 16, and a heap that grows
 *                        less between collections and is given back once the broker goes quiet
 *                        (V8's memory reducer): with Node's defaults, garbage from a burst of
 *                        requests stays resident until the next burst.
 * The unit puts them on node's command line (`@BROKER_NODE_FLAGS@`), where they shape the main
 * thread's heap as it is made. `virt-ebpf broker` started any other way sets what is missing
 * before the broker's modules load: all of it takes effect except the main thread's young
 * generation, which exists by then. A flag node was started with wins, in any spelling V8
 * takes (`--turbofan`, `--noopt`, `-no-maglev`, `--no-optimize-for-size`, and an operator's own
 * `--max-semi-space-size` keeps `--optimize-for-size` off).
 */
import { setFlagsFromString } from 'node:v8';

/** Each flag the broker runs with, and the names on node's command line that decide it instead. */
const FLAGS = [
  { flag: '--no-turbofan', decidedBy: ['turbofan', 'opt'] },
  { flag: '--no-maglev', decidedBy: ['maglev'] },
  { flag: '--optimize-for-size', decidedBy: ['optimize-for-size', 'max-semi-space-size'] },
] as const;

/** What node runs the broker with. */
export const BROKER_NODE_FLAGS: readonly string[] = FLAGS.map((f) => f.flag);

/** The V8 flag names node's command line `execArgv` sets (`--x`, `-x`, `--no-x`, `--nox`, `--x=…`; `_` as `-`). */
export function v8FlagNames(execArgv: readonly string[]): Set<string> {
  const names = new Set<string>();
  for (const a of execArgv) {
    const m = /^--?(?:no-?)?([a-z][a-z0-9-]*)(?:=.*)?$/.exec(a.replace(/^[^=]*/, (n) => n.replace(/_/g, '-')));
    if (m) names.add(m[1]);
  }
  return names;
}

/** The flags of BROKER_NODE_FLAGS that `execArgv` leaves undecided. */
export function missingBrokerFlags(execArgv: readonly string[]): string[] {
  const given = v8FlagNames(execArgv);
  return FLAGS.filter((f) => !f.decidedBy.some((n) => given.has(n))).map((f) => f.flag);
}

/** Set what node's command line left out (see above); returns it. Call before the broker's modules load. */
export function brokerV8(execArgv: readonly string[] = process.execArgv): string[] {
  const missing = missingBrokerFlags(execArgv);
  for (const flag of missing) setFlagsFromString(flag);
  return missing;
}
