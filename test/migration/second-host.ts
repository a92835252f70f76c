/**
 * A second libvirt host on this machine (second-host.sh says what it has of its own), its
 * broker, and commands run "on" it. Its sockets are reachable from here: virsh -c `uri`, the
 * broker at `brokerSocket`. Domain images are shared (/var/lib/libvirt/images is the same
 * directory on both, like shared storage), so a migration moves memory and devices only.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import type { LibvirtHost } from '../support/guest';
import { BrokerChild, INSTALLED_CLI } from '../coldstart/fixture';
import { waitFor } from '../coldstart/libvirt';
import { REPO } from '../harness';

const SCRIPT = join(REPO, 'test', 'migration', 'second-host.sh');

export interface SecondHostOptions {
  hostname: string;
  /** `bare`: virt-ebpf is not installed there (no hook, no wrapper, no runtime). */
  bare?: boolean;
  /** the packaged QEMU at its own path, where this host diverted it: no host-wide mode there */
  plainQemu?: boolean;
}

export class SecondHost {
  readonly dir: string;
  readonly hostname: string;
  readonly uuid = randomUUID();
  readonly bare: boolean;
  readonly plainQemu: boolean;
  readonly uri: string;
  readonly libvirtHost: LibvirtHost;
  readonly brokerSocket: string;
  #daemon?: ChildProcess;
  #log = '';
  #broker?: BrokerChild;

  constructor(dir: string, o: SecondHostOptions) {
    this.dir = dir;
    this.hostname = o.hostname;
    this.bare = o.bare ?? false;
    this.plainQemu = o.plainQemu ?? false;
    this.uri = `qemu+unix:///system?socket=${join(dir, 'run-libvirt', 'libvirt-sock')}`;
    this.libvirtHost = { uri: this.uri, runDir: join(dir, 'run-libvirt', 'qemu'), logDir: join(dir, 'var-log-libvirt', 'qemu') };
    this.brokerSocket = join(dir, 'run-virt-ebpf', 'broker.sock');
  }

