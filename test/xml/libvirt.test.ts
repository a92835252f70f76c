/**
 * The real libvirt (11.3 here) round trip: what enable writes survives `virsh define` +
 * `virsh dumpxml` byte for byte, and disable of libvirt's dump gives back exactly what libvirt
 * printed before enable. libvirt probes the emulator at define time (it must exist and run), so
 * the "wrapper" here is a symlink to the real QEMU in a temporary directory the qemu user can
 * read. Domains are named vebpf-test-<pid>-<case> and always undefined afterwards.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { needRoot, QEMU, tempDir } from '../harness';
import { disableDomain, enableDomain, isEnabled, readConfig, wrapperInDir } from '../../src/xml';
import { GOLDEN, read } from './cases';
import { libvirtdReachable } from '../libvirt/fixture';

const CONN = 'qemu:///system';
const PREFIX = `vebpf-test-${process.pid}-`;
let dir: { path: string; remove(): void };
let wrapperFor: (p: string) => string;

function virsh(...args: string[]): string {
  // Not -q for dumpxml: the fixtures are what a user gets from plain `virsh dumpxml`, which
  // ends with an extra blank line that -q leaves out.
  const quiet = args[0] === 'dumpxml' ? [] : ['-q'];
  const r = spawnSync('virsh', [...quiet, '-c', CONN, ...args], { encoding: 'utf8', timeout: 120_000 });
  if (r.error) assert.fail(`cannot run virsh (${r.error.message}); install libvirt-clients (scripts/setup.sh)`);
  if (r.status !== 0) assert.fail(`virsh ${args.join(' ')} failed: ${r.stderr.trim()}`);
  return r.stdout;
}

function define(xml: string): void {
  const file = join(dir.path, 'domain.xml');
  writeFileSync(file, xml);
  virsh('define', file);
}

const dumpxml = (name: string) => virsh('dumpxml', '--inactive', name);

function renamed(xml: string, name: string): string {
  return xml.replace(/<name>[^<]*<\/name>/, `<name>${name}</name>`).replace(/\n *<uuid>[^<]*<\/uuid>/, '');
}

const anonymous = (xml: string) => xml.replace(/<name>[^<]*<\/name>/, '<name/>').replace(/<uuid>[^<]*<\/uuid>/, '<uuid/>');

before(() => {
  needRoot('defines domains in the system libvirtd');
  libvirtdReachable();
  dir = tempDir('vebpf-test-wrap-');
  chmodSync(dir.path, 0o755); // libvirt probes the emulator as its qemu user
  symlinkSync(QEMU, join(dir.path, 'qemu-system-x86_64'));
  wrapperFor = wrapperInDir(dir.path);
});

after(() => {
  const r = spawnSync('virsh', ['-q', '-c', CONN, 'list', '--all', '--name'], { encoding: 'utf8', timeout: 30_000 });
  for (const name of (r.stdout ?? '').split('\n').map((s) => s.trim())) {
    if (name.startsWith(PREFIX)) spawnSync('virsh', ['-q', '-c', CONN, 'undefine', name], { timeout: 30_000 });
  }
  if (dir) {
    // libvirt caches the probe per emulator path; this path never comes back.
    const key = createHash('sha256').update(join(dir.path, 'qemu-system-x86_64')).digest('hex');
    rmSync(`/var/cache/libvirt/qemu/capabilities/${key}.xml`, { force: true });
    dir.remove();
  }
});

// already-enabled's input points at the installed wrapper path, which libvirt cannot probe here.
for (const c of GOLDEN.filter((g) => g.libvirt && g.name !== 'already-enabled')) {
  test(`libvirt keeps ${c.name} as enable wrote it, and disable gives back libvirt's own dump`, { timeout: 180_000 }, () => {
    const name = PREFIX + c.name;
    define(renamed(read(`${c.name}.in.xml`), name));
    const original = dumpxml(name);
    assert.equal(anonymous(original), anonymous(read(`${c.name}.in.xml`)), 'the fixture is what this libvirt prints');

    const enabled = enableDomain(original, { wrapperFor, ...c.opts }).xml;
    define(enabled);
    const dumped = dumpxml(name);
    assert.equal(dumped, enabled, 'libvirt reprints the enabled domain unchanged (metadata included)');
    assert.equal(isEnabled(dumped), true);
    assert.equal(readConfig(dumped)!.emulator.wrapper, join(dir.path, 'qemu-system-x86_64'));

    const disabled = disableDomain(dumped);
    assert.equal(disabled.xml, original);
    define(disabled.xml);
    assert.equal(dumpxml(name), original);
    virsh('undefine', name);
  });
}

for (const c of GOLDEN.filter((g) => !g.libvirt)) {
  test(`libvirt accepts hand-written ${c.name} once enabled and keeps our metadata; disable undoes it`, { timeout: 180_000 }, () => {
    const name = PREFIX + c.name;
    const input = renamed(read(`${c.name}.in.xml`), name);
    const enabled = enableDomain(input, { wrapperFor, ...c.opts });
    define(enabled.xml);
    const dumped = dumpxml(name);
    assert.equal(isEnabled(dumped), true);
    assert.deepEqual(readConfig(dumped), readConfig(enabled.xml), 'libvirt reformats but keeps our record');
    assert.ok(dumped.includes(`<emulator>${join(dir.path, 'qemu-system-x86_64')}</emulator>`));
    assert.deepEqual(
      enabled.nics.map((n) => n.index),
      enableDomain(dumped, { wrapperFor, ...c.opts }).nics.map((n) => n.index),
    );

    const back = disableDomain(dumped);
    assert.deepEqual(back.warnings, []);
    define(back.xml);
    const restored = dumpxml(name);
    assert.equal(readConfig(restored), null);
    assert.ok(restored.includes('<emulator>/usr/bin/qemu-system-x86_64</emulator>'), 'original (or libvirt default) emulator back');
    // Same domain as defining the hand-written input directly (libvirt makes up the MACs it lacks).
    virsh('undefine', name);
    define(input);
    const noMacs = (xml: string) => anonymous(xml).replace(/<mac address='[^']*'\/>/g, '<mac/>');
    assert.equal(noMacs(dumpxml(name)), noMacs(restored));
    virsh('undefine', name);
  });
}
