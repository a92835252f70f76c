/**
 * The code libvirt's QEMU user and the root broker run must not be writable by anyone else:
 * install copies the runtime (compiled code, templates, production dependencies) from the
 * checkout into a root-owned prefix, and everything installed points there.
 */
import { cpSync, existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { PYTHON } from './host';

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
  if (!existsSync(join(from, 'dist/src/cli/main.js'))) {
    throw new Error(`${from} has no built code (dist/src); run npm run build first`);
  }
  const dev = devDependencies(from);
  rmSync(prefix, { recursive: true, force: true });
  for (const part of ['package.json', 'templates', 'shims', 'dist/src', 'dist/shims']) cpSync(join(from, part), join(prefix, part), { recursive: true });
  cpSync(join(from, 'node_modules'), join(prefix, 'node_modules'), {
    recursive: true,
    filter: (src) => {
      const rel = src.slice(join(from, 'node_modules').length + 1);
      const top = rel.startsWith('@') ? rel.split('/').slice(0, 2).join('/') : rel.split('/')[0];
      return !dev.has(top) && top !== '.bin';
    },
  });
  compileShimModule(prefix);
  execFileSync('chown', ['-R', 'root:root', prefix]);
  execFileSync('chmod', ['-R', 'u=rwX,go=rX', prefix]);
}

/**
 * The shims import brokercall.py on every start; libvirt's QEMU user cannot write bytecode into
 * the root-owned prefix, so without this Python compiles it each time (~2 ms, twice per
 * `virsh start`). Compiled here, by the python3 that runs the shims. Best effort: without it
 * the shims still run.
 */
function compileShimModule(prefix: string): void {
  try {
    execFileSync(PYTHON, ['-I', '-m', 'py_compile', join(prefix, 'shims/brokercall.py')], { stdio: 'ignore', timeout: 30_000 });
  } catch {
    /* no python3 here: install refuses that on its own (PYTHON_MISSING) */
  }
}
