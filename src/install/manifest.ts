/**
 * The install manifest (what `virt-ebpf install` wrote, with content hashes) and the read-only
 * questions the rest of the product asks of it: which emulators the wrappers name, whether one
 * of them changed, which mode the install is in. Apart from install/apply.ts, which writes it,
 * so that a reader (the broker, status, doctor, migrate) loads none of the installer.
 */
import { existsSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { VirtEbpfError } from '../errors';
import type { Artifact } from './plan';
import { parseWrapper } from './wrapper-script';

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
  /** installed with --no-hook: no libvirt hook (a later plain install keeps it so) */
  hook?: 'off';
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

/** `says` of the install manifest at `manifestPath`; false without one, or with a corrupt one. */
function manifestSays(manifestPath: string, says: (m: Manifest) => boolean): boolean {
  try {
    const m = readManifest(manifestPath);
    return m ? says(m) : false;
  } catch {
    return false;
  }
}

/** Whether the install at `manifestPath` is host-wide (it diverted emulators). */
export function isHostWide(manifestPath: string): boolean {
  return manifestSays(manifestPath, (m) => m.entries.some((e) => e.kind === 'diversion'));
}

/** Whether the install at `manifestPath` has no libvirt hook (install --no-hook). */
export function isHookless(manifestPath: string): boolean {
  return manifestSays(manifestPath, (m) => m.hook === 'off');
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

/** What a wrapper records of its real emulator, to notice that the emulator changed. */
export function identityOf(path: string): string {
  const st = statSync(realpathSync(path));
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
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
