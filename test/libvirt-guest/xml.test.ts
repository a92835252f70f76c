/**
 * The guest fixture's domain XML (pure) — and that libvirt's own schema accepts it
 * (virt-xml-validate, from libvirt-clients) — and the domiflist parser on virsh's real output.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { guestDomainXml, parseDomiflist, guestCmdline } from '../support/guest';
import { tempDir } from '../harness';

const base = {
  name: 'vebpf-guest-x',
  kernel: '/var/lib/libvirt/images/virt-ebpf-guest/vebpf-guest-x/vmlinuz',
  initrd: '/var/lib/libvirt/images/virt-ebpf-guest/vebpf-guest-x/initrd.img',
  cmdline: guestCmdline({ script: ['@a echo "<&>"'], ip: '10.199.79.2/30' }),
  consoleSocket: '/var/lib/libvirt/images/virt-ebpf-guest/vebpf-guest-x/console.sock',
};

function validate(xml: string): void {
  const dir = tempDir('vebpf-lg-xml-');
  try {
    const file = join(dir.path, 'd.xml');
    writeFileSync(file, xml);
    const r = spawnSync('virt-xml-validate', [file, 'domain'], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 0, `virt-xml-validate rejects the domain:\n${r.stdout}${r.stderr}\n${xml}`);
  } finally {
    dir.remove();
  }
}

test('one RSS NIC: TCG q35, direct kernel boot, as many vCPUs as queues, serial on the unix socket; libvirt\'s schema accepts it', () => {
  const xml = guestDomainXml({ ...base, nics: [{}] });
  assert.match(xml, /^<domain type='qemu'>/);
  assert.match(xml, /<type arch='x86_64' machine='q35'>hvm<\/type>/);
  assert.match(xml, /<vcpu>4<\/vcpu>/);
  assert.match(xml, /<memory unit='MiB'>256<\/memory>/);
  assert.match(xml, /<interface type='ethernet'>\n {6}<model type='virtio'\/>\n {6}<driver queues='4' rss='on'\/>\n {4}<\/interface>/);
  assert.match(xml, /<serial type='unix'>\n {6}<source mode='bind' path='\/var\/lib\/libvirt\/images\/virt-ebpf-guest\/vebpf-guest-x\/console.sock'\/>/);
  assert.match(xml, /<emulator>\/usr\/bin\/qemu-system-x86_64<\/emulator>/);
  // The command line is base64 here, but whatever it holds is escaped.
  assert.ok(xml.includes(`<cmdline>${base.cmdline}</cmdline>`));
  validate(xml);
});

test('several NICs: each with its own queues and rss; vCPUs follow the largest queue count; MACs kept', () => {
  const xml = guestDomainXml({ ...base, nics: [{ queues: 2 }, { queues: 8, rss: false, mac: '52:54:00:AA:00:01' }, { hashReport: true }] });
  assert.equal(xml.match(/<interface type='ethernet'>/g)?.length, 3);
  assert.match(xml, /<driver queues='2' rss='on'\/>/);
  assert.match(xml, /<driver queues='4' rss='on' rss_hash_report='on'\/>/);
  assert.match(xml, /<mac address='52:54:00:AA:00:01'\/>\n {6}<model type='virtio'\/>\n {6}<driver queues='8'\/>/);
  assert.match(xml, /<vcpu>8<\/vcpu>/);
  validate(xml);
});

test('text that XML would misread is escaped; bad names and NIC lists are refused', () => {
  const xml = guestDomainXml({ ...base, cmdline: `a<b>&'"`, nics: [{}] });
  assert.ok(xml.includes('<cmdline>a&lt;b&gt;&amp;&apos;&quot;</cmdline>'));
  validate(xml);
  assert.throws(() => guestDomainXml({ ...base, name: '../x', nics: [{}] }), { code: 'USAGE' });
  assert.throws(() => guestDomainXml({ ...base, nics: [] }), { code: 'USAGE' });
  assert.throws(() => guestDomainXml({ ...base, nics: [{ queues: 0 }] }), { code: 'USAGE' });
});

test('parseDomiflist reads virsh -q domiflist (and ignores its header when present)', () => {
  // As virsh 11.3 prints it, with and without -q.
  const quiet = ' vnet116   ethernet   -        virtio   52:54:00:58:4b:a1\n vnet117   ethernet   -        virtio   52:54:00:58:4B:A2\n\n';
  const full = ` Interface   Type       Source   Model    MAC\n-----------------------------------------------------------\n${quiet}`;
  const want = [
    { tap: 'vnet116', type: 'ethernet', source: '-', model: 'virtio', mac: '52:54:00:58:4b:a1' },
    { tap: 'vnet117', type: 'ethernet', source: '-', model: 'virtio', mac: '52:54:00:58:4b:a2' },
  ];
  assert.deepEqual(parseDomiflist(quiet), want);
  assert.deepEqual(parseDomiflist(full), want);
  assert.deepEqual(parseDomiflist(''), []);
});
