/**
 * What `exec` will do, decided before any privileged step: which devices get a context of which
 * kind, with which property, and the final argv. Pure: fds come in as numbers.
 */
import { findHandoffDevices, HANDOFFS, namedFds, withFds, type FdPropertyRef, type HandoffDevice, type HandoffKind } from '../argv';

export interface ExecPlan {
  /** devices (and netdevs) that get fds, in command-line order, each with its kind */
  devices: HandoffDevice[];
  /** devices that already name fds themselves (left alone) */
  skipped: HandoffDevice[];
}

export function planDevices(argv: readonly string[], kinds: readonly HandoffKind[] = HANDOFFS): ExecPlan {
  const found = findHandoffDevices(argv, kinds);
  return { devices: found.filter((d) => !d.hasFds), skipped: found.filter((d) => d.hasFds) };
}

/** One planned device's fds and the property that carries them (its context's). */
export interface DeviceFds {
  fds: readonly (number | string)[];
  prop: FdPropertyRef;
}

/**
 * The argv with each planned device naming its fds, and the fds QEMU must inherit. An fd may be
 * a placeholder string (the broker plans for a wrapper that learns the numbers on receipt).
 */
export function finalArgv(
  argv: readonly string[],
  plan: ExecPlan,
  perDevice: readonly DeviceFds[],
  propTypes: Readonly<Record<string, string>>,
): { argv: string[]; keep: number[] } {
  const assignments = plan.devices.map((device, i) => ({ device, ...perDevice[i] }));
  const out = withFds(argv, assignments, propTypes);
  const numbered = perDevice.flatMap((d) => d.fds).filter((f): f is number => typeof f === 'number');
  const keep = new Set<number>([0, 1, 2, ...namedFds(argv), ...numbered]);
  return { argv: out, keep: [...keep].sort((a, b) => a - b) };
}
