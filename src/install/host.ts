/**
 * Gathering the facts `installPlan` needs from this host (side effects: PATH scan, probes,
 * file reads), kept apart from the pure plan.
 */
import { existsSync, readFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { untrustedReason } from '../sys/trust';
import { identityOf } from './manifest';
import { HostFacts, InstallPaths } from './plan';
import { SHIM_FILES } from '../shims/constants';
import { NICED_LOAD_FILE } from '../bpf/niced-load';
export { SHIM_FILES };
import { readMarker } from './runtime';

/** The libvirt hook as libvirt runs it (its placeholders filled): hooks/qemu.d/virt-ebpf. */
export const HOOK_TEMPLATE = 'hooks/qemu.d/virt-ebpf';
export const TEMPLATE_FILES = ['virt-ebpfd.socket', 'virt-ebpfd.service', 'apparmor-libvirt-qemu', 'apt-refresh.conf', 'launcher'];

/** What `npm run build` compiles from C (scripts/build-shims.sh), relative to the prefix: the shims, the broker's niced load. */
export const BUILT_C_FILES: readonly string[] = [...Object.values(SHIM_FILES), NICED_LOAD_FILE];

/** Of BUILT_C_FILES, those missing under `prefix`, as absolute paths (install refuses, doctor fails on any). */
export function missingBuiltC(prefix: string): string[] {
  return BUILT_C_FILES.map((f) => join(prefix, f)).filter((f) => !existsSync(f));
}
export const EMULATOR_DIRS = ['/usr/bin', '/usr/local/bin', '/usr/libexec'];

export interface EmulatorChoice {
  path: string;
  wrapped: boolean;
  why?: string;
}

/** Every qemu-system-* on PATH: wrapped when trusted, in an allowed dir, and supported. */
export async function chooseEmulators(cacheDir: string, searchPath?: string): Promise<EmulatorChoice[]> {
  const { listEmulatorsOnPath, probeEmulator } = await import('../emulator'); // only install probes
  const out: EmulatorChoice[] = [];
  const names = new Map<string, string>();
  for (const path of listEmulatorsOnPath(searchPath)) {
    const taken = names.get(basename(path));
    if (taken) {
      // One wrapper file per name: a domain's <emulator> maps to wrapperDir/basename.
      out.push({ path, wrapped: false, why: `${taken} (earlier on PATH) is wrapped under the same name` });
      continue;
    }
    if (!EMULATOR_DIRS.includes(dirname(path))) {
      out.push({ path, wrapped: false, why: `not in ${EMULATOR_DIRS.join(', ')}` });
      continue;
    }
    const untrusted = untrustedReason(path);
    if (untrusted) {
      out.push({ path, wrapped: false, why: untrusted });
      continue;
    }
    try {
      const { caps } = await probeEmulator(path, { cacheDir });
      out.push(caps.supported ? { path, wrapped: true } : { path, wrapped: false, why: caps.reason });
      if (caps.supported) names.set(basename(path), path);
    } catch (e) {
      out.push({ path, wrapped: false, why: (e as Error).message });
    }
  }
  return out;
}

export function hostFacts(opts: { prefix: string; emulators: string[]; paths?: Partial<InstallPaths> }): HostFacts {
  const templates: Record<string, string> = {};
  for (const f of TEMPLATE_FILES) templates[f] = readFileSync(join(opts.prefix, 'templates', f), 'utf8');
  templates.hook = readFileSync(join(opts.prefix, HOOK_TEMPLATE), 'utf8');
  return {
    node: process.execPath,
    prefix: opts.prefix,
    emulators: opts.emulators.map((path) => ({ path, identity: identityOf(path) })),
    templates,
    apparmor: existsSync('/etc/apparmor.d/abstractions'),
    systemd: existsSync('/run/systemd/system'),
    apt: existsSync('/etc/apt/apt.conf.d'),
    packaged: readMarker(opts.prefix)?.owner === 'package',
    paths: opts.paths,
  };
}
