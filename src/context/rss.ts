/**
 * One RSS NIC's context: QEMU's steering program and its maps, as fds in the order the
 * emulator's property takes them, got either way the emulator offers: load QEMU's own object
 * (request-ebpf) or run the emulator's matching helper (seed 000).
 */
import { VirtEbpfError } from '../errors';
import { rssObjectBytes, type EmulatorCaps } from '../emulator/caps';
import { loadRss } from '../bpf';
import { runHelper } from '../helper';
import { assertSupported, type AcquiredContext, type LoadOptions } from './types';

export async function loadRssContext(caps: EmulatorCaps, opts: LoadOptions = {}): Promise<AcquiredContext> {
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
