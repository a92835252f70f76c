/**
 * What the cold-start suite and its benchmark need from the real libvirtd: domain XML for the
 * shapes under test, virsh with bounded waits, and what a running QEMU holds (its user and
 * capabilities, its BPF fds with their kernel ids, its -device arguments). Read from /proc and
 * libvirt's own files, never from our code's view of things.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO } from '../harness';

export const CONN = 'qemu:///system';
/** The checkout's CLI (what the brief's user runs to install, enable, uninstall). */
export const CLI = join(REPO, 'dist/src/cli/main.js');
export const QEMU_RUN_DIR = '/run/libvirt/qemu';
export const QEMU_LOG_DIR = '/var/log/libvirt/qemu';

export interface Ran {
  status: number;
  stdout: string;
  stderr: string;
  ms: number;
}

export function run(cmd: string, args: readonly string[], opts: { timeoutMs?: number; input?: string } = {}): Ran {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: opts.timeoutMs ?? 120_000, input: opts.input, killSignal: 'SIGKILL' });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.error) assert.fail(`cannot run ${cmd} ${args.join(' ')}: ${r.error.message}`);
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr, ms };
}

/** The same, without blocking the event loop (parallel starts, a broker child alive meanwhile). */
export function runAsync(cmd: string, args: readonly string[], opts: { timeoutMs?: number } = {}): Promise<Ran> {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ status: code ?? -1, stdout, stderr, ms: Number(process.hrtime.bigint() - t0) / 1e6 });
    });
  });
}

export function virshTry(...args: string[]): Ran {
  return run('virsh', ['-q', '-c', CONN, ...args]);
}

export function virsh(...args: string[]): string {
  const r = virshTry(...args);
  assert.equal(r.status, 0, `virsh ${args.join(' ')} failed: ${r.stderr.trim()}`);
  return r.stdout;
}

export function cli(...args: string[]): Ran {
  return run(process.execPath, [CLI, ...args]);
}

export interface NicSpec {
  /** `<driver rss='on'>` */
  rss: boolean;
  /** `<driver queues>`; 4 by default */
  queues?: number;
}

/** The suite's domain: TCG, q35, 128 MiB, 2 vCPUs, no disks, libvirt-created taps, a pty console. */
export function domainXml(o: { name: string; emulator?: string; nics: NicSpec[] }): string {
  const nics = o.nics.map(
    (n) =>
      `    <interface type='ethernet'>\n      <model type='virtio'/>\n      <driver queues='${n.queues ?? 4}'${n.rss ? " rss='on'" : ''}/>\n    </interface>\n`,
  );
  return [
    `<domain type='qemu'>`,
    `  <name>${o.name}</name>`,
    `  <memory unit='MiB'>128</memory>`,
    `  <vcpu>2</vcpu>`,
    `  <os><type arch='x86_64' machine='q35'>hvm</type></os>`,
    `  <devices>`,
    `    <emulator>${o.emulator ?? '/usr/bin/qemu-system-x86_64'}</emulator>`,
    ...nics.map((s) => s.trimEnd()),
    `    <console type='pty'/>`,
    `  </devices>`,
    `</domain>`,
    '',
  ].join('\n');
}

/** Define from text (through a file: virsh define reads a path). */
export function define(xml: string, scratch: string): void {
  const file = join(scratch, `define-${process.hrtime.bigint()}.xml`);
  writeFileSync(file, xml);
  try {
    virsh('define', file);
  } finally {
    rmSync(file, { force: true });
  }
}

/** Define `xml`, then enable eBPF RSS on it the way a user does: `virt-ebpf enable NAME`. */
export function defineEnabled(name: string, xml: string, scratch: string, opts: { policy?: 'strict' | 'fallback'; hotplug?: 'on' | 'off' } = {}): void {
  define(xml, scratch);
  const r = cli('enable', name, ...(opts.policy ? ['--policy', opts.policy] : []), ...(opts.hotplug ? ['--hotplug', opts.hotplug] : []));
  assert.equal(r.status, 0, `virt-ebpf enable ${name} failed: ${r.stderr.trim()}`);
}

