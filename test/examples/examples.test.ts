/**
 * The examples in examples/ are run as the README tells a user to run them, so they cannot rot:
 * the domain XML is enabled (valid for libvirt's schema, and disable gives it back byte for
 * byte), defined and started under libvirt with the installed broker; the NIC XML is hot-plugged
 * into it and detached again; `examples/exec.sh` starts QEMU without libvirt.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { QmpClient } from '../../src/qmp';
import { needRoot, REPO, tempDir } from '../harness';
import { readManifest } from '../../src/install/manifest';
import { DEFAULT_PATHS } from '../../src/install/plan';
import { BrokerChild, installForReal } from '../coldstart/fixture';
import { bpfFds, cli, qemuPid, removeDomain, virsh, waitFor } from '../coldstart/libvirt';

const EX = join(REPO, 'examples');
const NAME = `vebpf-example-${process.pid}`;
const broker = new BrokerChild();
let scratch: { path: string; remove(): void };

before(async () => {
  needRoot('installs virt-ebpf, starts a domain, creates a tap');
  scratch = tempDir('vebpf-examples-');
  installForReal();
  await broker.start();
});

after(async () => {
  removeDomain(NAME);
  await broker.stop();
  if (readManifest(DEFAULT_PATHS.manifest)) cli('uninstall', '--force');
  scratch?.remove();
});

function kinds(pid: number): string[] {
  return bpfFds(pid).map((f) => f.kind);
}

test('examples/rss-domain.xml: enable gives XML libvirt\'s schema accepts; disable gives the example back byte for byte', () => {
  const input = readFileSync(join(EX, 'rss-domain.xml'), 'utf8');
  const enabled = cli('xml', 'enable', join(EX, 'rss-domain.xml'));
  assert.equal(enabled.status, 0, enabled.stderr);
  const file = join(scratch.path, 'enabled.xml');
  writeFileSync(file, enabled.stdout);
  const v = spawnSync('virt-xml-validate', [file, 'domain'], { encoding: 'utf8' });
  assert.equal(v.status, 0, `${v.stdout}${v.stderr}`);
  const back = spawnSync(process.execPath, [join(REPO, 'dist/src/cli/main.js'), 'xml', 'disable', '-'], { input: enabled.stdout, encoding: 'utf8' });
  assert.equal(back.status, 0, back.stderr);
  assert.equal(back.stdout, input);
});

test('examples/rss-domain.xml under libvirt (virt-ebpf define, virsh start), then examples/rss-nic.xml hot-plugged (and its detach requested)', { timeout: 300_000 }, async () => {
  const file = join(scratch.path, 'domain.xml');
  writeFileSync(file, readFileSync(join(EX, 'rss-domain.xml'), 'utf8').replace('<name>vebpf-example</name>', `<name>${NAME}</name>`));
  const d = cli('define', file);
  assert.equal(d.status, 0, d.stderr);
  virsh('start', NAME);
  const pid = qemuPid(NAME);
  assert.deepEqual(kinds(pid), ['prog', 'map', 'map', 'map']);
  const nic = join(EX, 'rss-nic.xml');
  virsh('attach-device', NAME, nic, '--live');
  assert.equal(kinds(pid).filter((k) => k === 'prog').length, 2, 'the hot-plugged NIC got its own program');
  // The example domain boots no guest to acknowledge an unplug: libvirt takes the detach request
  // (the NIC leaves once a guest lets it go; test/hotplug checks that with a real guest).
  virsh('detach-device', NAME, nic, '--live');
  virsh('destroy', NAME);
});

test('examples/exec.sh: QEMU without libvirt, as libvirt-qemu, with 1 program + 3 maps', { timeout: 120_000 }, async () => {
  const tap = `vebpfex${process.pid % 100000}`;
  const sock = join(scratch.path, 'qmp.sock');
  spawnSync('chmod', ['0777', scratch.path]);
  const child = spawn('bash', [join(EX, 'exec.sh'), '-S', '-qmp', `unix:${sock},server=on,wait=off`], { env: { ...process.env, TAP: tap, QUEUES: '2' }, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (c) => (err += c));
  try {
    await waitFor(`QEMU's QMP socket (stderr: ${err})`, 60_000, () => existsSync(sock) || child.exitCode !== null);
    assert.equal(child.exitCode, null, `exec.sh ended: ${err}`);
    assert.deepEqual(kinds(child.pid!), ['prog', 'map', 'map', 'map'], 'QEMU is the exec\'d process: same pid');
    const c = await QmpClient.connect(sock, { timeoutMs: 10_000 });
    await c.execute('quit').catch(() => undefined);
    c.close();
    await waitFor('QEMU to exit', 10_000, () => child.exitCode !== null);
  } finally {
    child.kill('SIGKILL');
    spawnSync('ip', ['link', 'del', tap]);
  }
});
