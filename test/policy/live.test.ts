/**
 * The pure parts of reading a starting domain's settings from libvirt's status XML (hosts
 * without our hook) and of the state both writers leave: which process a status belongs to,
 * which names stay in the directory, what facts make a domain go by.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { domainOfStatus, liveDomainXml, statusPath } from '../../src/policy/live';
import { readDomainState, removeDomainState, writeDomainState } from '../../src/policy';
import { settingsOf } from '../../src/hook/facts';
import { domainFacts, XML_NAMESPACE } from '../../src/xml';
import { tempDir } from '../harness';

const UUID = 'c0034b07-f7cb-4e9f-bc7d-51a1849f9051';
const WRAPPER = '/usr/libexec/virt-ebpf/qemu-system-x86_64';

function domain(meta: string, emulator = WRAPPER): string {
  return [
    `<domain type='qemu' id='7'>`,
    `  <name>vm1</name>`,
    `  <uuid>${UUID}</uuid>`,
    meta ? `  <metadata>\n    ${meta}\n  </metadata>` : '',
    `  <memory unit='KiB'>131072</memory>`,
    `  <os><type arch='x86_64' machine='pc-q35-10.0'>hvm</type></os>`,
    `  <devices>`,
    `    <emulator>${emulator}</emulator>`,
    `    <interface type='ethernet'><model type='virtio'/><driver queues='4' rss='on'/></interface>`,
    `  </devices>`,
    `</domain>`,
  ].join('\n');
}

const ours = (attrs: string) => `<virt-ebpf:config xmlns:virt-ebpf="${XML_NAMESPACE}" version='1' ${attrs}><virt-ebpf:emulator original="/usr/bin/qemu-system-x86_64" wrapper="${WRAPPER}"/></virt-ebpf:config>`;

/** libvirt's status while it starts a domain: the pid of the process it forked, then the definition. */
function status(pid: number, dom: string): string {
  return `<!--\nWARNING: THIS IS AN AUTO-GENERATED FILE.\n-->\n<domstatus state='paused' reason='starting up' pid='${pid}'>\n  <taint flag='high-privileges'/>\n  <qemuCaps><flag name='device-tracing'/></qemuCaps>\n${dom}\n  <privateData/>\n</domstatus>\n`;
}

test('domainOfStatus: the <domain> of the status whose pid is the peer, nothing else', () => {
  const dom = domain('');
  assert.equal(domainOfStatus(status(4242, dom), 4242), dom);
  assert.equal(domainOfStatus(status(4242, dom), 4243), undefined, "another process's status");
  assert.equal(domainOfStatus(dom, 4242), undefined, 'a bare definition is no status');
  assert.equal(domainOfStatus(`<domstatus state='running'>${dom}</domstatus>`, 4242), undefined, 'a status without a pid');
  assert.equal(domainOfStatus(`<domstatus pid='4242'></domstatus>`, 4242), undefined, 'a status without a domain');
});

test("statusPath: a name a peer put on its command line never leaves libvirt's directory", () => {
  assert.equal(statusPath('vm1', '/r'), '/r/vm1.xml');
  for (const bad of ['', '.', '..', '../etc/shadow', 'a/b', 'x'.repeat(256)]) assert.equal(statusPath(bad, '/r'), undefined, bad);
});

test('liveDomainXml: the status file of the name, bound to the pid, the name and the uuid', () => {
  const dir = tempDir('vebpf-live-');
  try {
    const dom = domain(ours("policy='fallback'"));
    writeFileSync(join(dir.path, 'vm1.xml'), status(99, dom));
    assert.deepEqual(liveDomainXml('vm1', UUID, 99, dir.path), { domain: dom });
    assert.match((liveDomainXml('vm1', UUID, 98, dir.path) as { why: string }).why, /is not the status of pid 98/);
    assert.match((liveDomainXml('vm1', '00000000-0000-4000-8000-000000000000', 99, dir.path) as { why: string }).why, /names vm1 c0034b07/, 'another uuid');
    assert.match((liveDomainXml('vm2', UUID, 99, dir.path) as { why: string }).why, /ENOENT/, 'no such file');
    assert.ok('why' in liveDomainXml(undefined, UUID, 99, dir.path));
    writeFileSync(join(dir.path, 'a&b.xml'), status(99, dom.replace('<name>vm1</name>', '<name>a&amp;b</name>')));
    assert.ok('domain' in liveDomainXml('a&b', UUID, 99, dir.path), 'a name libvirt escapes in XML');
  } finally {
    dir.remove();
  }
});

test('settingsOf: enabled → its policy and hot-plug; host-wide opt-out → fallback without hot-plug; anything else → not ours', () => {
  assert.deepEqual(settingsOf(domainFacts(domain(ours("policy='fallback' hotplug='off'")))), { policy: 'fallback', hotplug: false });
  assert.deepEqual(settingsOf(domainFacts(domain(ours('')))), { policy: 'strict', hotplug: true });
  const optOut = `<virt-ebpf:host-wide xmlns:virt-ebpf="${XML_NAMESPACE}" mode="off"/>`;
  assert.deepEqual(settingsOf(domainFacts(domain(optOut, '/usr/bin/qemu-system-x86_64'))), { policy: 'fallback', hotplug: false, hostWideOff: true });
  assert.equal(settingsOf(domainFacts(domain(''))), undefined);
  assert.equal(settingsOf(domainFacts(domain(ours(''), '/usr/bin/qemu-system-x86_64'))), undefined, 'config left but the emulator is not the wrapper: disabled');
});

test("the state file: the hook's record and exec-plan's (with the QEMU's pid) read back apart", () => {
  const dir = tempDir('vebpf-state-');
  try {
    writeDomainState({ name: 'vm1', uuid: UUID }, { policy: 'fallback', hotplug: false }, { by: 'hook' }, dir.path);
    assert.deepEqual(readDomainState(UUID, dir.path), { policy: 'fallback', hotplug: false, writer: { by: 'hook' } });
    writeDomainState({ name: 'vm1', uuid: UUID }, { policy: 'strict', hotplug: true }, { by: 'exec', pid: 77 }, dir.path);
    assert.deepEqual(readDomainState(UUID.toUpperCase(), dir.path), { policy: 'strict', hotplug: true, writer: { by: 'exec', pid: 77 } });
    removeDomainState(UUID, dir.path);
    assert.deepEqual(readDomainState(UUID, dir.path), {});
    // What the C hook writes (no writer field) is the hook's.
    writeFileSync(join(dir.path, `${UUID}.json`), JSON.stringify({ name: 'vm1', uuid: UUID, policy: 'strict', hotplug: true }));
    assert.deepEqual(readDomainState(UUID, dir.path).writer, { by: 'hook' });
  } finally {
    dir.remove();
  }
});
