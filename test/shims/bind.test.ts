/**
 * The wrapper shim binds a domain start to its domain in the broker before QEMU runs guest
 * code, also when the start needs nothing of the broker yet but may hot-plug later: an
 * exec-plan from the wrapper (run as libvirt's QEMU account, against the real broker), whose
 * answer never stops the start. The broker's `status` counts the processes it holds a domain
 * for (`bound`, src/broker/peer.ts).
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO, tempDir } from '../harness';
import { renderWrapper } from '../../src/install/wrapper-script';
import { lookupUser } from '../../src/sys/users';
import { ask, startTestBroker, type TestBroker } from '../broker/support';

const WRAPPER = join(REPO, 'dist/shims/vebpf-wrapper');
const dir = tempDir('virt-ebpf-bind-');
chmodSync(dir.path, 0o755);
const stateDir = join(dir.path, 'domains');
mkdirSync(stateDir, { mode: 0o755 });
const qemu = lookupUser('libvirt-qemu');
const uuid = '0b7e2f1a-1111-4222-8333-444455556666';
/** A domain start as libvirt writes it, with no RSS device: -uuid, no rss anywhere. */
const args = ['-name', 'guest=bindvm,debug-threads=on', '-uuid', uuid, '-nodefaults', '-device', '{"driver":"virtio-net-pci","id":"net0"}'];
/** The wrapper as `virt-ebpf install` writes it; the "emulator" is /bin/true (it exits 0). */
const wrapperFile = join(dir.path, 'qemu-system-x86_64');
writeFileSync(wrapperFile, renderWrapper({ real: '/bin/true', shim: WRAPPER, identity: 'test' }), { mode: 0o755 });

let broker: TestBroker;
after(async () => {
  await broker?.close();
  dir.remove();
});

/** The hook's record of the domain (current: by the hook), with its hot-plug setting. */
function record(hotplug: boolean, policy = 'strict'): void {
  writeFileSync(join(stateDir, `${uuid}.json`), JSON.stringify({ name: 'bindvm', uuid, policy, hotplug }) + '\n', { mode: 0o644 });
}

/** Run the wrapper as libvirt's QEMU account (or `as`); its exit status and what it said. */
function start(socket: string, as: { uid: number; gid: number } = qemu): Promise<{ status: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(wrapperFile, args, { uid: as.uid, gid: as.gid, env: { PATH: '/usr/bin:/bin', VIRT_EBPF_BROKER_SOCKET: socket, VIRT_EBPF_DOMAIN_STATE_DIR: stateDir }, stdio: ['ignore', 'ignore', 'pipe'], timeout: 20_000 });
    let stderr = '';
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', reject);
    p.on('close', (status) => resolve({ status, stderr }));
  });
}

const bound = async (socket: string) => (await ask(socket, { v: 1, id: 9, op: 'status' })).bound as number;

test('a start with no RSS device and hot-plug on asks the broker once, which binds the process; hot-plug off asks nothing; the start runs either way', { timeout: 60_000 }, async () => {
  broker = await startTestBroker({ pool: { size: 0 } }, { cacheDir: join(dir.path, 'cache'), hookEnv: { stateDir } });
  record(false);
  const off = await start(broker.socket);
  assert.deepEqual(off, { status: 0, stderr: '' });
  assert.equal(await bound(broker.socket), 0, 'hot-plug off: the broker was not asked');

  record(true);
  const on = await start(broker.socket);
  assert.deepEqual(on, { status: 0, stderr: '' });
  assert.equal(await bound(broker.socket), 1, 'hot-plug on: the wrapper asked, and the broker bound its process');
});

test('the binding call never stops a start: broker down, or refusing the account, strict, hot-plug on, no RSS device: QEMU runs, nothing said', { timeout: 30_000 }, async () => {
  record(true, 'strict');
  assert.deepEqual(await start(join(dir.path, 'no-broker.sock')), { status: 0, stderr: '' });
  const before = await bound(broker.socket);
  // nobody is not in the broker's allowlist: it answers with a refusal.
  assert.deepEqual(await start(broker.socket, { uid: 65534, gid: 65534 }), { status: 0, stderr: '' });
  assert.equal(await bound(broker.socket), before, 'a refused account is bound to nothing');
});
