/**
 * What a context is, whatever its kind: the fds one device or netdev needs (handoff.ts names the
 * kinds), as the broker describes them to a peer, and the check every loader starts with.
 */
import { VirtEbpfError } from '../errors';
import type { OwnedFd } from '../fdpass';
import type { EmulatorCaps } from '../emulator/caps';
import type { FdPropertyRef } from '../argv/handoff';

/** What a context is, as the broker describes it to a peer with its fds. */
export interface ContextDescriptor {
  protocol: 'request-ebpf' | 'helper';
  /** the property that carries its fds on this emulator */
  property: FdPropertyRef;
  /** how many of the attached fds belong to this context, in order */
  fds: number;
  progId?: number;
  mapIds?: number[];
}

export interface AcquiredContext {
  descriptor: ContextDescriptor;
  fds: OwnedFd[];
}

export interface LoadOptions {
  helperTimeoutMs?: number;
  /**
   * Where the kernel's work runs: unset, on the calling thread; a nice value, on a thread of
   * libuv's pool at that nice, the calling thread going on meanwhile (the broker's loads).
   */
  nice?: number;
  /** called when that thread's nice could not be set or put back (no CAP_SYS_NICE, RLIMIT_NICE too low) */
  onNiceStuck?: () => void;
}

export function assertSupported(caps: EmulatorCaps): asserts caps is EmulatorCaps & { protocol: NonNullable<EmulatorCaps['protocol']>; property: NonNullable<EmulatorCaps['property']> } {
  if (!caps.supported || !caps.protocol || !caps.property) {
    throw new VirtEbpfError('EMULATOR_UNSUPPORTED', `${caps.path} cannot take eBPF RSS fds: ${caps.reason ?? 'unsupported'}`, {
      remedy: 'use QEMU >= 9.0 (e.g. from bookworm-backports), or turn rss off for this NIC',
      fields: { emulator: caps.path },
    });
  }
}
