/**
 * What the managers' entry points share: the result they hand back and how a setting the
 * manager carries (a VMI annotation, an oVirt custom property) is read and refused.
 */
import { VirtEbpfError } from '../errors';
import type { Change } from '../xml';

/** What a manager's entry point gives back: the XML to hand on and what happened to it. */
export interface ManagerResult {
  /** The XML the manager continues with (the input itself when `changed` is false). */
  xml: string;
  changed: boolean;
  changes: Change[];
  warnings: string[];
  /** One line: why the XML changed or did not. */
  why: string;
}

export function managerInput(message: string, remedy: string): VirtEbpfError {
  return new VirtEbpfError('MANAGER_INPUT', message, { remedy });
}

/**
 * A setting that must be one of `allowed` when present. `where` names its owner in the message
 * (`ns/vmi: annotation virt-ebpf.io/rss`), `how` says where to fix it.
 */
export function choice<T extends string>(value: unknown, allowed: readonly T[], where: string, how: string): T | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
    const list = allowed.map((a) => `"${a}"`);
    throw managerInput(`${where} is ${JSON.stringify(value)}, not one of ${list.join(', ')}`, `${how} ${list.join(' or ')}, or remove it`);
  }
  return value as T;
}