export function domainState(name: string): string {
  const r = virshTry('domstate', name);
  return r.status === 0 ? r.stdout.trim() : 'undefined';
}

/** Destroy (if running) and undefine; tolerant, for finally blocks. Removes the domain log too. */
export function removeDomain(name: string): void {
  if (domainState(name) === 'running') virshTry('destroy', name);
  virshTry('undefine', name);
  rmSync(join(QEMU_LOG_DIR, `${name}.log`), { force: true });
}

export function testDomains(prefix: string): string[] {
  return virsh('list', '--all', '--name')
    .split('\n')
    .map((s) => s.trim())
    .filter((s) => s.startsWith(prefix));
}

export function qemuPid(name: string): number {
  const file = join(QEMU_RUN_DIR, `${name}.pid`);
  assert.ok(existsSync(file), `${file} is missing: ${name} is not running`);
  return Number(readFileSync(file, 'utf8').trim());
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export interface ProcStatus {
  uid: number;
  capEff: bigint;
}

export function procStatus(pid: number): ProcStatus {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const uid = Number(/^Uid:\s+\d+\s+(\d+)/m.exec(text)![1]);
  const capEff = BigInt('0x' + /^CapEff:\s+([0-9a-f]+)/m.exec(text)![1]);
  return { uid, capEff };
}

export function cmdline(pid: number): string[] {
  return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').slice(0, -1);
}

export interface BpfFd {
  fd: number;
  kind: 'prog' | 'map';
  /** kernel id (prog_id / map_id in fdinfo) */
  id: number;
  /** maps: value_size, which tells the three RSS maps apart (10 config, 40 key, 2 table) */
  valueSize?: number;
}

/** Every BPF fd a process holds, by fd number, with its kernel id (root reads any /proc/PID). */
export function bpfFds(pid: number): BpfFd[] {
  const out: BpfFd[] = [];
  for (const name of readdirSync(`/proc/${pid}/fd`)) {
    let target: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${name}`);
    } catch {
      continue;
    }
    const m = /^anon_inode:bpf-(prog|map)$/.exec(target);
    if (!m) continue;
    const info = readFileSync(`/proc/${pid}/fdinfo/${name}`, 'utf8');
    const kind = m[1] as 'prog' | 'map';
    const id = Number(new RegExp(`^${kind}_id:\\s+(\\d+)`, 'm').exec(info)?.[1]);
    const vs = /^value_size:\s+(\d+)/m.exec(info)?.[1];
    out.push({ fd: Number(name), kind, id, ...(vs !== undefined ? { valueSize: Number(vs) } : {}) });
  }
  return out.sort((a, b) => a.fd - b.fd);
}

/** The -device arguments libvirt wrote as JSON, parsed; others (key=value) are skipped. */
export function jsonDevices(argv: readonly string[]): Array<Record<string, unknown>> {
  const out: Array<Record<string, unknown>> = [];
  for (let i = 0; i < argv.length - 1; i++) {
    if (argv[i] !== '-device' || !argv[i + 1].startsWith('{')) continue;
    out.push(JSON.parse(argv[i + 1]) as Record<string, unknown>);
  }
  return out;
}

export function virtioNetDevices(argv: readonly string[]): Array<Record<string, unknown>> {
  return jsonDevices(argv).filter((d) => String(d.driver).startsWith('virtio-net'));
}

export async function waitFor<T>(what: string, timeoutMs: number, probe: () => T | undefined | false): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export function qmp(name: string, command: object): unknown {
  const out = virsh('qemu-monitor-command', name, JSON.stringify(command));
  const reply = JSON.parse(out) as { return?: unknown; error?: unknown };
  assert.ok('return' in reply, `QMP ${JSON.stringify(command)} failed: ${out.trim()}`);
  return reply.return;
}
