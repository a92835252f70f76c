/**
 * On-disk probe cache: one JSON file per emulator, named by the sha256 of its realpath.
 *
 * The cache feeds the broker the eBPF object it will load as root, so it is treated as
 * untrusted input: the directory must be ours and private (0700), each entry must be a
 * regular file we own that nobody else can write, its shape is checked strictly (including
 * the object's digest), and it is used only while the binary identity still matches. Anything
 * else is a miss, and the emulator is probed again. Writes are atomic (temp file + rename).
 */
import { chmodSync, closeSync, fstatSync, lstatSync, mkdirSync, openSync, readFileSync, constants } from 'node:fs';
import { join } from 'node:path';
import { replaceAtomically } from '../sys/atomic';
import { BinaryIdentity, EmulatorCaps, capsShapeProblem, sha256 } from './caps';
import { sameIdentity } from './identity';

export const DEFAULT_CACHE_DIR = '/var/cache/virt-ebpf/probe';
/** Bump when the caps format or the probe's questions change: old entries are then ignored. */
export const CACHE_FORMAT = 2;

export type CacheMiss = 'absent' | 'unsafe' | 'corrupt' | 'stale';

/**
 * sha256 of the realpath; an emulator probed with extra environment (e.g. QEMU_MODULE_DIR)
 * can answer differently, so that environment is part of the key.
 */
export function cacheFile(dir: string, realpath: string, env?: Record<string, string>): string {
  const keys = env ? Object.keys(env).sort() : [];
  const key = keys.length === 0 ? realpath : `${realpath}\0${JSON.stringify(keys.map((k) => [k, env![k]]))}`;
  return join(dir, `${sha256(key)}.json`);
}

const euid = () => process.geteuid?.() ?? 0;

/** Create the directory private, or tighten one we own. Returns why it cannot be used, or null. */
export function prepareCacheDir(dir: string): string | null {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = lstatSync(dir);
    if (!st.isDirectory()) return `${dir} is not a directory`;
    if (st.uid !== euid()) return `${dir} is owned by uid ${st.uid}`;
    if ((st.mode & 0o077) !== 0) chmodSync(dir, 0o700);
    return null;
  } catch (e) {
    return `${dir}: ${(e as Error).message}`;
  }
}

function dirProblem(dir: string): string | null {
  try {
    const st = lstatSync(dir);
    if (!st.isDirectory() || st.uid !== euid() || (st.mode & 0o077) !== 0) return `${dir} is not a private directory of ours`;
    return null;
  } catch {
    return 'absent';
  }
}

export type CacheRead = { caps: EmulatorCaps } | { miss: CacheMiss; why: string };

export function readCache(dir: string, identity: BinaryIdentity, env?: Record<string, string>): CacheRead {
  const dp = dirProblem(dir);
  if (dp === 'absent') return { miss: 'absent', why: 'no cache directory' };
  if (dp) return { miss: 'unsafe', why: dp };
  const file = cacheFile(dir, identity.realpath, env);
  let text: string;
  try {
    // O_NOFOLLOW: a symlink planted in place of an entry is never followed.
    const fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW);
    try {
      const st = fstatSync(fd);
      if (!st.isFile() || st.uid !== euid() || (st.mode & 0o022) !== 0) return { miss: 'unsafe', why: `${file} is not a private regular file of ours` };
      if (st.size > 16 * 1024 * 1024) return { miss: 'corrupt', why: `${file} is implausibly large` };
      text = readFileSync(fd, 'utf8');
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === 'ENOENT' ? { miss: 'absent', why: 'no entry' } : { miss: 'unsafe', why: `${file}: ${code ?? (e as Error).message}` };
  }
  let entry: unknown;
  try {
    entry = JSON.parse(text);
  } catch {
    return { miss: 'corrupt', why: `${file} is not JSON` };
  }
  const e = entry as { format?: unknown; caps?: unknown };
  if (typeof entry !== 'object' || entry === null || Object.keys(entry).length !== 2 || e.format !== CACHE_FORMAT) {
    return { miss: 'corrupt', why: `${file} is not a format-${CACHE_FORMAT} entry` };
  }
  const problem = capsShapeProblem(e.caps);
  if (problem) return { miss: 'corrupt', why: `${file}: ${problem}` };
  const caps = e.caps as EmulatorCaps;
  if (!sameIdentity(caps.identity, identity)) return { miss: 'stale', why: 'the emulator binary changed since it was probed' };
  return { caps };
}

/** Atomic replace; best effort (a cache that cannot be written only costs a re-probe). Returns an error text or null. */
export function writeCache(dir: string, caps: EmulatorCaps, env?: Record<string, string>): string | null {
  const problem = prepareCacheDir(dir);
  if (problem) return problem;
  const file = cacheFile(dir, caps.realpath, env);
  try {
    // No fsync: after a crash a torn entry fails validation and is simply probed again.
    replaceAtomically(file, JSON.stringify({ format: CACHE_FORMAT, caps }) + '\n', { mode: 0o600 });
    return null;
  } catch (e) {
    return `${file}: ${(e as Error).message}`;
  }
}