  /** The libvirtd's pid (its namespaces are the host's). */
  get pid(): number {
    assert.ok(this.#daemon?.pid, `${this.hostname}: libvirtd is not running`);
    return this.#daemon.pid;
  }

  /** A command prefix that runs a command on this host (its root and cwd too: this machine may itself be a chroot). */
  get enter(): string[] {
    return ['nsenter', '-t', String(this.pid), '-m', '-u', '-r', '-w', '--'];
  }

  /** Prepare its directories from this host's (after `virt-ebpf install` here: the hook comes along) and start its libvirtd. */
  async start(): Promise<void> {
    rmSync(this.dir, { recursive: true, force: true });
    for (const d of ['run-libvirt', 'run-virt-ebpf', 'var-cache-libvirt', 'var-log-libvirt/qemu', 'var-cache-virt-ebpf']) mkdirSync(join(this.dir, d), { recursive: true, mode: 0o755 });
    const etc = join(this.dir, 'etc-libvirt');
    cpSync('/etc/libvirt', etc, { recursive: true, preserveTimestamps: true });
    // No domains, networks, pools or autostart of this host.
    for (const d of ['qemu', 'qemu/networks', 'storage']) {
      const p = join(etc, d);
      if (!existsSync(p)) continue;
      for (const f of readdirSync(p)) if (f.endsWith('.xml')) rmSync(join(p, f));
    }
    for (const d of ['qemu/autostart', 'qemu/networks/autostart', 'storage/autostart']) rmSync(join(etc, d), { recursive: true, force: true });
    appendLine(join(etc, 'libvirtd.conf'), `host_uuid = "${this.uuid}"`);
    // Both daemons would name the same cgroup for a domain; QEMU's output to a file, not virtlogd.
    appendLine(join(etc, 'qemu.conf'), 'cgroup_controllers = [ ]');
    appendLine(join(etc, 'qemu.conf'), 'stdio_handler = "file"');
    // /var/lib/libvirt's directories with their owners and modes; images are shared (bound below).
    copyDirs('/var/lib/libvirt', join(this.dir, 'var-lib-libvirt'));
    const child = spawn('unshare', ['--mount', '--uts', '--propagation', 'private', 'bash', SCRIPT, this.dir, this.hostname, this.uuid, this.bare ? 'bare' : this.plainQemu ? 'plain-qemu' : ''], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.#daemon = child;
    child.stdout!.on('data', (d) => (this.#log += d));
    child.stderr!.on('data', (d) => (this.#log += d));
    let exited = false;
    child.once('exit', () => (exited = true));
    await waitFor(`${this.hostname}'s libvirtd to answer`, 30_000, () => {
      if (exited) assert.fail(`${this.hostname}'s libvirtd exited: ${this.#log.trim()}`);
      return spawnSync('virsh', ['-c', this.uri, 'version'], { stdio: 'ignore', timeout: 5000 }).status === 0;
    });
  }

  /** virsh against this host; throws with its stderr. */
  virsh(...args: string[]): string {
    const r = spawnSync('virsh', ['-q', '-c', this.uri, ...args], { encoding: 'utf8', timeout: 180_000 });
    assert.equal(r.status, 0, `virsh (${this.hostname}) ${args.join(' ')} failed: ${(r.stderr ?? String(r.error)).trim()}`);
    return r.stdout;
  }

  /** The installed `virt-ebpf` CLI run on this host (on a bare host: the checkout's). */
  cli(...args: string[]): { code: number; stdout: string; stderr: string } {
    const main = this.bare ? join(REPO, 'dist', 'src', 'cli', 'main.js') : INSTALLED_CLI;
    const r = spawnSync(this.enter[0], [...this.enter.slice(1), process.execPath, main, ...args], { encoding: 'utf8', timeout: 120_000 });
    return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? String(r.error) };
  }

  /** Its own broker, started in its namespaces. */
  async startBroker(): Promise<BrokerChild> {
    assert.ok(!this.bare, 'a bare host has no virt-ebpf to run');
    this.#broker ??= new BrokerChild({ socket: this.brokerSocket, enter: this.enter });
    if (!this.#broker.running) await this.#broker.start();
    return this.#broker;
  }

  async stopBroker(): Promise<void> {
    await this.#broker?.stop();
  }

  /** The domain's QEMU pid there (by its pid file: libvirt gives QEMU a mount namespace of its own). */
  qemuPid(name: string): number {
    try {
      return Number(readFileSync(join(this.libvirtHost.runDir, `${name}.pid`), 'utf8').trim());
    } catch {
      return -1;
    }
  }

  /** Every domain there destroyed and undefined, its broker and libvirtd stopped, its directory removed. */
  async stop(): Promise<void> {
    if (this.#daemon && this.#daemon.exitCode === null) {
      const list = spawnSync('virsh', ['-q', '-c', this.uri, 'list', '--all', '--name'], { encoding: 'utf8', timeout: 30_000 });
      for (const name of (list.stdout ?? '').split('\n').map((s) => s.trim()).filter(Boolean)) {
        spawnSync('virsh', ['-q', '-c', this.uri, 'destroy', name], { stdio: 'ignore', timeout: 60_000 });
        spawnSync('virsh', ['-q', '-c', this.uri, 'undefine', name], { stdio: 'ignore', timeout: 30_000 });
      }
    }
    await this.#broker?.stop();
    const d = this.#daemon;
    if (d && d.exitCode === null) {
      const gone = new Promise<void>((r) => d.once('exit', () => r()));
      d.kill('SIGTERM');
      const timer = setTimeout(() => d.kill('SIGKILL'), 15_000);
      await gone;
      clearTimeout(timer);
    }
    this.#daemon = undefined;
    rmSync(this.dir, { recursive: true, force: true });
  }

  get log(): string {
    return this.#log;
  }
}

function appendLine(file: string, line: string): void {
  const text = readFileSync(file, 'utf8');
  writeFileSync(file, (text.endsWith('\n') || text === '' ? text : text + '\n') + line + '\n');
}

/** The directory tree of `from` (directories only) under `to`, with owners and modes. */
function copyDirs(from: string, to: string): void {
  const st = statSync(from);
  mkdirSync(to, { recursive: true });
  chownSync(to, st.uid, st.gid);
  chmodSync(to, st.mode & 0o7777);
  for (const e of readdirSync(from, { withFileTypes: true })) if (e.isDirectory()) copyDirs(join(from, e.name), join(to, e.name));
}
