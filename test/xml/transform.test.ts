/**
 * Golden tests: test/fixtures/xml/<case>.in.xml → <case>.enabled.xml, and back.
 * Set VIRT_EBPF_UPDATE_GOLDEN=1 to rewrite the .enabled.xml files (then review the diff).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { isVirtEbpfError, type ErrorCode } from '../../src/errors';
import { disableDomain, enableDomain, enableInterface, isEnabled, readConfig, rssNics } from '../../src/xml';
import { FIXTURES, GOLDEN, QEMU_PATH, read, UPDATE, WRAPPER, wrapperFor } from './cases';

function expectError(fn: () => unknown, code: ErrorCode, message?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isVirtEbpfError(e), `expected VirtEbpfError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (message) assert.match(e.message, message);
    assert.ok(e.remedy.length > 0);
    assert.ok(!e.message.includes('\n'), 'one-line message');
    return true;
  });
}

for (const c of GOLDEN) {
  test(`golden ${c.name}: enable gives the .enabled.xml, enable again changes nothing, disable gives back the input`, () => {
    const input = read(`${c.name}.in.xml`);
    const r = enableDomain(input, { wrapperFor, ...c.opts });
    if (UPDATE && c.name !== 'already-enabled') writeFileSync(join(FIXTURES, `${c.name}.enabled.xml`), r.xml);
    const golden = read(`${c.name}.enabled.xml`);
    assert.equal(r.xml, golden);
    for (const re of c.warnings ?? []) assert.ok(r.warnings.some((w) => re.test(w)), `no warning ${re} in ${JSON.stringify(r.warnings)}`);
    assert.equal(r.warnings.length, (c.warnings ?? []).length, JSON.stringify(r.warnings));

    const again = enableDomain(golden, { wrapperFor, ...c.opts });
    assert.equal(again.xml, golden, 'enable is idempotent');
    assert.deepEqual(again.changes, []);

    const expectedBack = existsSync(join(FIXTURES, `${c.name}.disabled.xml`)) ? read(`${c.name}.disabled.xml`) : input;
    const back = disableDomain(golden);
    assert.equal(back.xml, expectedBack, 'disable(enable(x)) === x');
    assert.deepEqual(back.warnings, []);
    assert.ok(back.changes.some((ch) => ch.kind === 'metadata' && ch.action === 'removed'));
    assert.deepEqual(disableDomain(back.xml), { xml: back.xml, changes: [], warnings: [] }, 'disable of a plain domain is a no-op');

    assert.equal(isEnabled(golden), true);
    assert.equal(isEnabled(expectedBack), false);
    const cfg = readConfig(golden)!;
    assert.equal(cfg.emulator.original, QEMU_PATH);
    assert.equal(cfg.emulator.wrapper, WRAPPER);
    assert.equal(readConfig(expectedBack), null);
  });
}

test('golden outputs change only what they must: every removed line of the input is an <emulator> or <driver> line', () => {
  for (const c of GOLDEN) {
    if (c.name === 'already-enabled') continue;
    const inLines = new Set(read(`${c.name}.enabled.xml`).split('\n'));
    const lost = read(`${c.name}.in.xml`).split('\n').filter((l) => !inLines.has(l));
    for (const l of lost) assert.match(l, /<emulator>|<driver |<interface type="bridge">/, `${c.name}: unexpected change to: ${l}`);
  }
});

test('rssNics lists the virtio NICs with rss on, with MAC, type and queues', () => {
  assert.deepEqual(rssNics(read('two-rss-nics.in.xml')), [
    { index: 0, mac: '52:54:00:6b:3c:01', type: 'ethernet', queues: 4 },
    { index: 1, mac: '52:54:00:6b:3c:02', type: 'bridge', queues: 2 },
  ]);
  assert.deepEqual(rssNics(read('no-rss-nic.in.xml')), []);
  const r = enableDomain(read('all-virtio-queues.in.xml'), { wrapperFor, allVirtio: true, queues: 4 });
  assert.deepEqual(
    r.nics.map((n) => [n.index, n.type, n.queues]),
    [
      [0, 'ethernet', 4],
      [1, 'bridge', 4],
      [6, 'network', 4],
      [8, 'ethernet', 8],
    ],
  );
  assert.deepEqual(rssNics(r.xml), r.nics);
  const alias = read('one-rss-nic.in.xml').replace("<driver queues='4' rss='on'/>", "<driver queues='4' rss='on'/>\n      <alias name='ua-fast'/>");
  assert.equal(rssNics(alias)[0].alias, 'ua-fast');
});

test('enable records what it changed so the hook and wrapper can read it', () => {
  const cfg = readConfig(read('all-virtio-queues.enabled.xml'))!;
  assert.equal(cfg.policy, 'strict');
  assert.equal(cfg.metadata, 'created');
  assert.deepEqual(cfg.nics, [
    { index: 0, mac: '52:54:00:6b:3c:01', driverCreated: true, attrs: [{ name: 'queues', value: '4' }, { name: 'rss', value: 'on' }] },
    { index: 1, mac: '52:54:00:6b:3c:02', driverCreated: false, attrs: [{ name: 'queues', value: '4', previous: '2' }, { name: 'rss', value: 'on' }] },
    { index: 8, mac: '52:54:00:6b:3c:09', driverCreated: false, attrs: [{ name: 'rss', value: 'on' }] },
  ]);
  assert.equal(readConfig(read('no-emulator.enabled.xml'))!.emulator.elementCreated, true);
  assert.equal(readConfig(read('foreign-metadata.enabled.xml'))!.metadata, 'existing');
});

test('refuses NICs with rss on that cannot carry eBPF RSS, naming the NIC and the reason', () => {
  expectError(() => enableDomain(read('e1000-rss.in.xml'), { wrapperFor }), 'XML_UNSUPPORTED_NIC', /interface 0: model e1000 is not virtio-net/);
  expectError(() => enableDomain(read('vhostuser-rss.in.xml'), { wrapperFor }), 'XML_UNSUPPORTED_NIC', /52:54:00:6b:3c:01.*vhost-user/);
  expectError(() => enableDomain(read('direct-rss.in.xml'), { wrapperFor }), 'XML_UNSUPPORTED_NIC', /macvtap/);
  expectError(() => enableDomain(read('passt-rss.in.xml'), { wrapperFor }), 'XML_UNSUPPORTED_NIC', /passt/);
  // all-virtio does not soften an explicit request
  expectError(() => enableDomain(read('direct-rss.in.xml'), { wrapperFor, allVirtio: true, queues: 4 }), 'XML_UNSUPPORTED_NIC');
  for (const type of ['hostdev', 'vdpa', 'mcast', 'user']) {
    const xml = read('one-rss-nic.in.xml').replace("<interface type='ethernet'>", `<interface type='${type}'>`);
    expectError(() => enableDomain(xml, { wrapperFor }), 'XML_UNSUPPORTED_NIC', new RegExp(`interface 0 \\(52:54:00:6b:3c:01\\)`));
  }
  // vhost-net is the point of eBPF RSS, and the transitional virtio models are virtio-net too
  const vhost = read('one-rss-nic.in.xml').replace("<driver queues='4'", "<driver name='vhost' queues='4'").replace("type='virtio'", "type='virtio-non-transitional'");
  assert.equal(enableDomain(vhost, { wrapperFor }).nics.length, 1);
});

test('refuses malformed XML with line and column, and non-QEMU domains', () => {
  expectError(() => enableDomain("<domain type='qemu'>\n  <name>x</nam>\n</domain>\n", { wrapperFor }), 'XML_INVALID', /line 2, column \d+/);
  expectError(() => enableDomain("<domain type='qemu'>\n  <name a='1 b='2'>x</name>\n</domain>", { wrapperFor }), 'XML_INVALID', /line 2/);
  expectError(() => enableDomain('', { wrapperFor }), 'XML_INVALID');
  expectError(() => enableDomain('<network><name>default</name></network>', { wrapperFor }), 'XML_INVALID', /<network>/);
  expectError(() => disableDomain('<domain type="qemu"><devices>'), 'XML_INVALID');
  const xen = read('one-rss-nic.in.xml').replace("<domain type='qemu'>", "<domain type='xen'>");
  expectError(() => enableDomain(xen, { wrapperFor }), 'XML_UNSUPPORTED_DOMAIN', /type "xen"/);
  const kvm = read('one-rss-nic.in.xml').replace("<domain type='qemu'>", "<domain type='kvm'>");
  assert.equal(isEnabled(enableDomain(kvm, { wrapperFor }).xml), true);
  expectError(() => enableDomain("<domain type='qemu'><name>x</name></domain>", { wrapperFor }), 'XML_UNSUPPORTED_DOMAIN', /no <devices>/);
});

test('emulator edge cases: already a wrapper without metadata, no <emulator>, bad wrapper paths', () => {
  const wrapped = read('one-rss-nic.in.xml').replace(`<emulator>${QEMU_PATH}`, `<emulator>${WRAPPER}`);
  expectError(() => enableDomain(wrapped, { wrapperFor }), 'XML_METADATA', /already is the virt-ebpf wrapper/);
  expectError(() => enableDomain(read('no-emulator.in.xml'), { wrapperFor }), 'USAGE', /no <emulator>/);
  expectError(() => enableDomain(read('one-rss-nic.in.xml'), { wrapperFor: (p) => `wrappers/${p}` }), 'USAGE', /not an absolute path/);
  expectError(() => enableDomain(read('one-rss-nic.in.xml').replace(`<emulator>${QEMU_PATH}`, '<emulator>qemu-system-x86_64'), { wrapperFor }), 'XML_UNSUPPORTED_DOMAIN', /not an absolute path/);
  expectError(() => enableDomain(read('one-rss-nic.in.xml').replace(`<emulator>${QEMU_PATH}`, '<emulator>'), { wrapperFor }), 'XML_UNSUPPORTED_DOMAIN', /empty/);
  expectError(() => enableDomain(read('no-emulator.in.xml'), { wrapperFor, defaultEmulator: 'qemu' }), 'USAGE', /default emulator/);
  expectError(() => enableDomain(read('one-rss-nic.in.xml'), { wrapperFor, queues: 1 }), 'USAGE');
  expectError(() => enableDomain(read('one-rss-nic.in.xml'), { wrapperFor, policy: 'lenient' as never }), 'USAGE');
  // paths that need escaping survive the round trip
  const odd = read('one-rss-nic.in.xml').replace(`<emulator>${QEMU_PATH}`, '<emulator>/opt/q&amp;e/qemu-system-x86_64');
  const r = enableDomain(odd, { wrapperFor: (p) => `/opt/wr&ap'/${p.split('/').pop()}` });
  assert.equal(readConfig(r.xml)!.emulator.original, '/opt/q&e/qemu-system-x86_64');
  assert.match(r.xml, /<emulator>\/opt\/wr&amp;ap&apos;\/qemu-system-x86_64<\/emulator>/);
  assert.equal(disableDomain(r.xml).xml, odd);
});

test('policy is stored, kept across enables unless given, and changing it rewrites only our metadata', () => {
  const input = read('one-rss-nic.in.xml');
  const a = enableDomain(input, { wrapperFor, policy: 'fallback' });
  assert.equal(readConfig(a.xml)!.policy, 'fallback');
  const b = enableDomain(a.xml, { wrapperFor });
  assert.equal(b.xml, a.xml);
  const c = enableDomain(a.xml, { wrapperFor, policy: 'strict' });
  assert.deepEqual(c.changes, [{ kind: 'policy', from: 'fallback', to: 'strict' }, { kind: 'metadata', action: 'updated' }]);
  assert.equal(c.xml, enableDomain(input, { wrapperFor, policy: 'strict' }).xml);
  assert.equal(disableDomain(c.xml).xml, input);
});

test('hotplug opt-out: hotplug="off" is stored only when off, kept across enables unless given, and disable restores the input', () => {
  const input = read('one-rss-nic.in.xml');
  const on = enableDomain(input, { wrapperFor });
  assert.equal(readConfig(on.xml)!.hotplug, 'on');
  assert.doesNotMatch(on.xml, /hotplug=/, 'the default writes nothing: XML enabled before this option stays byte-identical');
  const off = enableDomain(on.xml, { wrapperFor, hotplug: 'off' });
  assert.match(off.xml, /<virt-ebpf:config [^>]*hotplug="off"/);
  assert.deepEqual(off.changes, [{ kind: 'hotplug', from: 'on', to: 'off' }, { kind: 'metadata', action: 'updated' }]);
  assert.equal(enableDomain(off.xml, { wrapperFor }).xml, off.xml, 'kept when not given');
  assert.equal(enableDomain(off.xml, { wrapperFor, hotplug: 'on' }).xml, on.xml);
  assert.equal(disableDomain(off.xml).xml, input);
  expectError(() => enableDomain(input, { wrapperFor, hotplug: 'maybe' as never }), 'USAGE', /hotplug/);
  expectError(() => readConfig(off.xml.replace('hotplug="off"', 'hotplug="sometimes"')), 'XML_METADATA', /hotplug/);
});

test('a second enable with all-virtio extends the record; disable still restores the first input', () => {
  const input = read('all-virtio-noqueues.in.xml');
  const first = enableDomain(input, { wrapperFor, allVirtio: true });
  const second = enableDomain(first.xml, { wrapperFor, allVirtio: true, queues: 4 });
  assert.deepEqual(
    second.nics.map((n) => [n.index, n.queues]),
    [
      [0, 4],
      [1, 4],
      [2, 4],
    ],
  );
  assert.equal(second.changes.filter((c) => c.kind === 'nic-attr' || c.kind === 'nic-driver').length, 3);
  assert.equal(disableDomain(second.xml).xml, input);
});

test('enable after the user pointed <emulator> at another QEMU wraps that one', () => {
  const enabled = read('one-rss-nic.enabled.xml').replace(`<emulator>${WRAPPER}`, '<emulator>/opt/qemu-10.1/bin/qemu-system-x86_64');
  const r = enableDomain(enabled, { wrapperFor });
  assert.equal(readConfig(r.xml)!.emulator.original, '/opt/qemu-10.1/bin/qemu-system-x86_64');
  assert.ok(r.xml.includes(`<emulator>${WRAPPER}</emulator>`));
  assert.match(r.warnings.join('\n'), /was changed to \/opt\/qemu-10.1/);
  assert.ok(disableDomain(r.xml).xml.includes('<emulator>/opt/qemu-10.1/bin/qemu-system-x86_64</emulator>'));
});

test('disable after user edits restores only what is still ours and reports the rest', () => {
  const enabled = read('all-virtio-queues.enabled.xml');
  const edited = enabled
    // NIC 1: the user raised queues after enable
    .replace(/(<mac address='52:54:00:6b:3c:02'\/>[\s\S]*?)<driver queues='4' rss='on'\/>/, "$1<driver queues='8' rss='on'/>")
    // NIC 0: the user added a setting to the <driver> enable created
    .replace(/(<mac address='52:54:00:6b:3c:01'\/>[\s\S]*?)<driver queues='4' rss='on'\/>/, "$1<driver txmode='iothread' queues='4' rss='on'/>")
    // NIC 8 was removed
    .replace(/\n    <interface type='ethernet'>\n      <mac address='52:54:00:6b:3c:09'\/>[\s\S]*?<\/interface>/, '');
  assert.notEqual(edited, enabled);
  const r = disableDomain(edited);
  const w = r.warnings.join('\n');
  assert.match(w, /52:54:00:6b:3c:02\): queues is '8' now \(enable set '4'\); left as is/);
  assert.match(w, /52:54:00:6b:3c:01\): kept the <driver> element/);
  assert.match(w, /interface 52:54:00:6b:3c:09 that enable changed is gone/);
  assert.ok(r.xml.includes("<driver queues='8'/>"), 'rss removed, user queues kept');
  assert.ok(r.xml.includes("<driver txmode='iothread'/>"), 'our attributes removed, the user one kept');
  assert.equal(readConfig(r.xml), null);
  assert.ok(r.xml.includes(`<emulator>${QEMU_PATH}</emulator>`));

  const moved = disableDomain(enabled.replace(`<emulator>${WRAPPER}`, '<emulator>/opt/other-qemu'));
  assert.match(moved.warnings.join('\n'), /changed to \/opt\/other-qemu after enable; left as is/);
  assert.ok(moved.xml.includes('<emulator>/opt/other-qemu</emulator>'));
  assert.equal(isEnabled(enabled.replace(`<emulator>${WRAPPER}`, '<emulator>/opt/other-qemu')), false);
});

test('disable keeps <metadata> that enable created once someone else stored metadata in it', () => {
  const enabled = read('one-rss-nic.enabled.xml');
  const withOther = enabled.replace('  </metadata>', '    <app:x xmlns:app="urn:app">1</app:x>\n  </metadata>');
  const r = disableDomain(withOther);
  assert.ok(r.xml.includes('<metadata>\n    <app:x xmlns:app="urn:app">1</app:x>\n  </metadata>'), r.xml.slice(0, 400));
  assert.equal(readConfig(r.xml), null);
});

test('an empty <metadata/> is expanded and restored', () => {
  const input = read('one-rss-nic.in.xml').replace('  <memory', '  <metadata/>\n  <memory');
  const r = enableDomain(input, { wrapperFor });
  assert.equal(readConfig(r.xml)!.metadata, 'expanded');
  assert.equal(disableDomain(r.xml).xml, input);
});

test('CRLF documents keep CRLF line ends in what enable adds', () => {
  const input = read('all-virtio-queues.in.xml').replace(/\n/g, '\r\n');
  const r = enableDomain(input, { wrapperFor, allVirtio: true, queues: 4 });
  assert.equal(r.xml, read('all-virtio-queues.enabled.xml').replace(/\n/g, '\r\n'));
  assert.equal(disableDomain(r.xml).xml, input);
});

test('corrupt or foreign-version metadata is reported, not guessed around', () => {
  const enabled = read('one-rss-nic.enabled.xml');
  expectError(() => readConfig(enabled.replace(' wrapper="/usr/libexec/virt-ebpf/qemu-system-x86_64"', '')), 'XML_METADATA', /lacks wrapper=/);
  expectError(() => disableDomain(enabled.replace('version="1"', 'version="9"')), 'XML_METADATA', /version 9/);
  expectError(() => enableDomain(enabled.replace('policy="strict"', 'policy="maybe"'), { wrapperFor }), 'XML_METADATA', /policy/);
});

test('enableInterface: one NIC document gets enable --all-virtio\'s rule with the same minimal edit, refusals and warnings', () => {
  const nic = `<interface type='bridge'>\n  <mac address='52:54:00:6b:3c:09'/>\n  <source bridge='br0'/>\n  <model type='virtio'/>\n  <driver name='vhost' queues='4'/>\n</interface>\n`;
  const on = enableInterface(nic);
  assert.equal(on.xml, nic.replace("queues='4'/>", "queues='4' rss='on'/>"));
  assert.equal(on.rss, true);
  assert.deepEqual(on.changes, [{ kind: 'nic-attr', nic: 'interface 0 (52:54:00:6b:3c:09)', attr: 'rss', to: 'on' }]);
  assert.deepEqual(enableInterface(on.xml).changes, [], 'rss already on: nothing to do');
  const noDriver = nic.replace("  <driver name='vhost' queues='4'/>\n", '');
  const q = enableInterface(noDriver, { queues: 2 });
  assert.match(q.xml, /<model type='virtio'\/>\n  <driver queues='2' rss='on'\/>/);
  const single = enableInterface(noDriver);
  assert.deepEqual([single.xml, single.rss], [noDriver, false]);
  assert.match(single.warnings.join('\n'), /no multiqueue/);
  const off = nic.replace("queues='4'", "queues='4' rss='off'");
  assert.equal(enableInterface(off).xml, off, "an explicit rss='off' is respected");
  assert.throws(() => enableInterface(nic.replace("'virtio'", "'e1000'").replace("queues='4'", "rss='on'")), (e) => isVirtEbpfError(e, 'XML_UNSUPPORTED_NIC'));
  assert.throws(() => enableInterface(read('one-rss-nic.in.xml')), (e) => isVirtEbpfError(e, 'XML_INVALID') && /not <interface>/.test(e.message));
});
