/**
 * The code libvirt's QEMU user and the root broker run must not be writable by anyone else:
 * install copies the runtime (compiled code, templates, production dependencies) from the
 * checkout into a root-owned prefix, and everything installed points there.
 */
import { cpSync, existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';

export const DEFAULT_PREFIX = '/usr/lib/virt-ebpf';

/** The checkout (or installed prefix) this code runs from: dist/src/install → root. */
export function sourceRoot(): string {
  return join(__dirname, '..', '..', '..');
}

function devDependencies(root: string): Set<string> {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { devDependencies?: Record<string, string> };
  return new Set(Object.keys(pkg.devDependencies ?? {}));
}

export function copyRuntime(from: string, prefix: string): void {
  if (from === prefix) return;
  if (!existsSync(join(from, 'dist/src/cli/main.js')) || !existsSync(join(from, 'dist/shims'))) {
    throw new Error(`${from} has no built code (dist/src, dist/shims); run npm run build first`);
  }
  const dev = devDependencies(from);
  rmSync(prefix, { recursive: true, force: true });
  for (const part of ['package.json', 'templates', 'dist/src', 'dist/shims']) cpSync(join(from, part), join(prefix, part), { recursive: true });
  cpSync(join(from, 'node_modules'), join(prefix, 'node_modules'), {
    recursive: true,
    filter: (src) => {
      const rel = src.slice(join(from, 'node_modules').length + 1);
      const top = rel.startsWith('@') ? rel.split('/').slice(0, 2).join('/') : rel.split('/')[0];
      return !dev.has(top) && top !== '.bin';
    },
  });
  execFileSync('chown', ['-R', 'root:root', prefix]);
  execFileSync('chmod', ['-R', 'u=rwX,go=rX', prefix]);
}
