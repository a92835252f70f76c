/**
 * The wrapper shim binds a domain start to its domain in the broker before QEMU runs guest
 * code, also when the start needs nothing of the broker yet but will have the hot-plug shim: a
 * hello from the wrapper (run as libvirt's QEMU account, against the real broker), whose answer
 * never stops the start. The broker's `status` counts the live processes it holds a domain for
 * (`bound`, src/broker/peer.ts). The "emulator" is a static busybox that stays for a while
 * (the same process: the wrapper execs it), so the hot-plug shim the wrapper preloads is not
 * loaded into it.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, mkdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO, tempDir } from '../harness';
import { renderWrapper } from '../../src/install/wrapper-script';
import { lookupUser } from '../../src/sys/users';
import { ask, startTestBroker, until, type TestBroker } from '../broker/support';

const WRAPPER = join(REPO, 'dist/shims/vebpf-wrapper');
const dir = tempDir('virt-ebpf-bind-');
chmodSync(dir.path, 0o755);
const stateDir = join(dir.path, 'domains');
mkdirSync(stateDir, { mode: 0o755 });
const qemu = lookupUser('libvirt-qemu');
const uuid = '0b7e2f1a-1111-4222-8333-444455556666';
/** libvirt's monitor, as the wrapper finds it (the hot-plug shim is set up only with one). */
const MONITOR = ['-chardev', 'socket,id=charmonitor,fd=27,server=on,wait=off', '-mon', 'chardev=charmonitor,id=monitor,mode=control'];
/** A domain start as libvirt writes it, with no RSS device. */
const args = ['-name', 'guest=bindvm,debug-threads=on', '-uuid', uuid, ...MONITOR, '-nodefaults', '-device', '{"driver":"virtio-net-pci","id":"net0"}'];
const emulator = join(dir.path, 'emulator');
writeFileSync(emulator, '#!/bin/busybox sh\nexec /bin/busybox sleep 20\n', { mode: 0o755 });
/** The wrapper as `virt-ebpf install` writes it. */
const wrapperFile = join(dir.path, 'qemu-system-x86_64');
writeFileSync(wrapperFile, renderWrapper({ real: emulator, shim: WRAPPER, identity: 'test' }), { mode: 0o755 });

let broker: TestBroker;
const running: ChildProcess[] = [];
before(async () => {
  broker = await startTestBroker({ pool: { size: 0 } }, { cacheDir: join(dir.path, 'cache'), hookEnv: { stateDir } });
});
after(async () => {
  for (const p of running) p.kill('SIGKILL');
  await broker?.close();
  dir.remove();
});

/** The hook's record of the domain (current: by the hook), with its policy and hot-plug setting. */
function record(hotplug: boolean, policy = 'strict'): void {
  writeFileSync(join(stateDir, `${uuid}.json`), JSON.stringify({ name: 'bindvm', uuid, policy, hotplug }) + '\n', { mode: 0o644 });
}

/**
 * Start the wrapper as `as` (libvirt's QEMU account by default), wait until it has exec'd the
 * emulator (its /proc/PID/exe is busybox), run `during` while the emulator stays, check the
 * wrapper said nothing, and stop the emulator.
 */
async function whileRunning(socket: string, during: () => Promise<void>, as: { uid: number; gid: number } = qemu): Promise<void> {
  const p = spawn(wrapperFile, args, { uid: as.uid, gid: as.gid, env: { PATH: '/usr/bin:/bin', VIRT_EBPF_BROKER_SOCKET: socket, VIRT_EBPF_DOMAIN_STATE_DIR: stateDir }, stdio: ['ignore', 'ignore', 'pipe'] });
  running.push(p);
  let stderr = '';
  p.stderr!.on('data', (d) => (stderr += d));
  try {
    await until('the wrapper to exec the emulator', () => {
      try {
        return readlinkSync(`/proc/${p.pid}/exe`).endsWith('/busybox');
      } catch {
        return false;
      }
    }, 10_000, 20);
    await during();
    assert.equal(stderr, '');
  } finally {
    p.kill('SIGKILL');
    if (p.exitCode === null && p.signalCode === null) await once(p, 'exit');
  }
}

const bound = async () => (await ask(broker.socket, { v: 1, id: 9, op: 'status' })).bound as number;

test('a start with no RSS device and hot-plug on binds its process in the broker before the emulator runs; with hot-plug off the broker is not asked', { timeout: 60_000 }, async () => {
  record(false);
  await whileRunning(broker.socket, async () => assert.equal(await bound(), 0, 'hot-plug off: the broker was not asked'));
  record(true);
  await whileRunning(broker.socket, async () => assert.equal(await bound(), 1, 'hot-plug on: the wrapper connected, and the broker bound its process to the domain'));
  assert.equal(await bound(), 0, 'an ended process is not counted');
});

test('the binding never stops a start: broker down, or refusing the account (strict, hot-plug on, no RSS device): the emulator runs, nothing is said', { timeout: 60_000 }, async () => {
  record(true, 'strict');
  await whileRunning(join(dir.path, 'no-broker.sock'), async () => {});
  await whileRunning(broker.socket, async () => {}, { uid: 65534, gid: 65534 });
});
