/**
 * Where koffi's prebuilt native module for this machine is, and loading it from there (only
 * when asked: importing this module loads nothing). src/sys/koffi.ts is the koffi every caller
 * uses; the installer reads `koffiTriplets` to keep only this machine's build.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export type Koffi = typeof import('koffi');

/** koffi's build directories for this machine (glibc first; musl is its fallback on Linux). */
export function koffiTriplets(platform = process.platform, arch = process.arch): string[] {
  return platform === 'linux' ? [`linux_${arch}`, `musl_${arch}`] : [`${platform}_${arch}`];
}

/** The native module of the koffi package at `root` for one of `triplets`, at the package's version, or undefined. */
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
