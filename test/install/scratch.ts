/**
 * Installing into a scratch root: every install path under one directory, and a runtime tree
 * the install's trust check accepts (root-owned, not group/world-writable up to /) — a copy of
 * this checkout's runtime, because CI may clone the checkout below a world-writable directory.
 */
import { join } from 'node:path';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import type { InstallPaths } from '../../src/install/plan';
import { copyRuntimeParts } from '../../src/install/runtime';
import { REPO, trustedDir } from '../harness';

export function scratchPaths(root: string): InstallPaths {
  return {
    wrapperDir: join(root, 'usr/libexec/virt-ebpf'),
    hookFile: join(root, 'etc/libvirt/hooks/qemu.d/virt-ebpf'),
    unitDir: join(root, 'etc/systemd/system'),
    configFile: join(root, 'etc/virt-ebpf/config.json'),
    apparmorFile: join(root, 'etc/apparmor.d/abstractions/libvirt-qemu.d/virt-ebpf'),
    aptFile: join(root, 'etc/apt/apt.conf.d/80virt-ebpf'),
    launcher: join(root, 'usr/local/sbin/virt-ebpf'),
    manifest: join(root, 'var/lib/virt-ebpf/installed.json'),
  };
}

let prefix: string | undefined;

/** This checkout's runtime, copied once per test process into a trusted directory. */
export function trustedPrefix(): string {
  if (prefix) return prefix;
  const dir = trustedDir('runtime');
  rmSync(dir, { recursive: true, force: true });
  const fresh = trustedDir('runtime');
  copyRuntimeParts(REPO, fresh);
  return (prefix = fresh);
}

/** Every file (not directory) under `dir`, dot-files and staged files included. */
export function allFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? allFiles(join(dir, e.name)) : [join(dir, e.name)]));
}
