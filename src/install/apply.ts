/**
 * The side-effect half of install/uninstall/refresh: write the planned artifacts atomically,
 * remember exactly what was written (manifest with content hashes), remove exactly that, and
 * tell libvirtd to rescan its hooks.
 */
import { missingBuiltC } from './host';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync, rmdirSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { VirtEbpfError } from '../errors';
import { parseWrapper, renderWrapper } from './wrapper-script';
import { DEFAULT_PATHS, HostFacts, installPlan, resolvePaths } from './plan';
import { assertTrustedExecutable } from '../sys/trust';
import { readMarker } from './runtime';
import { divert, localDiversions, restorePackaged, trueName } from './divert';
import { SHIM_FILES } from '../shims/constants';
import { type Manifest, type ManifestEntry, identityOf, readManifest, staleWrappers } from './manifest';

const sha = (s: string) => createHash('sha256').update(s).digest('hex');

/**
 * Where a file is written before it is renamed into place: a private directory inside the
 * file's own directory. Inside, so the rename never crosses a filesystem and the broker's unit
 * can write there (ProtectSystem=strict allows only our own directories); a directory, because
 * the directories we write to are read by programs that take every file in them — libvirt runs
 * every executable regular file in qemu.d (dot-files too) but never looks into a subdirectory,
 * apt and AppArmor read every file of their .d directories. A file cut short by a crash is left
 * where none of them looks, and the next install or uninstall removes it.
 */
export const STAGING_DIR = '.virt-ebpf-staging';
/** The staged copies an older install left beside their targets (always removed). */
const LEGACY_TMP_SUFFIX = '.virt-ebpf-tmp';

export function stagingDirOf(path: string): string {
  return join(dirname(path), STAGING_DIR);
}

/** Test seam: `beforeRename(target)` runs when the new content is staged and not yet in place (a crash there). */
export interface InstallFaults {
  beforeRename?(target: string): void;
}

function writeAtomic(path: string, content: string, mode: number, faults?: InstallFaults): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  const staging = stagingDirOf(path);
  mkdirSync(staging, { recursive: true, mode: 0o700 });
  const tmp = join(staging, `${basename(path)}.${process.pid}`);
  writeFileSync(tmp, content, { mode });
  chmodSync(tmp, mode);
  faults?.beforeRename?.(path);
  renameSync(tmp, path);
  try {
    rmdirSync(staging);
  } catch {
    /* another writer's file is staged there (or a crashed one's: the next install removes it) */
  }
}

/** Remove what a crashed install left staged beside these files. */
export function removeStaged(paths: Iterable<string>): string[] {
  const removed: string[] = [];
  for (const p of new Set([...paths].flatMap((f) => [stagingDirOf(f), `${f}${LEGACY_TMP_SUFFIX}`]))) {
    if (!existsSync(p)) continue;
    rmSync(p, { recursive: true, force: true });
    removed.push(p);
  }
  return removed;
}

/**
 * Everything root runs from an install — node (the hook's `node=`, the unit's ExecStart), the
 * shims, the CLI and the prefix with every directory above it — must be root's alone.
 */
function assertTrustedRuntime(facts: HostFacts): void {
  assertTrustedExecutable(facts.node, 'node');
  assertTrustedExecutable(facts.prefix, 'prefix');
}

/**
 * Rewrite a wrapper so libvirt notices: libvirt keeps the wrapper's ctime in whole seconds
 * (`<qemuctime>`), so a rewrite within the same second as the previous change would go
 * unnoticed. Make sure the new ctime lands in a later second.
 */
