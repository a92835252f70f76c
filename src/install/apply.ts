/**
 * The side-effect half of install/uninstall/refresh: write the planned artifacts atomically,
 * remember exactly what was written (manifest with content hashes), remove exactly that, and
 * tell libvirtd to rescan its hooks.
 */
import { missingShims } from './host';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, renameSync, statSync, unlinkSync, writeFileSync, rmdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { VirtEbpfError } from '../errors';
import { parseWrapper, renderWrapper } from '../wrapper/script';
import { Artifact, HostFacts, installPlan, resolvePaths } from './plan';

export interface ManifestEntry {
  kind: Artifact['kind'];
  path: string;
  sha256: string;
}

export interface Manifest {
  version: 1;
  prefix: string;
  installedAt: string;
  entries: ManifestEntry[];
}

const sha = (s: string) => createHash('sha256').update(s).digest('hex');

export function identityOf(path: string): string {
  const st = statSync(realpathSync(path));
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
}

function writeAtomic(path: string, content: string, mode: number): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  const tmp = `${path}.virt-ebpf-tmp`;
  writeFileSync(tmp, content, { mode });
  chmodSync(tmp, mode);
  renameSync(tmp, path);
}

/**
 * Rewrite a wrapper so libvirt notices: libvirt keeps the wrapper's ctime in whole seconds
 * (`<qemuctime>`), so a rewrite within the same second as the previous change would go
 * unnoticed. Make sure the new ctime lands in a later second.
 */
function rewriteWrapper(path: string, content: string, mode: number): void {
  const before = existsSync(path) ? Math.floor(statSync(path).ctimeMs / 1000) : -1;
  writeAtomic(path, content, mode);
  // File times come from the kernel's coarse clock, which may lag Date.now() by a tick or two:
  // touch again until the ctime really is in a later second.
  for (let tries = 0; Math.floor(statSync(path).ctimeMs / 1000) <= before && tries < 100; tries++) {
    const wait = Math.max(2, (before + 1) * 1000 - Date.now() + 5);
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, wait);
    chmodSync(path, mode); // touches ctime
  }
}

function sameFile(path: string, content: string, mode: number): boolean {
  try {
    return (statSync(path).mode & 0o7777) === mode && readFileSync(path, 'utf8') === content;
  } catch {
    return false;
  }
}

export function readManifest(path: string): Manifest | null {
  if (!existsSync(path)) return null;
  try {
    const m = JSON.parse(readFileSync(path, 'utf8')) as Manifest;
    if (m.version !== 1 || !Array.isArray(m.entries)) throw new Error('shape');
    return m;
  } catch {
    throw new VirtEbpfError('CONFIG_INVALID', `install manifest ${path} is corrupt`, {
      remedy: `inspect it; remove it and run \`virt-ebpf install\` again to rebuild it`,
    });
  }
}

export interface InstallReport {
  written: string[];
  kept: string[];
  hookRescan: string;
}

/** Tell libvirt about a new/removed hook: hooks are discovered at daemon start; SIGHUP rescans. */
export function rescanHooks(): string {
  for (const daemon of ['virtqemud', 'libvirtd']) {
    try {
      const pids = execFileSync('pidof', [daemon], { encoding: 'utf8' }).trim();
      if (pids) {
        execFileSync('kill', ['-HUP', ...pids.split(/\s+/)]);
        return `sent SIGHUP to ${daemon} (pid ${pids}) so it rescans its hooks`;
      }
    } catch {
      /* not running */
    }
  }
  return 'no libvirt daemon is running: the hook is picked up when it starts (or run: systemctl reload libvirtd)';
}

export function install(facts: HostFacts, opts: { rescan?: boolean } = {}): InstallReport {
  const missing = missingShims(facts.prefix);
  if (missing.length) {
    throw new VirtEbpfError('SHIMS_MISSING', `${missing[0]} does not exist: the emulator wrapper, the hook and hot-plug need the shims built from shims/*.c`, {
      remedy: 'run `npm run build` in the checkout (needs cc: apt-get install gcc libc6-dev), then install again',
    });
  }
  const paths = resolvePaths(facts);
  const plan = installPlan(facts);
  const previous = readManifest(paths.manifest);
  const written: string[] = [];
  const kept: string[] = [];
  const entries: ManifestEntry[] = [];
  for (const a of plan) {
    if (a.userEditable && existsSync(a.path)) {
      const ours = previous?.entries.find((e) => e.path === a.path);
      if (!ours) {
        kept.push(a.path); // the user's own file, never ours to overwrite or remove
        continue;
      }
      entries.push(ours);
      kept.push(a.path);
      continue;
    }
    if (sameFile(a.path, a.content, a.mode)) {
      // Unchanged: leave it alone (rewriting a wrapper would make libvirt re-probe QEMU).
      entries.push({ kind: a.kind, path: a.path, sha256: sha(a.content) });
      continue;
    }
    if (a.kind === 'wrapper') rewriteWrapper(a.path, a.content, a.mode);
    else writeAtomic(a.path, a.content, a.mode);
    written.push(a.path);
    entries.push({ kind: a.kind, path: a.path, sha256: sha(a.content) });
  }
  // Wrappers from an earlier install whose emulator is gone now: remove them (they are ours).
  for (const e of previous?.entries ?? []) {
    if (!entries.some((x) => x.path === e.path) && e.kind === 'wrapper' && existsSync(e.path)) unlinkSync(e.path);
  }
  const manifest: Manifest = { version: 1, prefix: facts.prefix, installedAt: new Date().toISOString(), entries };
  writeAtomic(paths.manifest, JSON.stringify(manifest, null, 2) + '\n', 0o644);
  return { written, kept, hookRescan: opts.rescan === false ? 'skipped' : rescanHooks() };
}

