/**
 * What the libvirt suites share: virsh as the independent witness, the domain shape under test,
 * a wrapper stand-in libvirt accepts, and cleanup of our domains.
 *
 * libvirt probes `<emulator>` when a domain is defined ("Cannot check QEMU binary PATH: No such
 * file or directory" otherwise) and runs it as its qemu user, so the wrapper must exist and be
 * reachable by that user: a root-owned script in a root-owned directory outside the checkout
 * (which may sit below a private home). It is only rewritten when its text differs, so its ctime,
 * and with it libvirt's cached capabilities for it, survive from run to run.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { QEMU, trustedDir } from '../harness';

export const CONN = 'qemu:///system';
export const PREFIX = `vebpf-test-${process.pid}-`;

export interface Ran {
  status: number;
  stdout: string;
  stderr: string;
}

export function virshTry(...args: string[]): Ran {
  const r = spawnSync('virsh', ['-q', '-c', CONN, ...args], { encoding: 'utf8', timeout: 120_000, killSignal: 'SIGKILL' });
  if (r.error) assert.fail(`cannot run virsh (${r.error.message}); install libvirt-clients (scripts/setup.sh)`);
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

export function virsh(...args: string[]): string {
  const r = virshTry(...args);
  assert.equal(r.status, 0, `virsh ${args.join(' ')} failed: ${r.stderr.trim()}`);
  return r.stdout;
}

export const dumpInactive = (name: string) => virsh('dumpxml', '--inactive', name);

/** libvirt's own file for the persistent definition: its bytes and mtime show whether a define happened. */
export function configFile(name: string): { text: string; mtimeMs: number } {
  const path = `/etc/libvirt/qemu/${name}.xml`;
  return { text: readFileSync(path, 'utf8'), mtimeMs: statSync(path).mtimeMs };
}

/** The brief's domain: TCG q35, 64 MiB, no disks, one virtio NIC on a libvirt-made tap with 4 queues and rss on. */
export function domainXml(name: string, o: { emulator?: string | null; uuid?: string; rss?: boolean } = {}): string {
  const emulator = o.emulator === null ? [] : [`    <emulator>${o.emulator ?? QEMU}</emulator>`];
  return [
    `<domain type='qemu'>`,
    `  <name>${name}</name>`,
    ...(o.uuid ? [`  <uuid>${o.uuid}</uuid>`] : []),
    `  <memory unit='MiB'>64</memory>`,
    `  <os><type arch='x86_64' machine='q35'>hvm</type></os>`,
    `  <devices>`,
    ...emulator,
    `    <interface type='ethernet'>`,
    `      <model type='virtio'/>`,
    `      <driver queues='4'${o.rss === false ? '' : " rss='on'"}/>`,
    `    </interface>`,
    `  </devices>`,
    `</domain>`,
    '',
  ].join('\n');
}

export function defineWithVirsh(xml: string, scratch: string): void {
  const file = join(scratch, `define-${process.hrtime.bigint()}.xml`);
  writeFileSync(file, xml);
  try {
    virsh('define', file);
  } finally {
    rmSync(file, { force: true });
  }
}

/** A directory holding `qemu-system-x86_64`, a script that execs the real QEMU: our wrapper's stand-in. */
export function wrapperDir(): string {
  const dir = trustedDir('libvirt-wrappers');
  const path = join(dir, 'qemu-system-x86_64');
  const text = `#!/bin/sh\nexec ${QEMU} "$@"\n`;
  if (!existsSync(path) || readFileSync(path, 'utf8') !== text) writeFileSync(path, text, { mode: 0o755 });
  chmodSync(path, 0o755);
  return dir;
}

/** Destroy (if running) and undefine; tolerant, for finally blocks. */
export function removeDomain(name: string): void {
  if (virshTry('domstate', name).stdout.trim() === 'running') virshTry('destroy', name);
  virshTry('undefine', name);
  rmSync(`/var/log/libvirt/qemu/${name}.log`, { force: true });
}

export function removeOurDomains(): void {
  const r = virshTry('list', '--all', '--name');
  for (const name of r.stdout.split('\n').map((s) => s.trim())) if (name.startsWith(PREFIX)) removeDomain(name);
}

export function libvirtdReachable(): void {
  const v = spawnSync('virsh', ['-c', CONN, 'version'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(v.status, 0, `libvirtd is not reachable (${v.stderr?.trim()}); start it (scripts/setup.sh does)`);
}
