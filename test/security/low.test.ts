/**
 * The review's low findings that are not the broker's or the hot-plug shim's (those have their
 * own suites; the C parsers are fuzzed in test/fuzz):
 * - after a reboot with the broker's socket not started, /run/virt-ebpf does not exist: the hook
 *   shim must still leave a fallback domain's policy for the wrapper, which must then start it.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { domainUuid } from '../../src/hook/event';
import { enableDomain, wrapperInDir } from '../../src/xml';
import { renderWrapper } from '../../src/install/wrapper-script';
import { REPO, tempDir } from '../harness';

const dir = tempDir();
after(() => dir.remove());

test('broker down after a reboot (no /run/virt-ebpf yet): a fallback domain\'s prepare leaves its policy, and the wrapper starts it without eBPF', () => {
  const stateDir = join(dir.path, 'run', 'virt-ebpf', 'domains');
  const env = { PATH: '/usr/bin:/bin', VIRT_EBPF_BROKER_SOCKET: join(dir.path, 'no-broker.sock'), VIRT_EBPF_DOMAIN_STATE_DIR: stateDir };
  const hookFile = join(dir.path, 'hook');
  writeFileSync(hookFile, `#!${join(REPO, 'dist/shims/vebpf-hook')}\nnode=${process.execPath}\nhook=${join(REPO, 'dist/src/hook/main.js')}\n`, { mode: 0o755 });
  const plain = readFileSync(join(REPO, 'test/fixtures/xml/one-rss-nic.in.xml'), 'utf8');
  const uuid = domainUuid(plain)!;
  const xml = enableDomain(plain, { wrapperFor: wrapperInDir('/usr/libexec/virt-ebpf'), policy: 'fallback' }).xml;
  const prepare = spawnSync(hookFile, ['vm', 'prepare', 'begin', '-'], { env, input: xml, encoding: 'utf8', timeout: 10_000 });
  assert.equal(prepare.status, 0, prepare.stderr);
  const state = join(stateDir, `${uuid}.json`);
  assert.ok(existsSync(state), 'the hook left no state: the wrapper will not know the domain is fallback');
  assert.equal(JSON.parse(readFileSync(state, 'utf8')).policy, 'fallback');

  const fakeQemu = join(dir.path, 'qemu');
  writeFileSync(fakeQemu, '#!/bin/sh\nexit 3\n');
  chmodSync(fakeQemu, 0o755);
  const wrapper = join(dir.path, 'qemu-system-x86_64');
  writeFileSync(wrapper, renderWrapper({ real: fakeQemu, shim: join(REPO, 'dist/shims/vebpf-wrapper'), identity: 'test' }), { mode: 0o755 });
  const dev = JSON.stringify({ driver: 'virtio-net-pci', rss: true, id: 'net0' });
  const start = spawnSync(wrapper, ['-name', 'guest=vm', '-uuid', uuid, '-device', dev], { env, encoding: 'utf8', timeout: 10_000 });
  assert.equal(start.status, 3, `the wrapper refused the fallback domain: ${start.stderr}`);
});
