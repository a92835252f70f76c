/**
 * probeEmulator: which eBPF RSS protocol and device property an emulator has, from the disk
 * cache while the binary is unchanged, otherwise by running it once.
 */
import { VirtEbpfError, isVirtEbpfError } from '../errors';
import { EmulatorCaps, ProbeTranscript, decideCaps } from './caps';
import { DEFAULT_CACHE_DIR, readCache, writeCache } from './cache';
import { binaryIdentity, resolveEmulatorPath, sameIdentity } from './identity';
import { recordProbe } from './launch';
import { isoTime } from '../time';

export const DEFAULT_PROBE_TIMEOUT_MS = 15_000;

export interface ProbeOptions {
  /** default /var/cache/virt-ebpf/probe */
  cacheDir?: string;
  /** whole-probe deadline: start, greeting, all commands (default 15 s) */
  timeoutMs?: number;
  /** false: neither read nor write the cache (default true) */
  useCache?: boolean;
  /** extra environment for the emulator (e.g. QEMU_MODULE_DIR); part of the cache key */
  env?: Record<string, string>;
  /** PATH used to resolve a bare name (default process.env.PATH) */
  searchPath?: string;
  /** also return the QMP transcript of a live probe (for recording fixtures) */
  record?: boolean;
  /** debug log: cache misses and why, skipped writes */
  log?: (message: string) => void;
  /** run the emulator as this account (the broker: libvirt's QEMU account), see LaunchOptions */
  runAs?: { uid: number; gid: number };
}

export interface ProbeResult {
  caps: EmulatorCaps;
  fromCache: boolean;
  transcript?: ProbeTranscript;
}

export async function probeEmulator(path: string, opts: ProbeOptions = {}): Promise<ProbeResult> {
  const abs = resolveEmulatorPath(path, opts.searchPath);
  const identity = binaryIdentity(abs);
  const cacheDir = opts.cacheDir ?? DEFAULT_CACHE_DIR;
  const useCache = opts.useCache ?? true;
  const log = opts.log ?? (() => undefined);

  if (useCache) {
    const hit = readCache(cacheDir, identity, opts.env);
    if ('caps' in hit) return { caps: { ...hit.caps, path }, fromCache: true };
    log(`probe cache miss for ${identity.realpath} (${hit.miss}: ${hit.why})`);
  }

  const transcript = await recordProbe(identity.realpath, path, { timeoutMs: opts.timeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS, env: opts.env, runAs: opts.runAs });
  let caps: EmulatorCaps;
  try {
    caps = decideCaps(transcript, { path, identity }, isoTime());
  } catch (e) {
    if (!isVirtEbpfError(e, 'QMP_PROTOCOL')) throw e;
    throw new VirtEbpfError('EMULATOR_NOT_QEMU', `${path} is not a QEMU system emulator: ${e.message}`, {
      remedy: 'give the path of a qemu-system-* binary',
      cause: e,
      fields: { path, realpath: identity.realpath },
    });
  }

  if (useCache) {
    // A binary replaced while we probed it: the answer belongs to neither version for sure.
    if (!sameIdentity(identity, binaryIdentity(abs))) log(`not caching ${identity.realpath}: it changed during the probe`);
    else {
      const err = writeCache(cacheDir, caps, opts.env);
      if (err) log(`probe cache not written: ${err}`);
    }
  }
  return opts.record ? { caps, fromCache: false, transcript } : { caps, fromCache: false };
}
