/**
 * What `virt-ebpf install` puts on a host, as data: every file with its content and mode.
 * Pure: the facts about the host come in (`HostFacts`), the list of artifacts goes out, so
 * uninstall can remove exactly this list and tests can check it without touching /etc.
 */
import { SHIM_FILES } from '../shims/constants';
import { basename, dirname, join } from 'node:path';
import { renderWrapper } from './wrapper-script';
import { VirtEbpfError } from '../errors';
import { CONFIG_FILE } from '../shims/constants';
import { BROKER_NODE_FLAGS } from '../broker/v8';

export interface HostFacts {
  /** absolute path of node */
  node: string;
  /** the project's installed root (holds dist/ and templates/) */
  prefix: string;
  /**
   * emulators to wrap: the path domains name, the real binary (its dpkg diversion under the
   * host-wide mode, else the same path) and the real binary's identity
   */
  emulators: Array<{ path: string; real?: string; identity: string }>;
  /** install --host-wide: divert the packaged emulators and put host-wide wrappers at their paths */
  hostWide?: boolean;
  /**
   * install --no-hook (false): no libvirt hook, so libvirt forks nothing for any domain's
   * events; the broker reads an enabled domain's settings from libvirt at exec-plan instead
   */
  hook?: boolean;
  /** template texts by file name (templates/…) */
  templates: Record<string, string>;
  apparmor: boolean;
  systemd: boolean;
  apt: boolean;
  /**
   * the runtime is the Debian package's (/usr/lib/virt-ebpf with a `package` marker): the
   * package ships the systemd units and /usr/sbin/virt-ebpf itself, so install writes neither
   */
  packaged: boolean;
  /** overridable locations (tests install into a scratch root) */
  paths?: Partial<InstallPaths>;
}

export interface InstallPaths {
  wrapperDir: string;
  hookFile: string;
  unitDir: string;
  configFile: string;
  apparmorFile: string;
  aptFile: string;
  /** the `virt-ebpf` command of an install from a checkout (on root's PATH) */
  launcher: string;
  manifest: string;
}

export const DEFAULT_PATHS: InstallPaths = {
  wrapperDir: '/usr/libexec/virt-ebpf',
  hookFile: '/etc/libvirt/hooks/qemu.d/virt-ebpf',
  unitDir: '/etc/systemd/system',
  configFile: CONFIG_FILE,
  apparmorFile: '/etc/apparmor.d/abstractions/libvirt-qemu.d/virt-ebpf',
  aptFile: '/etc/apt/apt.conf.d/80virt-ebpf',
  launcher: '/usr/local/sbin/virt-ebpf',
  manifest: '/var/lib/virt-ebpf/installed.json',
};

/** `diversion`: the dpkg diversion of `path` to `content` (apply makes it, uninstall removes it). */
export type ArtifactKind = 'wrapper' | 'hook' | 'unit' | 'config' | 'apparmor' | 'apt' | 'launcher' | 'diversion';

export interface Artifact {
  kind: ArtifactKind;
  path: string;
  mode: number;
  content: string;
  /** keep a file the user may have edited (config) when its content differs from ours */
  userEditable?: boolean;
  /**
   * a file already at this path that no install of ours wrote is the user's: kept, never taken
   * over — unless it is exactly what we would write (an install whose manifest was lost)
   */
  keepForeign?: boolean;
}

export const DEFAULT_CONFIG = {
  policy: 'strict',
  pool: { size: 2 },
};

export function fill(template: string, vars: Record<string, string>): string {
  return template.replace(/@([A-Z_]+)@/g, (m, k: string) => vars[k] ?? m);
}

/**
 * The kernel reads at most 255 bytes of a `#!` line (BINPRM_BUF_SIZE) and splits it at the first
 * blank: the hook file and the wrappers name their C shim there, so its path must fit.
 */
