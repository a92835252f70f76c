/**
 * The code libvirt's QEMU user and the root broker run must not be writable by anyone else:
 * install copies the runtime (compiled code, templates, production dependencies) from the
 * checkout into a root-owned prefix, and everything installed points there.
 *
 * A runtime tree is marked as ours by `.virt-ebpf-runtime` at its top (PREFIX_MARKER): JSON
 * naming who owns the tree — `install` (copied by `virt-ebpf install`, removed by `uninstall`)
 * or `package` (unpacked by dpkg, which removes it). A checkout has no marker. Install copies
 * into a prefix only while it is absent, empty or ours; anything else (`--prefix /usr`) is
 * refused before a byte is touched.
 */
import { cpSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { VirtEbpfError } from '../errors';
import { assertTrustedExecutable } from '../sys/trust';
import { koffiTriplets } from '../sys/koffi-native';

export const DEFAULT_PREFIX = '/usr/lib/virt-ebpf';
export const PREFIX_MARKER = '.virt-ebpf-runtime';

export type RuntimeOwner = 'install' | 'package';

export interface RuntimeMarker {
  owner: RuntimeOwner;
}

/** The checkout (or installed prefix) this code runs from: dist/src/install → root. */
export function sourceRoot(): string {
  return join(__dirname, '..', '..', '..');
}

/** The marker of a runtime tree, or null (a checkout, a foreign directory, a damaged marker). */
export function readMarker(prefix: string): RuntimeMarker | null {
  const file = join(prefix, PREFIX_MARKER);
  try {
    if (!lstatSync(file).isFile()) return null;
    const m = JSON.parse(readFileSync(file, 'utf8')) as { owner?: unknown };
    return m.owner === 'install' || m.owner === 'package' ? { owner: m.owner } : null;
  } catch {
    return null;
  }
}

export function markerText(owner: RuntimeOwner): string {
  return JSON.stringify({ owner } satisfies RuntimeMarker) + '\n';
}

export type PrefixState = { kind: 'absent' } | { kind: 'empty' } | { kind: 'ours'; owner: RuntimeOwner } | { kind: 'foreign'; why: string };

/**
 * What a prefix is to us. `manifestPrefix`: the prefix the install manifest names — an install
 * made before the marker existed is ours too.
 */
export function prefixState(prefix: string, manifestPrefix?: string): PrefixState {
  let st;
  try {
    st = lstatSync(prefix);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { kind: 'absent' };
    return { kind: 'foreign', why: (e as Error).message };
  }
  if (!st.isDirectory()) return { kind: 'foreign', why: `${prefix} is not a directory` };
  if (readdirSync(prefix).length === 0) return { kind: 'empty' };
  const marker = readMarker(prefix);
  if (marker) return { kind: 'ours', owner: marker.owner };
  if (manifestPrefix === prefix) return { kind: 'ours', owner: 'install' };
  return { kind: 'foreign', why: `${prefix} holds files that are not virt-ebpf's (no ${PREFIX_MARKER})` };
}

/** Throws INSTALL_PREFIX_FOREIGN unless `copyRuntime` may (re)write `prefix`. */
export function assertPrefixWritable(prefix: string, manifestPrefix?: string): void {
  const state = prefixState(prefix, manifestPrefix);
  if (state.kind === 'foreign') {
    throw new VirtEbpfError('INSTALL_PREFIX_FOREIGN', `refusing to install into ${prefix}: ${state.why}; install would replace everything in it`, {
      remedy: 'give --prefix a new or empty directory of its own (default /usr/lib/virt-ebpf)',
      fields: { prefix },
    });
  }
  if (state.kind === 'ours' && state.owner === 'package') {
    throw new VirtEbpfError('INSTALL_PREFIX_FOREIGN', `refusing to install into ${prefix}: it belongs to the virt-ebpf Debian package`, {
      remedy: 'run the packaged command (/usr/sbin/virt-ebpf install), or remove the package (apt-get purge virt-ebpf) before installing a checkout',
      fields: { prefix },
    });
  }
}

/** The nearest directory at or above `path` that exists (the prefix's parents when it does not). */
function nearestExisting(path: string): string {
  let p = path;
  while (!existsSync(p) && p !== dirname(p)) p = dirname(p);
  return p;
}

function devDependencies(root: string): Set<string> {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { devDependencies?: Record<string, string> };
  return new Set(Object.keys(pkg.devDependencies ?? {}));
}

/** koffi's directories that only its own build from source reads (index.js loads build/ only). */
const KOFFI_SOURCES = new Set(['lib', 'src', 'vendor', 'doc']);

/**
 * Whether a node_modules entry (path relative to node_modules) belongs in a runtime tree:
 * production packages only, no dot-files (their linters' and VCS's settings), and of koffi only
 * what it loads: its prebuilt native module for `keepKoffi` (the platform the tree is for; the
 * others are 25 MiB of other systems' binaries), not its sources.
 */
export function runtimeModuleFilter(dev: Set<string>, keepKoffi: string[]): (rel: string) => boolean {
  return (rel) => {
    if (rel === '') return true;
    const parts = rel.split('/');
    const top = rel.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
    if (dev.has(top) || parts[parts.length - 1].startsWith('.')) return false;
    if (top === 'koffi' && KOFFI_SOURCES.has(parts[1])) return false;
    if (top === 'koffi' && parts[1] === 'build' && parts[2] === 'koffi' && parts.length > 3) return keepKoffi.includes(parts[3]);
    return true;
  };
}

/** Copy the runtime parts of `from` (package.json, templates, dist/src, dist/shims, production node_modules) to `to`. */
export function copyRuntimeParts(from: string, to: string, keepKoffi = koffiTriplets()): void {
  for (const part of ['package.json', 'hooks', 'templates', 'dist/src', 'dist/shims']) cpSync(join(from, part), join(to, part), { recursive: true });
  const modules = join(from, 'node_modules');
  const keep = runtimeModuleFilter(devDependencies(from), keepKoffi);
  cpSync(modules, join(to, 'node_modules'), { recursive: true, filter: (src) => keep(src.slice(modules.length + 1)) });
}

/**
 * Put the runtime of `from` at `prefix`, owned by root and writable by root alone. Refuses a
 * prefix that is neither absent, empty nor ours, and one whose parents are not root's alone.
 * The marker is written first: a copy cut short is still recognised as ours and redone.
 */
export function copyRuntime(from: string, prefix: string, manifestPrefix?: string): void {
  if (from === prefix) return;
  if (!existsSync(join(from, 'dist/src/cli/main.js')) || !existsSync(join(from, 'dist/shims'))) {
    throw new Error(`${from} has no built code (dist/src, dist/shims); run npm run build first`);
  }
  assertPrefixWritable(prefix, manifestPrefix);
  assertTrustedExecutable(nearestExisting(dirname(prefix)), 'prefix');
  rmSync(prefix, { recursive: true, force: true });
  mkdirSync(prefix, { recursive: true, mode: 0o755 });
  writeFileSync(join(prefix, PREFIX_MARKER), markerText('install'), { mode: 0o644 });
  copyRuntimeParts(from, prefix);
  execFileSync('chown', ['-R', 'root:root', prefix]);
  execFileSync('chmod', ['-R', 'u=rwX,go=rX', prefix]);
}