export interface UninstallReport {
  removed: string[];
  kept: Array<{ path: string; why: string }>;
}

export function uninstall(manifestPath: string, opts: { rescan?: boolean; removeTree?: string } = {}): UninstallReport {
  const m = readManifest(manifestPath);
  const removed: string[] = [];
  const kept: Array<{ path: string; why: string }> = [];
  if (!m) return { removed, kept };
  for (const e of m.entries) {
    if (!existsSync(e.path)) continue;
    if (sha(readFileSync(e.path, 'utf8')) !== e.sha256 && e.kind === 'config') {
      kept.push({ path: e.path, why: 'edited since install' });
      continue;
    }
    unlinkSync(e.path);
    removed.push(e.path);
    pruneEmptyDirs(dirname(e.path));
  }
  unlinkSync(manifestPath);
  pruneEmptyDirs(dirname(manifestPath));
  // The copied runtime (see runtime.ts), only if it is ours: it holds our marker files.
  if (opts.removeTree && existsSync(join(opts.removeTree, 'dist/src/cli/main.js')) && (existsSync(join(opts.removeTree, 'templates/hook')) || existsSync(join(opts.removeTree, 'templates/hook.sh')))) {
    rmSync(opts.removeTree, { recursive: true, force: true });
    removed.push(opts.removeTree);
  }
  if (opts.rescan !== false) rescanHooks();
  return { removed, kept };
}

/**
 * Remove directories we may have created, while empty: never a shared system dir, a top-level
 * one, or a sticky one such as /tmp (empty on a fresh system, and everyone's).
 */
function pruneEmptyDirs(dir: string): void {
  const keep = new Set(['/', '/etc', '/usr', '/usr/libexec', '/var', '/var/lib', '/etc/systemd/system', '/etc/libvirt/hooks', '/etc/apt/apt.conf.d', '/etc/apparmor.d/abstractions']);
  for (let d = dir; !keep.has(d) && dirname(d) !== '/'; d = dirname(d)) {
    try {
      if (statSync(d).mode & 0o1000 || readdirSync(d).length > 0) return;
      rmdirSync(d);
    } catch {
      return;
    }
  }
}

export interface RefreshReport {
  refreshed: Array<{ wrapper: string; real: string }>;
  missing: string[];
}

/**
 * Rewrite every wrapper whose real emulator changed since it was written. libvirt keys its
 * capability cache on the wrapper's ctime; rewriting it invalidates libvirt's cache together
 * with the real QEMU's change, so libvirt never keeps stale capabilities.
 */
export function refreshWrappers(manifestPath: string): RefreshReport {
  const m = readManifest(manifestPath);
  const refreshed: RefreshReport['refreshed'] = [];
  const missing: string[] = [];
  for (const e of m?.entries ?? []) {
    if (e.kind !== 'wrapper' || !existsSync(e.path)) continue;
    const spec = parseWrapper(readFileSync(e.path, 'utf8'));
    if (!spec) continue;
    if (!existsSync(spec.real)) {
      missing.push(spec.real);
      continue;
    }
    const now = identityOf(spec.real);
    if (now === spec.identity) continue;
    const content = renderWrapper({ ...spec, identity: now });
    rewriteWrapper(e.path, content, 0o755);
    e.sha256 = sha(content);
    refreshed.push({ wrapper: e.path, real: spec.real });
  }
  if (m && refreshed.length) writeAtomic(manifestPath, JSON.stringify(m, null, 2) + '\n', 0o644);
  return { refreshed, missing };
}

/** The real emulators our installed wrappers name (the broker allows these). */
export function wrapperTargets(manifestPath: string): string[] {
  const out: string[] = [];
  let m: Manifest | null = null;
  try {
    m = readManifest(manifestPath);
  } catch {
    return out; // a corrupt manifest names nothing the broker should run
  }
  for (const e of m?.entries ?? []) {
    if (e.kind !== 'wrapper' || !existsSync(e.path)) continue;
    const st = statSync(e.path);
    if (st.uid !== 0 || (st.mode & 0o022) !== 0) continue; // the shim would not run it either
    const spec = parseWrapper(readFileSync(e.path, 'utf8'));
    if (spec) out.push(spec.real);
  }
  return out;
}

/** Wrappers whose real emulator changed (for doctor and the hook): wrapper path → reason. */
export function staleWrappers(manifestPath: string): Array<{ wrapper: string; real: string }> {
  const out: Array<{ wrapper: string; real: string }> = [];
  for (const e of readManifest(manifestPath)?.entries ?? []) {
    if (e.kind !== 'wrapper' || !existsSync(e.path)) continue;
    const spec = parseWrapper(readFileSync(e.path, 'utf8'));
    if (spec && existsSync(spec.real) && identityOf(spec.real) !== spec.identity) out.push({ wrapper: e.path, real: spec.real });
  }
  return out;
}

