/**
 * The libvirt bindings against the real libvirtd (qemu:///system), with virsh as the witness,
 * and against libvirt's built-in test driver (test:///default) where the answer must not depend
 * on what else runs on the host (other suites define and start domains concurrently).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { isVirtEbpfError } from '../../src/errors';
import { formatLibVersion, openConnection, type Connection } from '../../src/libvirt';
import { needRoot, REPO, tempDir, watchFds } from '../harness';
import { CONN, configFile, defineWithVirsh, domainXml, dumpInactive, libvirtdReachable, PREFIX, removeDomain, removeOurDomains, virsh } from './fixture';

let scratch: { path: string; remove(): void };
let checkFds: () => void;

before(() => {
  needRoot('talks to the system libvirtd and defines domains');
  libvirtdReachable();
  scratch = tempDir('vebpf-test-libvirt-');
  checkFds = watchFds();
});

after(() => {
  removeOurDomains();
  scratch?.remove();
  // Every connection of this suite was closed: libvirt's socket must be gone with it.
  checkFds?.();
});

function withConn<T>(fn: (c: Connection) => T, uri = CONN): T {
  const c = openConnection(uri);
  try {
    return fn(c);
  } finally {
    c.close();
  }
}

test("the connection reports the daemon's libvirt version, as virsh does", () => {
  const daemon = /Running against daemon: (\S+)/.exec(virsh('version', '--daemon'))?.[1];
  assert.ok(daemon, 'virsh version --daemon names the daemon version');
  withConn((c) => {
    assert.equal(c.uri, CONN);
    assert.equal(formatLibVersion(c.libVersion()), daemon);
  });
});

test("the default emulator is the one libvirt's domain capabilities name", () => {
  const path = /<path>([^<]+)<\/path>/.exec(virsh('domcapabilities', '--virttype', 'qemu', '--arch', 'x86_64', '--machine', 'q35'))?.[1];
  assert.ok(path);
  withConn((c) => assert.equal(c.defaultEmulator({ virtType: 'qemu', arch: 'x86_64', machine: 'q35' }), path));
});

test('a domain is found by name and by UUID, with the UUID, state and XML virsh shows', { timeout: 120_000 }, () => {
  const name = `${PREFIX}lookup`;
  try {
    defineWithVirsh(domainXml(name), scratch.path);
    const uuid = virsh('domuuid', name).trim();
    withConn((c) => {
      const byName = c.domain(name);
      assert.equal(byName.name, name);
      assert.equal(byName.uuid, uuid);
      assert.equal(byName.isActive(), false);
      assert.equal(byName.isPersistent(), true);
      assert.equal(byName.xml({ inactive: true }), dumpInactive(name));
      const byUuid = c.domain(uuid);
      assert.equal(byUuid.name, name);
      assert.equal(c.domain(uuid.replace(/-/g, '')).name, name, 'libvirt also takes the UUID without dashes');
      byName.free();
      byName.free(); // idempotent
      assert.equal(byName.freed, true);
      assert.throws(() => byName.isActive(), /used after free/);
      assert.equal(byUuid.freed, false);
    });
  } finally {
    removeDomain(name);
  }
});

test('listDomains filters by state: a defined, stopped domain is listed as inactive only', { timeout: 120_000 }, () => {
  const name = `${PREFIX}list`;
  try {
    defineWithVirsh(domainXml(name), scratch.path);
    withConn((c) => {
      const names = (opts?: { active?: boolean }) => {
        const ds = c.listDomains(opts);
        const out = ds.map((d) => d.name);
        for (const d of ds) d.free();
        return out;
      };
      assert.ok(names().includes(name));
      assert.ok(names({ active: false }).includes(name));
      assert.ok(!names({ active: true }).includes(name));
    });
  } finally {
    removeDomain(name);
  }
});

test('LIBVIRT_DEFAULT_URI picks the connection, as in virsh; lists are exact on the test driver', () => {
  const saved = process.env.LIBVIRT_DEFAULT_URI;
  process.env.LIBVIRT_DEFAULT_URI = 'test:///default';
  let c: Connection;
  try {
    c = openConnection();
  } finally {
    if (saved === undefined) delete process.env.LIBVIRT_DEFAULT_URI;
    else process.env.LIBVIRT_DEFAULT_URI = saved;
  }
  try {
    assert.equal(c.uri, 'test:///default');
    // The test driver starts with one running domain named "test".
    const running = c.listDomains({ active: true });
    assert.deepEqual(running.map((d) => d.name), ['test']);
    assert.equal(running[0].isActive(), true);
    const extra = c.defineXML("<domain type='test'><name>vebpf-extra</name><memory>8192</memory><os><type>hvm</type></os></domain>");
    assert.equal(extra.name, 'vebpf-extra');
    assert.deepEqual(c.listDomains({ active: false }).map((d) => d.name), ['vebpf-extra']);
    assert.deepEqual(c.listDomains().map((d) => d.name).sort(), ['test', 'vebpf-extra']);
    // The test driver's domain capabilities name no emulator: said as such, not as a crash.
    assert.throws(() => c.defaultEmulator({ virtType: 'test' }), (e) => isVirtEbpfError(e, 'LIBVIRT_ERROR') && /--default-emulator/.test(e.remedy));
  } finally {
    // close() frees the domains the lists above left open.
    c.close();
  }
  assert.equal(c.closed, true);
  assert.throws(() => c.listDomains(), /used after close/);
});

test('a define libvirt rejects leaves the previous definition exactly as it was', { timeout: 120_000 }, () => {
  const name = `${PREFIX}reject`;
  try {
    defineWithVirsh(domainXml(name), scratch.path);
    const before = dumpInactive(name);
    const file = configFile(name);
    const broken = before.replace(/<memory unit='KiB'>\d+<\/memory>/, "<memory unit='KiB'>plenty</memory>");
    assert.notEqual(broken, before, 'the test breaks the XML it sends');
    withConn((c) => {
      assert.throws(
        () => c.defineXML(broken),
        (e) => isVirtEbpfError(e, 'LIBVIRT_ERROR') && /memory/i.test(String(e.fields.virMessage)) && /previous definition is unchanged/.test(e.remedy),
      );
    });
    assert.equal(dumpInactive(name), before);
    assert.deepEqual(configFile(name), file, "libvirt's config file was not rewritten");
  } finally {
    removeDomain(name);
  }
});

test('an unknown domain is LIBVIRT_ERROR with the "no domain" remedy, and libvirt prints nothing itself', { timeout: 60_000 }, () => {
  const name = `${PREFIX}missing`;
  withConn((c) => {
    assert.throws(
      () => c.domain(name),
      (e) => isVirtEbpfError(e, 'LIBVIRT_ERROR') && e.fields.virCode === 42 && e.remedy === `no domain named ${name} (virsh -c ${CONN} list --all)` && e.message.includes(name),
    );
    // A UUID that is nobody's falls back to a name lookup and fails the same way.
    assert.throws(() => c.domain('00000000-0000-0000-0000-0000000000ff'), (e) => isVirtEbpfError(e, 'LIBVIRT_ERROR') && e.fields.virCode === 42);
  });
  const child = spawnSync(process.execPath, [join(REPO, 'dist/test/libvirt/fixtures/quiet-errors.js'), CONN, name], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(child.status, 0, child.stderr);
  assert.deepEqual(JSON.parse(child.stdout), { code: 'LIBVIRT_ERROR', virCode: 42, message: `cannot find domain ${name}: Domain not found: no domain with matching name '${name}'` });
  assert.equal(child.stderr, '', "libvirt's default error printer is silenced");
});

test('a missing libvirt library is LIBVIRT_MISSING with the package to install', () => {
  assert.throws(
    () => openConnection(CONN, { soname: 'libvirt-vebpf-absent.so.0' }),
    (e) => isVirtEbpfError(e, 'LIBVIRT_MISSING') && /libvirt-vebpf-absent\.so\.0/.test(e.message) && /apt-get install libvirt0/.test(e.remedy),
  );
});

test('a connection that cannot be opened is LIBVIRT_ERROR naming the URI', () => {
  assert.throws(
    () => openConnection('test:///nonexistent-vebpf-file.xml'),
    (e) => isVirtEbpfError(e, 'LIBVIRT_ERROR') && e.message.startsWith('cannot connect to libvirt at test:///nonexistent-vebpf-file.xml: ') && /is libvirtd running/.test(e.remedy),
  );
});
