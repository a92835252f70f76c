/**
 * Locate (and build when missing or stale) the guest fixture: scripts/guest/build.sh does the
 * work and is idempotent, so calling this from every test costs only its freshness check.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { GuestError } from './error';
import { tail } from '../../../src/errors';

export interface GuestManifest {
  key: string;
  kernelRelease: string;
  kernelPackage: string;
  packages: Record<string, string>;
  modules: string[];
  builtinModules: string[];
  vmlinuzBytes: number;
  initrdBytes: number;
}

export interface GuestFixture {
  kernel: string;
  initrd: string;
  manifest: GuestManifest;
}

/** The repository holding scripts/guest/build.sh, found upwards from this file (test/ or dist/test/). */
export function repoRoot(from = __dirname): string {
  for (let d = resolve(from); ; d = dirname(d)) {
    if (existsSync(join(d, 'scripts', 'guest', 'build.sh'))) return d;
    if (dirname(d) === d) {
      throw new GuestError('GUEST_BUILD', 'cannot find scripts/guest/build.sh above ' + from, {
        remedy: 'run from a checkout of the virt-ebpf repository',
      });
    }
  }
}

export function ensureFixture(opts: { outDir?: string; timeoutMs?: number } = {}): Promise<GuestFixture> {
  const repo = repoRoot();
  const outDir = opts.outDir ?? join(repo, '.cache', 'guest');
  return new Promise((resolvePromise, reject) => {
    execFile(
      'bash',
      [join(repo, 'scripts', 'guest', 'build.sh'), outDir],
      { timeout: opts.timeoutMs ?? 600_000, maxBuffer: 16 << 20 },
      (err, _stdout, stderr) => {
        if (err) {
          reject(
            new GuestError('GUEST_BUILD', `building the guest fixture failed: ${tail(stderr, 1)}`, {
              remedy: 'run scripts/guest/build.sh by hand to see why (it needs apt package lists and cpio)',
              detail: stderr,
              cause: err,
            }),
          );
          return;
        }
        try {
          const manifest = JSON.parse(readFileSync(join(outDir, 'manifest.json'), 'utf8')) as GuestManifest;
          resolvePromise({ kernel: join(outDir, 'vmlinuz'), initrd: join(outDir, 'initrd.img'), manifest });
        } catch (e) {
          reject(
            new GuestError('GUEST_BUILD', `guest fixture manifest unreadable in ${outDir}`, {
              remedy: `delete ${outDir}/manifest.json and build again`,
              cause: e,
            }),
          );
        }
      },
    );
  });
}
