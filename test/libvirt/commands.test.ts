/**
 * enable / disable / define against the real libvirtd, checked with virsh and libvirt's own
 * config files: enable points the persistent definition at the wrapper and records itself,
 * enable again changes nothing (no define at all), disable gives back libvirt's exact original
 * dump, a running domain keeps its live XML, and a refused define keeps the old definition and
 * reports the diff. Domains are vebpf-test-<pid>-…, removed in finally.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { isVirtEbpfError } from '../../src/errors';
import { defineFile, disableDomain, enableDomain, enabledDomains, enabledDomainsOn, openConnection, runDomainCommand, type Connection } from '../../src/libvirt';
import { isEnabled, readConfig, XML_NAMESPACE } from '../../src/xml';
import { needRoot, QEMU, tempDir, watchFds } from '../harness';
import { CONN, configFile, defineWithVirsh, domainXml, dumpInactive, libvirtdReachable, PREFIX, removeDomain, removeOurDomains, virsh, wrapperDir } from './fixture';

let scratch: { path: string; remove(): void };
let checkFds: () => void;
let WRAPPERS: string;
let WRAPPER: string;
let conn: Connection;

before(() => {
  needRoot('defines domains in the system libvirtd');
  libvirtdReachable();
  scratch = tempDir('vebpf-test-libvirt-cmd-');
  WRAPPERS = wrapperDir();
  WRAPPER = join(WRAPPERS, 'qemu-system-x86_64');
  checkFds = watchFds();
  conn = openConnection(CONN);
});

after(() => {
  conn?.close();
  removeOurDomains();
  scratch?.remove();
  checkFds?.();
});

test('enable points the definition at the wrapper with our metadata; again changes nothing; disable restores the exact dump', { timeout: 180_000 }, () => {
  const name = `${PREFIX}cycle`;
  try {
    defineWithVirsh(domainXml(name), scratch.path);
    const original = dumpInactive(name);

    const on = enableDomain(conn, name, { wrapperDir: WRAPPERS });
    assert.equal(on.action, 'enabled');
    assert.equal(on.defined, true);
    assert.equal(on.running, false);
    assert.equal(on.before, original);
    assert.equal(on.nics.length, 1, 'the rss=on virtio NIC gets eBPF RSS');
    assert.deepEqual(on.changes.find((c) => c.kind === 'emulator'), { kind: 'emulator', from: QEMU, to: WRAPPER });
    assert.equal(on.lines[0], `${name}: eBPF RSS enabled`);
    assert.ok(on.lines.includes(`  changed: <emulator> ${QEMU} -> ${WRAPPER}`), on.lines.join('\n'));

    const enabled = dumpInactive(name);
    assert.ok(enabled.includes(`<emulator>${WRAPPER}</emulator>`), enabled);
    assert.ok(enabled.includes(XML_NAMESPACE), 'our metadata namespace is in the stored definition');
    assert.equal(isEnabled(enabled), true);
    assert.deepEqual(readConfig(enabled)?.emulator, { original: QEMU, wrapper: WRAPPER, elementCreated: false });
    assert.equal(on.after, enabled, 'the outcome holds what libvirt stored');
    assert.deepEqual(enabledDomainsOn(conn).filter((n) => n.startsWith(PREFIX)), [name]);

    const file = configFile(name);
    const again = enableDomain(conn, name, { wrapperDir: WRAPPERS });
    assert.equal(again.action, 'unchanged');
    assert.equal(again.defined, false);
    assert.deepEqual(again.changes, []);
    assert.equal(again.lines[0], `${name}: eBPF RSS is already enabled; definition unchanged`);
    assert.deepEqual(configFile(name), file, 'no define happened: libvirt did not rewrite its config file');

    const off = disableDomain(conn, name);
    assert.equal(off.action, 'disabled');
    assert.equal(off.lines[0], `${name}: eBPF RSS disabled`);
    assert.equal(dumpInactive(name), original, 'disable gives back exactly what libvirt printed before enable');
    assert.equal(off.after, original);
    assert.deepEqual(enabledDomainsOn(conn).filter((n) => n.startsWith(PREFIX)), []);

    const offAgain = disableDomain(conn, name);
    assert.equal(offAgain.action, 'unchanged');
    assert.equal(offAgain.defined, false);
    assert.equal(offAgain.lines[0], `${name}: eBPF RSS is not enabled; definition unchanged`);
  } finally {
    removeDomain(name);
  }
});

test('enable and disable find the domain by UUID too, and report its name', { timeout: 180_000 }, () => {
  const name = `${PREFIX}byuuid`;
  try {
    defineWithVirsh(domainXml(name), scratch.path);
    const uuid = virsh('domuuid', name).trim();
    const on = enableDomain(conn, uuid, { wrapperDir: WRAPPERS, policy: 'fallback' });
    assert.equal(on.domain, name);
    assert.equal(on.uuid, uuid);
    assert.equal(readConfig(dumpInactive(name))?.policy, 'fallback');
    assert.equal(disableDomain(conn, uuid).action, 'disabled');
  } finally {
    removeDomain(name);
  }
});

test('an unknown domain is LIBVIRT_ERROR with the "no domain" remedy', () => {
  const name = `${PREFIX}nosuch`;
  for (const run of [() => enableDomain(conn, name, { wrapperDir: WRAPPERS }), () => disableDomain(conn, name)]) {
    assert.throws(run, (e) => isVirtEbpfError(e, 'LIBVIRT_ERROR') && e.fields.virCode === 42 && e.remedy === `no domain named ${name} (virsh -c ${CONN} list --all)`);
  }
});

test('a running domain: the new definition applies at the next start, the live XML is untouched', { timeout: 180_000 }, () => {
  const name = `${PREFIX}running`;
  try {
    defineWithVirsh(domainXml(name), scratch.path);
    virsh('start', name);
    const live = virsh('dumpxml', name);
    const on = enableDomain(conn, name, { wrapperDir: WRAPPERS });
    assert.equal(on.running, true);
    assert.equal(on.action, 'enabled');
    assert.ok(on.lines.includes(`${name} is running: the new definition applies at its next start (the running QEMU is untouched)`), on.lines.join('\n'));
    assert.equal(virsh('dumpxml', name), live, 'the live XML is what libvirt started with');
    assert.ok(dumpInactive(name).includes(`<emulator>${WRAPPER}</emulator>`));
    // uninstall must see it while it runs, and still after disable until it stops.
    assert.ok(enabledDomainsOn(conn).includes(name));
    assert.ok(enabledDomains(CONN).includes(name), 'the same over a connection of its own (what uninstall calls)');
    const off = disableDomain(conn, name);
    assert.equal(off.running, true);
    assert.ok(off.lines.some((l) => l.includes('applies at its next start')));
  } finally {
    removeDomain(name);
  }
});

test('a refused define (no wrapper there) keeps the old definition and reports the diff and the fix', { timeout: 180_000 }, () => {
  const name = `${PREFIX}nowrapper`;
  const missing = join(scratch.path, 'no-wrappers-here');
  try {
    defineWithVirsh(domainXml(name), scratch.path);
    const original = dumpInactive(name);
    const file = configFile(name);
    assert.throws(
      () => enableDomain(conn, name, { wrapperDir: missing }),
      (e) => {
        assert.ok(isVirtEbpfError(e, 'LIBVIRT_ERROR'), String(e));
        assert.match(e.message, new RegExp(`^defining ${name} failed: .*${missing}/qemu-system-x86_64`));
        assert.match(e.remedy, new RegExp(`^libvirt kept the previous definition of ${name}; the wrapper ${missing}/qemu-system-x86_64 is missing or not runnable: run \`virt-ebpf install\``));
        assert.ok(e.detail?.includes(`-    <emulator>${QEMU}</emulator>`), e.detail);
        assert.ok(e.detail?.includes(`+    <emulator>${missing}/qemu-system-x86_64</emulator>`), e.detail);
        assert.ok(e.detail?.includes(`+    <virt-ebpf:config`), 'the metadata we asked for is in the diff');
        return true;
      },
    );
    assert.equal(dumpInactive(name), original);
    assert.deepEqual(configFile(name), file);
  } finally {
    removeDomain(name);
  }
});

test('define FILE enables and defines in one step; again with the same UUID it replaces the definition', { timeout: 180_000 }, () => {
  const name = `${PREFIX}define`;
  const path = join(scratch.path, `${name}.xml`);
  const uuid = randomUUID();
  try {
    writeFileSync(path, domainXml(name, { uuid }));
    const first = defineFile(conn, path, { wrapperDir: WRAPPERS });
    assert.equal(first.action, 'defined');
    assert.equal(first.uuid, uuid);
    assert.equal(first.lines[0], `${name}: defined with eBPF RSS enabled`);
    const stored = dumpInactive(name);
    assert.ok(stored.includes(`<emulator>${WRAPPER}</emulator>`));
    assert.equal(readConfig(stored)?.emulator.original, QEMU);
    assert.equal(first.after, stored);

    const second = defineFile(conn, path, { wrapperDir: WRAPPERS, policy: 'fallback' });
    assert.equal(second.lines[0], `${name}: definition replaced, with eBPF RSS enabled`);
    assert.equal(readConfig(dumpInactive(name))?.policy, 'fallback');

    // And the result is an ordinary enabled domain: disable takes it back to the plain QEMU.
    disableDomain(conn, name);
    const plain = dumpInactive(name);
    assert.equal(readConfig(plain), null);
    assert.ok(plain.includes(`<emulator>${QEMU}</emulator>`));
  } finally {
    removeDomain(name);
  }
});

test("define FILE without <emulator> wraps the emulator libvirt would pick", { timeout: 180_000 }, () => {
  const name = `${PREFIX}noemu`;
  const path = join(scratch.path, `${name}.xml`);
  try {
    writeFileSync(path, domainXml(name, { emulator: null }));
    const r = defineFile(conn, path, { wrapperDir: WRAPPERS });
    assert.deepEqual(r.changes.find((c) => c.kind === 'emulator'), { kind: 'emulator', to: WRAPPER });
    const cfg = readConfig(dumpInactive(name));
    assert.deepEqual(cfg?.emulator, { original: QEMU, wrapper: WRAPPER, elementCreated: true });
  } finally {
    removeDomain(name);
  }
});

test('define FILE that libvirt refuses defines nothing and says so', { timeout: 120_000 }, () => {
  const name = `${PREFIX}badfile`;
  const path = join(scratch.path, `${name}.xml`);
  writeFileSync(path, domainXml(name).replace("<memory unit='MiB'>64</memory>", "<memory unit='MiB'>plenty</memory>"));
  try {
    assert.throws(
      () => defineFile(conn, path, { wrapperDir: WRAPPERS }),
      (e) => isVirtEbpfError(e, 'LIBVIRT_ERROR') && e.remedy.startsWith(`${name} was not defined; `) && e.detail !== undefined && e.detail.includes(`--- ${path}`),
    );
    assert.notEqual(virsh('list', '--all', '--name').split('\n').map((s) => s.trim()).includes(name), true);
  } finally {
    removeDomain(name);
  }
  assert.throws(() => defineFile(conn, join(scratch.path, 'absent.xml')), (e) => isVirtEbpfError(e, 'USAGE') && /ENOENT/.test(e.message));
});

test('the CLI layer: enable --json, then disable, on a URI given with --connect', { timeout: 180_000 }, () => {
  const name = `${PREFIX}cli`;
  try {
    defineWithVirsh(domainXml(name), scratch.path);
    const on = runDomainCommand('enable', [name, '--wrapper-dir', WRAPPERS, '--json', '--connect', CONN]);
    assert.equal(on.code, 0);
    const j = JSON.parse(on.stdout) as { domain: string; action: string; changes: unknown[]; before?: string };
    assert.equal(j.domain, name);
    assert.equal(j.action, 'enabled');
    assert.equal(j.before, undefined, 'the XML texts stay out of the JSON');
    const off = runDomainCommand('disable', [name]);
    assert.match(off.stdout, new RegExp(`^${name}: eBPF RSS disabled\n`));
    assert.match(runDomainCommand('enable', ['--help']).stdout, /^usage: virt-ebpf enable DOMAIN/);
  } finally {
    removeDomain(name);
  }
});