export function assertShebangPath(path: string): void {
  if (!path.startsWith('/') || /\s/.test(path) || `#!${path}`.length > 255) {
    throw new VirtEbpfError('USAGE', `the install prefix puts the shims at ${path}, which cannot be named on a #! line (absolute, no blanks, at most 253 bytes)`, {
      remedy: 'install with a shorter --prefix without blanks',
    });
  }
}

export function resolvePaths(facts: HostFacts): InstallPaths {
  return { ...DEFAULT_PATHS, ...facts.paths };
}

export function wrapperPath(paths: InstallPaths, emulator: string): string {
  return join(paths.wrapperDir, basename(emulator));
}

/** What the templates' @NAME@ placeholders stand for (install, and the package's build). */
export function templateVars(node: string, prefix: string, p: InstallPaths): Record<string, string> {
  return {
    NODE: node,
    BROKER_NODE_FLAGS: BROKER_NODE_FLAGS.join(' '),
    CLI: join(prefix, 'dist/src/cli/main.js'),
    HOOK: join(prefix, 'dist/src/hook/main.js'),
    HOOK_SHIM: join(prefix, SHIM_FILES.hook),
    PREFIX: prefix,
    WRAPPER_DIR: p.wrapperDir,
    MANIFEST_DIR: dirname(p.manifest),
  };
}

/** The systemd units install writes (the package ships the same, rendered at build time). */
export const UNIT_FILES = ['virt-ebpfd.socket', 'virt-ebpfd.service'] as const;

export function installPlan(facts: HostFacts): Artifact[] {
  const p = resolvePaths(facts);
  const vars = templateVars(facts.node, facts.prefix, p);
  assertShebangPath(vars.HOOK_SHIM);
  assertShebangPath(join(facts.prefix, SHIM_FILES.wrapper));
  const shim = join(facts.prefix, SHIM_FILES.wrapper);
  const out: Artifact[] = facts.emulators.map((e) => ({
    kind: 'wrapper' as const,
    path: wrapperPath(p, e.path),
    mode: 0o755,
    content: renderWrapper({ real: e.real ?? e.path, shim, identity: e.identity, hookless: facts.hook === false }),
  }));
  if (facts.hostWide) {
    for (const e of facts.emulators) {
      const real = e.real ?? e.path;
      if (real === e.path) throw new VirtEbpfError('USAGE', `${e.path} is not diverted: the host-wide wrapper cannot take its place`, { remedy: 'run `virt-ebpf install --host-wide` (it diverts the packaged emulators first)' });
      out.push({ kind: 'diversion', path: e.path, mode: 0, content: real });
      out.push({ kind: 'wrapper', path: e.path, mode: 0o755, content: renderWrapper({ real, shim, identity: e.identity, hostWide: true, hookless: facts.hook === false }) });
    }
  }
  if (facts.hook !== false) out.push({ kind: 'hook', path: p.hookFile, mode: 0o755, content: fill(facts.templates.hook, vars) });
  out.push({ kind: 'config', path: p.configFile, mode: 0o644, content: JSON.stringify(DEFAULT_CONFIG, null, 2) + '\n', userEditable: true });
  if (facts.systemd && !facts.packaged) {
    for (const unit of UNIT_FILES) {
      out.push({ kind: 'unit', path: join(p.unitDir, unit), mode: 0o644, content: fill(facts.templates[unit], vars) });
    }
  }
  if (facts.apparmor) out.push({ kind: 'apparmor', path: p.apparmorFile, mode: 0o644, content: fill(facts.templates['apparmor-libvirt-qemu'], vars) });
  if (facts.apt) out.push({ kind: 'apt', path: p.aptFile, mode: 0o644, content: fill(facts.templates['apt-refresh.conf'], vars) });
  if (!facts.packaged) out.push({ kind: 'launcher', path: p.launcher, mode: 0o755, content: fill(facts.templates.launcher, vars), keepForeign: true });
  return out;
}
