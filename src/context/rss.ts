/**
 * One RSS NIC's context: QEMU's steering program and its maps, as fds in the order the
 * emulator's property takes them, got either way the emulator offers: load QEMU's own object
 * (request-ebpf) or run the emulator's matching helper (seed 000).
 */
import { VirtEbpfError } from '../errors';
import { rssObjectBytes, type EmulatorCaps } from '../emulator/caps';
import { loadRss, loadRssAsync, validateRssObject, type ValidatedRssObject } from '../bpf';
import { runHelper } from '../helper';
import { assertSupported, type AcquiredContext, type LoadOptions } from './types';

/** How many emulator builds' objects are kept validated (a host runs a few builds). */
export const VALIDATED_OBJECTS = 8;

/**
 * The validated RSS objects, by the object's digest: each emulator's object is decoded,
 * checked against its digest and parsed once, not at every load. An entry serves only caps whose
 * encoded object is the one it was made from, so caps that changed are checked again. Beyond
 * VALIDATED_OBJECTS builds, the one validated first goes.
 */
const validated = new Map<string, { encoded: string; object: ValidatedRssObject }>();

function validatedObject(caps: EmulatorCaps): ValidatedRssObject {
  const digest = caps.rssObjectSha256 ?? '';
  const held = validated.get(digest);
  if (held && held.encoded === caps.rssObject) return held.object;
  const object = validateRssObject(rssObjectBytes(caps));
  validated.delete(digest);
  validated.set(digest, { encoded: caps.rssObject!, object });
  if (validated.size > VALIDATED_OBJECTS) validated.delete(validated.keys().next().value!);
  return object;
}

/** How many objects are held validated (for tests). */
export function validatedObjects(): number {
  return validated.size;
}

export async function loadRssContext(caps: EmulatorCaps, opts: LoadOptions = {}): Promise<AcquiredContext> {
  assertSupported(caps);
  if (caps.protocol === 'request-ebpf') {
    const object = validatedObject(caps);
    const ctx = opts.nice === undefined ? loadRss(object) : await loadRssAsync(object, opts.nice, { onNiceStuck: opts.onNiceStuck });
    return {
      descriptor: { protocol: 'request-ebpf', property: caps.property, fds: ctx.fds.length, progId: ctx.progId, mapIds: [...ctx.mapIds] },
      fds: [...ctx.fds],
    };
  }
  if (!caps.helperPath) {
    throw new VirtEbpfError('HELPER_NOT_FOUND', `${caps.path} names no qemu-ebpf-rss-helper`, { remedy: 'reinstall QEMU with its eBPF RSS helper' });
  }
  const fds = await runHelper(caps.helperPath, { emulatorPath: caps.realpath, timeoutMs: opts.helperTimeoutMs, nice: opts.nice });
  return { descriptor: { protocol: 'helper', property: caps.property, fds: fds.length }, fds };
}
