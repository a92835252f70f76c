import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Edits, firstChild, SourceDoc } from '../../src/xml/source';
import { disableDomain, enableDomain, readConfig, rssNics, wrapperInDir } from '../../src/xml';

const wrapperFor = wrapperInDir('/usr/libexec/virt-ebpf');

test('element spans skip comments, CDATA, PIs and quoted ">" while finding the end tag', () => {
  const text = [
    '<?xml version="1.0"?>',
    '<domain type="qemu">',
    '  <description><![CDATA[ </description> <x> ]]></description>',
    '  <devices a=">" b=\'/>\'>',
    '    <!-- </devices> <interface> -->',
    '    <?pi </devices>?>',
    '    <interface type="ethernet"><model type="virtio"/></interface>',
    '  </devices >',
    '</domain>',
  ].join('\r\n');
  const src = SourceDoc.parse(text);
  const devices = firstChild(src.root, 'devices')!;
  const span = src.span(devices);
  assert.equal(text.slice(span.start, span.end), text.slice(text.indexOf('<devices'), text.indexOf('</devices >') + '</devices >'.length));
  assert.deepEqual(
    src.tag(devices).attrs.map((a) => [a.name, a.raw, a.quote]),
    [
      ['a', '>', '"'],
      ['b', '/>', "'"],
    ],
  );
  const desc = src.span(firstChild(src.root, 'description')!);
  assert.ok(text.slice(desc.contentStart, desc.contentEnd).startsWith('<![CDATA['));
  assert.equal(src.indentOf(devices), '  ');
  assert.equal(src.newline, '\r\n');
});

test('edits apply in position order and refuse to overlap', () => {
  const e = new Edits();
  e.insert(5, 'B');
  e.replace(0, 2, 'A');
  e.insert(5, 'C');
  assert.equal(e.apply('0123456789'), 'A234BC56789');
  assert.throws(() => e.replace(1, 3, 'x'), /overlapping/);
});

test('a one-line document and a tab-indented one round-trip exactly', () => {
  const oneLine =
    "<domain type='qemu'><name>x</name><memory>1</memory><os><type>hvm</type></os><devices><emulator>/usr/bin/qemu-system-x86_64</emulator><interface type='bridge'><source bridge='br0'/><model type='virtio'/></interface></devices></domain>";
  const a = enableDomain(oneLine, { wrapperFor, allVirtio: true, queues: 2 });
  assert.ok(a.xml.includes("<model type='virtio'/><driver queues='2' rss='on'/></interface>"), a.xml);
  assert.equal(rssNics(a.xml).length, 1);
  assert.equal(disableDomain(a.xml).xml, oneLine);

  const tabs = '<domain type="kvm">\n\t<name>t</name>\n\t<devices>\n\t\t<interface type="network">\n\t\t\t<source network="default"/>\n\t\t\t<model type="virtio"/>\n\t\t</interface>\n\t</devices>\n</domain>\n';
  const b = enableDomain(tabs, { wrapperFor, allVirtio: true, queues: 4, defaultEmulator: '/usr/bin/qemu-system-x86_64' });
  assert.ok(b.xml.includes('\n\t\t\t<model type="virtio"/>\n\t\t\t<driver queues="4" rss="on"/>\n'), b.xml);
  assert.ok(b.xml.includes('\t<devices>\n\t\t<emulator>/usr/libexec/virt-ebpf/qemu-system-x86_64</emulator>\n'), b.xml);
  assert.ok(b.xml.includes('\t<metadata>\n\t\t<virt-ebpf:config '), b.xml);
  assert.equal(readConfig(b.xml)!.emulator.elementCreated, true);
  assert.equal(disableDomain(b.xml).xml, tabs);
});
