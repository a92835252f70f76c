/**
 * koffi, as its prebuilt native module. The package's entry point (index.js) finds that module
 * for this platform, but on the way it evaluates its installer's helpers, which load Node's
 * https, tls, http, zlib and crypto: ~7 ms and ~2 MiB resident in every process that calls C
 * (the broker, each of its loader threads, every CLI command), and TLS code in a root daemon
 * that has no network. What the entry point adds to the native module are deprecated aliases
 * only (koffi.handle, koffi.callback, lib.cdecl and the like), none of which this code uses.
 *
 * So the native module is loaded from the package's build directory for this machine (glibc
 * first, then musl, as the entry point tries them); when none is there or its version is not
 * the package's, the entry point is loaded as it is.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

type Koffi = typeof import('koffi');

/** koffi's build directories for this machine (glibc first; musl is its fallback on Linux). */
export function koffiTriplets(platform = process.platform, arch = process.arch): string[] {
  return platform === 'linux' ? [`linux_${arch}`, `musl_${arch}`] : [`${platform}_${arch}`];
}

/** The native module of the koffi package at `root` for one of `triplets`, or undefined. */
export function nativeKoffi(root: string, triplets = koffiTriplets()): Koffi | undefined {
  const version = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version?: string }).version;
  for (const triplet of triplets) {
    const file = join(root, 'build', 'koffi', triplet, 'koffi.node');
    if (!existsSync(file)) continue;
    try {
      const native = require(file) as Koffi & { version?: string };
      if (native.version === version) return native;
    } catch {
      /* a build for another C library: try the next */
    }
  }
  return undefined;
}

function load(): Koffi {
  const root = dirname(require.resolve('koffi/package.json'));
  return nativeKoffi(root) ?? (require('koffi') as Koffi);
}

const koffi: Koffi = load();
export default koffi;
