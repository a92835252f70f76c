/**
 * What `exec` will do, decided before any privileged step: which devices get a context, with
 * which property, and the final argv. Pure: fds come in as numbers.
 */
import { DeviceArg, findRssDevices, namedFds, RssProperty, withRssFds } from '../argv';

export interface ExecPlan {
  devices: DeviceArg[];
  /** devices that already name fds themselves (left alone) */
  skipped: DeviceArg[];
}

export function planDevices(argv: readonly string[]): ExecPlan {
  const found = findRssDevices(argv);
  return { devices: found.filter((d) => !d.hasFds), skipped: found.filter((d) => d.hasFds) };
}

/**
 * The argv with each planned device naming its fds, and the fds QEMU must inherit. An fd may be
 * a placeholder string (the broker plans for a wrapper that learns the numbers on receipt).
 */
export function finalArgv(
  argv: readonly string[],
  plan: ExecPlan,
  fdsPerDevice: ReadonlyArray<readonly (number | string)[]>,
  prop: RssProperty,
  propTypes: Readonly<Record<string, string>>,
): { argv: string[]; keep: number[] } {
  const assignments = plan.devices.map((device, i) => ({ device, fds: fdsPerDevice[i] }));
  const out = withRssFds(argv, assignments, prop, propTypes);
  const numbered = fdsPerDevice.flat().filter((f): f is number => typeof f === 'number');
  const keep = new Set<number>([0, 1, 2, ...namedFds(argv), ...numbered]);
  return { argv: out, keep: [...keep].sort((a, b) => a - b) };
}
