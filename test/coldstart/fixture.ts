/**
 * The cold-start fixture: the REAL `virt-ebpf install` into the system paths (this is a
 * throwaway CI machine), the broker as a child process on the default socket (the only one
 * the wrapper can use under libvirt, which scrubs QEMU's environment), and `uninstall --force`
 * at the end with a check that every path the manifest listed is gone.
 */
import { SHIM_FILES } from '../../src/install/host';
import assert from 'node:assert/strict';
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { brokerRequest, DEFAULT_SOCKET } from '../../src/broker/client';
import { readManifest, type Manifest } from '../../src/install/manifest';
import { DEFAULT_PATHS } from '../../src/install/plan';
import { DEFAULT_PREFIX } from '../../src/install/runtime';
import { cli, waitFor } from './libvirt';
import { BROKER_NODE_FLAGS } from '../../src/broker/v8';
import { gone } from '../harness';

export const INSTALLED_CLI = join(DEFAULT_PREFIX, 'dist/src/cli/main.js');

/** Runs `virt-ebpf install` and returns the manifest it wrote. */
export function installForReal(): Manifest {
  const r = cli('install');
  assert.equal(r.status, 0, `virt-ebpf install failed: ${r.stderr.trim()}`);
  const m = readManifest(DEFAULT_PATHS.manifest);
  assert.ok(m, `install wrote no manifest at ${DEFAULT_PATHS.manifest}`);
  for (const e of m.entries) assert.ok(existsSync(e.path), `install listed ${e.path} but it is not there`);
  assert.ok(existsSync(INSTALLED_CLI), `the runtime is not at ${DEFAULT_PREFIX}`);
  for (const f of Object.values(SHIM_FILES)) assert.ok(existsSync(join(DEFAULT_PREFIX, f)), `install copied the built shim ${f}`);
  assert.ok(m.entries.some((e) => e.kind === 'launcher' && e.path === DEFAULT_PATHS.launcher), `install lists the virt-ebpf command ${DEFAULT_PATHS.launcher}`);
  const onPath = spawnSync('virt-ebpf', ['version'], { encoding: 'utf8', env: { ...process.env, PATH: '/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' } });
  assert.equal(onPath.status, 0, `virt-ebpf is not on root's PATH after install: ${onPath.stderr ?? onPath.error}`);
  return m;
}

/**
 * Runs `virt-ebpf uninstall --force` and returns what is still on disk of what the manifest
 * (read just before) listed, plus the runtime tree: the caller asserts it is empty.
 */
export function uninstallForReal(): string[] {
  const m = readManifest(DEFAULT_PATHS.manifest);
  const r = cli('uninstall', '--force');
  assert.equal(r.status, 0, `virt-ebpf uninstall --force failed: ${r.stderr.trim()}`);
  const listed = [...(m?.entries.map((e) => e.path) ?? []), DEFAULT_PATHS.manifest, m?.prefix ?? DEFAULT_PREFIX];
  return listed.filter((p) => existsSync(p));
}

function brokerAnswers(socket: string, timeoutMs = 1000): boolean {
  try {
    brokerRequest({ op: 'hello' }, { socket, timeoutMs });
    return true;
  } catch {
    return false;
  }
}

/**
 * The installed broker (`node` with the unit's flags `/usr/lib/virt-ebpf/dist/src/cli/main.js broker`) as a child; by
 * default on the default socket with the installed config (what the wrapper under libvirt uses).
 */
export class BrokerChild {
  #child?: ChildProcess;
  #log = '';
  #exited?: Promise<void>;
  readonly socket: string;
  readonly #args: string[];
  readonly #enter: string[];

  /** `enter`: a command prefix that runs it elsewhere (e.g. nsenter into another host's namespaces). */
  constructor(opts: { socket?: string; args?: string[]; enter?: string[] } = {}) {
    this.socket = opts.socket ?? DEFAULT_SOCKET;
    this.#args = opts.args ?? [];
    this.#enter = opts.enter ?? [];
  }

  /** Everything the broker printed (text log lines, src/log) since it started. */
  get log(): string {
    return this.#log;
  }

  get running(): boolean {
    return this.#child !== undefined;
  }

  async start(): Promise<void> {
    assert.ok(!this.#child, 'the broker is already running');
    assert.ok(!brokerAnswers(this.socket), `another broker answers on ${this.socket}; stop it first (two brokers would fight over the socket)`);
    const [cmd, ...args] = [...this.#enter, process.execPath, ...BROKER_NODE_FLAGS, INSTALLED_CLI, 'broker', ...this.#args];
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.#child = child;
    child.stdout!.on('data', (d) => (this.#log += d));
    child.stderr!.on('data', (d) => (this.#log += d));
    this.#exited = gone(child);
    let ended = false;
    void this.#exited.then(() => (ended = true));
    await waitFor(`the broker to answer on ${this.socket}`, 15_000, () => {
      if (ended) assert.fail(`the broker exited during start-up: ${this.#log.trim()}`);
      return brokerAnswers(this.socket, 500);
    });
  }

  /** The broker's pid (undefined when not running). */
  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** kill -9: no clean-up of any kind, as a crash would leave it. */
  async crash(): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = undefined;
    child.kill('SIGKILL');
    await this.#exited;
  }

  /** SIGTERM, bounded wait, SIGKILL if it does not go; the socket stops answering. */
  async stop(): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = undefined;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await this.#exited;
    clearTimeout(timer);
    assert.ok(!brokerAnswers(this.socket, 200), 'the broker still answers after it stopped');
  }

  /** `handed out` lines' `us` field: the broker's own time from request to sendmsg. */
  handoffMicros(): number[] {
    const out: number[] = [];
    for (const line of this.#log.split('\n')) {
      const m = /handed out (\{.*\})$/.exec(line);
      if (m) out.push((JSON.parse(m[1]) as { us: number }).us);
    }
    return out;
  }
}

/**
 * The end of a suite that installed for real and ran the broker: close its domains (destroy,
 * undefine, files), stop the broker, and uninstall unless the host had an install before.
 */
export async function tearDownInstalled(o: { domains: Array<{ close(): Promise<void> } | undefined>; broker: BrokerChild; installedBefore: boolean }): Promise<void> {
  for (const d of o.domains) await d?.close();
  if (o.broker.running) await o.broker.stop();
  if (!o.installedBefore && readManifest(DEFAULT_PATHS.manifest)) {
    const r = cli('uninstall', '--force');
    assert.equal(r.status, 0, r.stderr);
  }
}
