/**
 * A "context" is what one device or netdev needs of us: fds of one kind (argv/handoff.ts), in the
 * order its property takes them. This is the one table of how each kind is loaded; a new kind is
 * its loader beside rss.ts and one entry here.
 */
import type { EmulatorCaps } from '../emulator/caps';
import { handoffKind, RSS_HANDOFF } from '../argv/handoff';
import { loadRssContext } from './rss';
import type { AcquiredContext, LoadOptions } from './types';

export { assertSupported, type AcquiredContext, type ContextDescriptor, type LoadOptions } from './types';

/** Each kind's loader (privileged: root or CAP_BPF), by the kind's name in argv/handoff.ts. */
export const LOADERS: ReadonlyMap<string, (caps: EmulatorCaps, opts?: LoadOptions) => Promise<AcquiredContext>> = new Map([[RSS_HANDOFF.kind, loadRssContext]]);

/** Load one context of `kind` (a name in the table) for this emulator build. */
export async function loadContext(caps: EmulatorCaps, kind: string = RSS_HANDOFF.kind, opts: LoadOptions = {}): Promise<AcquiredContext> {
  const load = LOADERS.get(handoffKind(kind).kind);
  if (!load) throw new Error(`kind ${kind} has no loader in context/index.ts`);
  return load(caps, opts);
}