function rewriteWrapper(path: string, content: string, mode: number, faults?: InstallFaults): void {
  const before = existsSync(path) ? Math.floor(statSync(path).ctimeMs / 1000) : -1;
  writeAtomic(path, content, mode, faults);
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

export interface InstallReport {
  written: string[];
  kept: string[];
  /** emulator paths now diverted (host-wide) */
  diverted: string[];
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

export function install(facts: HostFacts, opts: { rescan?: boolean; faults?: InstallFaults } = {}): InstallReport {
  const missing = missingBuiltC(facts.prefix);
  if (missing.length) {
    throw new VirtEbpfError('SHIMS_MISSING', `${missing[0]} does not exist: the emulator wrapper, the hook, hot-plug and the broker's loads need what is built from C (shims/*.c, src/bpf/niced-load.c)`, {
      remedy: 'run `npm run build` in the checkout (needs cc: apt-get install gcc libc6-dev), then install again',
    });
  }
  assertTrustedRuntime(facts);
  const paths = resolvePaths(facts);
  const previous = readManifest(paths.manifest);
  facts = withDiversions(facts, previous);
  const plan = installPlan(facts);
  removeStaged([...plan.map((a) => a.path), ...(previous?.entries.map((e) => e.path) ?? []), paths.manifest]);
  const written: string[] = [];
  const kept: string[] = [];
  const entries: ManifestEntry[] = [];
  for (const a of plan) {
    if (a.kind === 'diversion') {
      entries.push({ kind: a.kind, path: a.path, sha256: sha(a.content) }); // made by withDiversions
      continue;
    }
    const ours = previous?.entries.find((e) => e.path === a.path && e.kind === a.kind);
    if (a.keepForeign && !ours && existsSync(a.path) && !sameFile(a.path, a.content, a.mode)) {
      kept.push(a.path); // not written by an install of ours (nor what we would write): the user's
      continue;
    }
    if (a.userEditable && existsSync(a.path)) {
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
    if (a.kind === 'wrapper') rewriteWrapper(a.path, a.content, a.mode, opts.faults);
    else writeAtomic(a.path, a.content, a.mode, opts.faults);
    written.push(a.path);
    entries.push({ kind: a.kind, path: a.path, sha256: sha(a.content) });
  }
  // What an earlier install wrote and this one does not (a wrapper whose emulator is gone, the
  // units and command of a checkout's install once the package ships its own): ours, removed.
  // A config stays: the user may have edited it.
  // Only a file whose content is still what we wrote: at a path a diversion was removed from,
  // dpkg's own file is back.
  for (const e of previous?.entries ?? []) {
    if (!entries.some((x) => x.path === e.path) && e.kind !== 'config' && e.kind !== 'diversion' && isOurs(e)) unlinkSync(e.path);
  }
  const manifest: Manifest = { version: 1, prefix: facts.prefix, installedAt: new Date().toISOString(), entries, ...(facts.hook === false ? { hook: 'off' as const } : {}) };
  writeAtomic(paths.manifest, JSON.stringify(manifest, null, 2) + '\n', 0o644, opts.faults);
  return { written, kept, diverted: entries.filter((e) => e.kind === 'diversion').map((e) => e.path), hookRescan: opts.rescan === false ? 'skipped' : rescanHooks() };
}

/** The file at the entry's path is still exactly what we wrote. */
function isOurs(e: ManifestEntry): boolean {
  try {
    return statSync(e.path).isFile() && sha(readFileSync(e.path, 'utf8')) === e.sha256;
  } catch {
    return false;
  }
}

/**
 * The emulators' real binaries as this install leaves them. Host-wide: each packaged emulator
 * diverted (dpkg moves it to its .distrib name) and at once our wrapper at its path, emulator by
 * emulator, so that no moment leaves a path without a program longer than a rename; a failure
 * puts that emulator back before it is thrown. Diversions of ours no longer wanted (not
 * host-wide now, or an emulator install no longer wraps, or one an interrupted install left
 * without a manifest) are undone: our wrapper at the path removed first. Side effects.
 */
function withDiversions(facts: HostFacts, previous: Manifest | null): HostFacts {
  const wanted = new Set(facts.hostWide ? facts.emulators.map((e) => e.path) : []);
  // dpkg's list is the system's: only an install into the system's paths may act on it.
  const system = resolvePaths(facts).manifest === DEFAULT_PATHS.manifest;
  const ours = new Set([...(previous?.entries ?? []).filter((d) => d.kind === 'diversion').map((d) => d.path), ...(system ? localDiversions() : [])]);
  for (const path of ours) if (!wanted.has(path)) restorePackaged(path);
  const shim = join(facts.prefix, SHIM_FILES.wrapper);
  for (const path of wanted) {
    divert(path);
    try {
      const real = trueName(path);
      if (!existsSync(path)) writeAtomic(path, renderWrapper({ real, shim, identity: identityOf(real), hostWide: true }), 0o755);
    } catch (e) {
      restorePackaged(path);
      throw e;
    }
  }
  return {
    ...facts,
    emulators: facts.emulators.map((e) => {
      const real = trueName(e.path);
      return { path: e.path, real, identity: identityOf(real) };
    }),
  };
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
  removed.push(...removeStaged([...m.entries.map((e) => e.path), manifestPath]));
  for (const e of m.entries) {
    if (e.kind === 'diversion' || !existsSync(e.path)) continue;
    if (!isOurs(e) && (e.kind === 'config' || m.entries.some((d) => d.kind === 'diversion' && d.path === e.path))) {
      kept.push({ path: e.path, why: e.kind === 'config' ? 'edited since install' : 'not the wrapper we wrote (the packaged file is back)' });
      continue;
    }
    unlinkSync(e.path);
    removed.push(e.path);
    pruneEmptyDirs(dirname(e.path));
  }
  // With our wrappers gone from the emulators' paths, dpkg moves the packaged files back.
  for (const e of m.entries) {
    if (e.kind !== 'diversion') continue;
    restorePackaged(e.path);
    removed.push(`diversion of ${e.path}`);
  }
  unlinkSync(manifestPath);
  pruneEmptyDirs(dirname(manifestPath));
  // The runtime install copied (see runtime.ts), only if install owns it: never the package's
  // (dpkg removes that), never a directory without our marker (unless it has the layout of a
  // runtime copied before the marker existed).
  const tree = opts.removeTree;
  const marker = tree ? readMarker(tree) : null;
  const legacy = tree && !marker && existsSync(join(tree, 'dist/src/cli/main.js')) && (existsSync(join(tree, 'hooks/qemu.d/virt-ebpf')) || existsSync(join(tree, 'templates/hook')) || existsSync(join(tree, 'templates/hook.sh')));
  if (tree && (marker?.owner === 'install' || legacy)) {
    rmSync(tree, { recursive: true, force: true });
    removed.push(tree);
  }
  if (opts.rescan !== false) rescanHooks();
  return { removed, kept };
}

/**
 * Remove directories we may have created, while empty: never a shared system dir, a top-level
 * one, or a sticky one such as /tmp (empty on a fresh system, and everyone's).
 */
function pruneEmptyDirs(dir: string): void {
  const keep = new Set(['/', '/etc', '/usr', '/usr/libexec', '/usr/local', '/usr/local/sbin', '/var', '/var/lib', '/etc/systemd/system', '/etc/libvirt/hooks', '/etc/apt/apt.conf.d', '/etc/apparmor.d/abstractions']);
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

/**
 * If this wrapper's real QEMU changed since libvirt read its capabilities, rewrite the wrapper
 * (libvirt then re-reads them) and say so; the hook's one way to repair a stale wrapper.
 */
export function refreshIfStale(manifestPath: string, wrapper: string): boolean {
  if (!existsSync(manifestPath) || !staleWrappers(manifestPath).some((s) => s.wrapper === wrapper)) return false;
  refreshWrappers(manifestPath);
  return true;
}
