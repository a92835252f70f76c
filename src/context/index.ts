/**
 * A "context" is what one RSS NIC needs: the eBPF program and maps, as fds, in the order the
 * emulator's property expects. This is the one place that knows both ways to get one:
 * load QEMU's own object (request-ebpf) or run the emulator's matching helper (seed 000).
 */
import { VirtEbpfError } from '../errors';
import type { OwnedFd } from '../fdpass';
import type { EmulatorCaps } from '../emulator/caps';
import { rssObjectBytes } from '../emulator/caps';
import { loadRss } from '../bpf';
import { runHelper } from '../helper';
import type { RssProperty } from '../argv';

/** What a context is, as the broker describes it to a peer with its fds. */
export interface ContextDescriptor {
  protocol: 'request-ebpf' | 'helper';
  property: RssProperty;
  /** how many of the attached fds belong to this context, in order */
  fds: number;
  progId?: number;
  mapIds?: number[];
}

export interface AcquiredContext {
  descriptor: ContextDescriptor;
  fds: OwnedFd[];
}

export function assertSupported(caps: EmulatorCaps): asserts caps is EmulatorCaps & { protocol: NonNullable<EmulatorCaps['protocol']>; property: NonNullable<EmulatorCaps['property']> } {
  if (!caps.supported || !caps.protocol || !caps.property) {
    throw new VirtEbpfError('EMULATOR_UNSUPPORTED', `${caps.path} cannot take eBPF RSS fds: ${caps.reason ?? 'unsupported'}`, {
      remedy: 'use QEMU >= 9.0 (e.g. from bookworm-backports), or turn rss off for this NIC',
      fields: { emulator: caps.path },
    });
  }
}

/** Load one context for this emulator build (privileged: root or CAP_BPF). */
export async function loadContext(caps: EmulatorCaps, opts: { helperTimeoutMs?: number } = {}): Promise<AcquiredContext> {
  assertSupported(caps);
  if (caps.protocol === 'request-ebpf') {
    const ctx = loadRss(rssObjectBytes(caps));
    return {
      descriptor: { protocol: 'request-ebpf', property: caps.property, fds: ctx.fds.length, progId: ctx.progId, mapIds: [...ctx.mapIds] },
      fds: [...ctx.fds],
    };
  }
  if (!caps.helperPath) {
    throw new VirtEbpfError('HELPER_NOT_FOUND', `${caps.path} names no qemu-ebpf-rss-helper`, { remedy: 'reinstall QEMU with its eBPF RSS helper' });
  }
  const fds = await runHelper(caps.helperPath, { emulatorPath: caps.realpath, timeoutMs: opts.helperTimeoutMs });
  return { descriptor: { protocol: 'helper', property: caps.property, fds: fds.length }, fds };
}
