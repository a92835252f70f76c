/**
 * A "context" is what one device or netdev needs of us: fds of one kind (argv/handoff.ts), in the
 * order its property takes them. This is the one table of how each kind is loaded; a new kind is
 * its loader beside rss.ts and one entry here.
 */
import type { EmulatorCaps } from '../emulator/caps';
import { loadRssContext } from './rss';
import type { AcquiredContext, LoadOptions } from './types';

export { assertSupported, type AcquiredContext, type ContextDescriptor, type LoadOptions } from './types';

/** Each kind's loader (privileged: root or CAP_BPF), by the kind's name in argv/handoff.ts. */
export const LOADERS: Readonly<Record<string, (caps: EmulatorCaps, opts?: LoadOptions) => Promise<AcquiredContext>>> = {
  rss: loadRssContext,
};

/** Load one context of `kind` for this emulator build. */
export async function loadContext(caps: EmulatorCaps, kind = 'rss', opts: LoadOptions = {}): Promise<AcquiredContext> {
  const load = LOADERS[kind];
  if (!load) throw new Error(`no loader for kind ${kind}`);
  return load(caps, opts);
}
