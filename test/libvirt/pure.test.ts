/**
 * The parts of src/libvirt that need no libvirt: which remedy a libvirt error gets, the diff a
 * refused define reports, what define reads from a file before transforming it, argument
 * parsing, and the small formatters.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isVirtEbpfError } from '../../src/errors';
import { defaultUri, formatLibVersion, guestOf, libvirtError, lineDiff, parseDomainCommand, VIR_ERR } from '../../src/libvirt';
import { domcapsEmulator } from '../../src/libvirt/connection';

const URI = 'qemu:///system';

test('a failed connect says libvirt\'s reason and asks whether libvirtd runs', () => {
  const e = libvirtError({ kind: 'connect', uri: URI }, { code: VIR_ERR.SYSTEM_ERROR, domain: 7, message: "Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory" });
  assert.equal(e.code, 'LIBVIRT_ERROR');
  assert.equal(e.message, "cannot connect to libvirt at qemu:///system: Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory");
  assert.match(e.remedy, /^is libvirtd running\? \(virsh -c qemu:\/\/\/system list\)/);
  assert.deepEqual(e.fields, { virCode: 38, virDomain: 7, virMessage: "Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory", uri: URI });
});

test('VIR_ERR_NO_DOMAIN names the domain and the virsh command that lists them', () => {
  const e = libvirtError({ kind: 'lookup', uri: URI, domain: 'web1' }, { code: 42, domain: 10, message: "Domain not found: no domain with matching name 'web1'" });
  assert.equal(e.remedy, 'no domain named web1 (virsh -c qemu:///system list --all)');
  assert.equal(e.fields.domain, 'web1');
});

test('permission errors point at root/polkit, whatever the operation', () => {
  for (const code of [VIR_ERR.ACCESS_DENIED, VIR_ERR.AUTH_FAILED, VIR_ERR.OPERATION_DENIED, VIR_ERR.AUTH_UNAVAILABLE]) {
    for (const op of [{ kind: 'connect' as const, uri: URI }, { kind: 'define' as const, uri: URI, domain: 'x' }]) {
      assert.match(libvirtError(op, { code, domain: 0, message: 'denied' }).remedy, /^run as root/, `code ${code} ${op.kind}`);
    }
  }
});

test('a refused define says the previous definition stays, and how to find the XML problem', () => {
  const xml = libvirtError({ kind: 'define', uri: URI, domain: 'web1' }, { code: VIR_ERR.XML_ERROR, domain: 20, message: 'XML error: bad' });
  assert.match(xml.remedy, /^libvirt kept the previous definition of web1; fix the XML/);
  assert.equal(xml.message, 'libvirt refused the new definition of web1: XML error: bad');
  const exists = libvirtError({ kind: 'define', uri: URI, domain: 'web1' }, { code: VIR_ERR.DOM_EXIST, domain: 10, message: 'exists' });
  assert.match(exists.remedy, /another domain already uses this name or UUID/);
  const anon = libvirtError({ kind: 'define', uri: URI }, { code: 9, domain: 10, message: 'operation failed' });
  assert.match(anon.remedy, /^any previous definition is unchanged; /);
});

test('an empty libvirt message still gives a readable error', () => {
  const e = libvirtError({ kind: 'domain', uri: URI, domain: 'a', call: 'virDomainIsActive' }, { code: 1, domain: 0, message: '  ' });
  assert.equal(e.message, 'virDomainIsActive on domain a failed: unknown libvirt error');
  assert.match(e.remedy, /journalctl -u libvirtd/);
});

test('lineDiff shows only the changed lines with context, in unified form', () => {
  const before = ['<domain>', '  <name>a</name>', '  <devices>', '    <emulator>/usr/bin/qemu</emulator>', '    <x/>', '  </devices>', '</domain>'].join('\n');
  const after = before.replace('/usr/bin/qemu', '/w/qemu');
  assert.equal(
    lineDiff(before, after, { before: 'old', after: 'new' }, 1),
    ['--- old', '+++ new', '@@ -3,3 +3,3 @@', '   <devices>', '-    <emulator>/usr/bin/qemu</emulator>', '+    <emulator>/w/qemu</emulator>', '     <x/>'].join('\n'),
  );
  assert.equal(lineDiff(before, before), '');
  const inserted = lineDiff('a\nb\nc', 'a\nb\nX\nc', undefined, 0);
  assert.equal(inserted, ['--- before', '+++ after', '@@ -3,0 +3,1 @@', '+X'].join('\n'));
  // Two distant changes make two hunks.
  const long = Array.from({ length: 20 }, (_, i) => `l${i}`);
  const changed = long.map((l, i) => (i === 2 || i === 17 ? `${l}!` : l));
  assert.equal((lineDiff(long.join('\n'), changed.join('\n'), undefined, 2).match(/^@@/gm) ?? []).length, 2);
});

test('guestOf reads what define needs before the transform, and gives up on malformed XML', () => {
  assert.deepEqual(guestOf("<domain type='kvm'><name> vm1 </name><os><type arch='aarch64' machine='virt'>hvm</type></os><devices><emulator>/q</emulator></devices></domain>"), {
    virtType: 'kvm',
    arch: 'aarch64',
    machine: 'virt',
    name: 'vm1',
    hasEmulator: true,
  });
  assert.deepEqual(guestOf("<domain type='qemu'><name>b</name><devices/></domain>"), { virtType: 'qemu', name: 'b', hasEmulator: false });
  assert.equal(guestOf('<domain><name>b</name>'), undefined);
  assert.equal(guestOf('<network/>'), undefined);
});

test('domain commands parse their options and refuse what does not apply', () => {
  assert.deepEqual(parseDomainCommand('enable', ['vm1', '--queues', '4', '--policy=fallback', '--all-virtio', '--wrapper-dir', '/w', '--connect', 'test:///default']), {
    target: 'vm1',
    uri: 'test:///default',
    json: false,
    opts: { allVirtio: true, queues: 4, policy: 'fallback', wrapperDir: '/w' },
  });
  assert.deepEqual(parseDomainCommand('define', ['f.xml', '--default-emulator', '/usr/bin/q', '--json']), { target: 'f.xml', json: true, opts: { defaultEmulator: '/usr/bin/q' } });
  const usage = (cmd: 'enable' | 'disable' | 'define', argv: string[], re: RegExp) =>
    assert.throws(() => parseDomainCommand(cmd, argv), (e) => isVirtEbpfError(e, 'USAGE') && re.test(e.message));
  usage('disable', ['vm1', '--queues', '4'], /unknown option --queues/);
  usage('enable', ['vm1', '--default-emulator', '/q'], /unknown option/);
  usage('enable', [], /exactly one DOMAIN/);
  usage('define', ['a.xml', 'b.xml'], /exactly one FILE/);
  usage('enable', ['vm1', '--queues', 'four'], /whole number/);
  usage('enable', ['vm1', '--policy', 'lenient'], /strict, fallback/);
  usage('enable', ['vm1', '--wrapper-dir', 'rel'], /absolute path/);
});

test('default URI: LIBVIRT_DEFAULT_URI like virsh, else qemu:///system; version and domcaps formatting', () => {
  assert.equal(defaultUri({}), 'qemu:///system');
  assert.equal(defaultUri({ LIBVIRT_DEFAULT_URI: '' }), 'qemu:///system');
  assert.equal(defaultUri({ LIBVIRT_DEFAULT_URI: 'qemu:///session' }), 'qemu:///session');
  assert.equal(formatLibVersion(11003000), '11.3.0');
  assert.equal(formatLibVersion(9010002), '9.10.2');
  assert.equal(domcapsEmulator('<domainCapabilities>\n  <path>/usr/bin/qemu-system-x86_64</path>\n  <domain>qemu</domain>'), '/usr/bin/qemu-system-x86_64');
  assert.equal(domcapsEmulator('<domainCapabilities><path>/a&amp;b</path>'), '/a&b');
  assert.equal(domcapsEmulator('<domainCapabilities><domain>qemu</domain>'), undefined);
});
