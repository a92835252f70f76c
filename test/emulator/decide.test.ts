/**
 * The probe's decision, replayed from recorded QMP transcripts (no QEMU needed): QEMU 10.0.2
 * and Debian 12's QEMU 7.2 were recorded live with test/fixtures/qmp/record-transcript.ts, QEMU
 * 11.1.3 the same way inside a Debian 13 root with trixie-backports (scripts/matrix); the
 * helper-protocol one is synthetic (that protocol never shipped). Variants of the 10.0.2
 * recording cover the half-supported emulators the decision must refuse.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { isVirtEbpfError } from '../../src/errors';
import { BinaryIdentity, EmulatorCaps, ProbeTranscript, assertSupported, capsShapeProblem, decideCaps, rssObjectBytes, sourceCommand } from '../../src/emulator';
import { REPO } from '../harness';

const DIR = join(REPO, 'test', 'fixtures', 'qmp', 'transcripts');
const load = (name: string): ProbeTranscript & { shortened?: { bytes: number; sha256: string } } => JSON.parse(readFileSync(join(DIR, name), 'utf8'));
const ID: BinaryIdentity = { realpath: '/usr/bin/qemu-system-x86_64', dev: 2049, ino: 1234, size: 28686560, mtimeMs: 1757080993000, ctimeMs: 1795387599091.3442 };
const AT = '2025-01-01T00:00:00.000Z';
const decide = (t: ProbeTranscript) => decideCaps(t, { path: 'qemu-system-x86_64', identity: ID }, AT);

/** A deep copy of a transcript with one exchange's reply changed (or the exchange dropped). */
function variant(t: ProbeTranscript, execute: string, change: ((reply: any) => any) | 'drop'): ProbeTranscript {
  const copy: ProbeTranscript = JSON.parse(JSON.stringify(t));
  const i = copy.exchanges.findIndex((x) => x.execute === execute);
  assert.ok(i >= 0, `transcript has ${execute}`);
  if (change === 'drop') copy.exchanges.splice(i, 1);
  else copy.exchanges[i].reply = change(copy.exchanges[i].reply);
  return copy;
}
const withoutCommand = (t: ProbeTranscript, name: string) =>
  variant(t, 'query-commands', (r) => ({ return: r.return.filter((c: { name: string }) => c.name !== name) }));
const withProps = (t: ProbeTranscript, f: (props: any[]) => any[]) => variant(t, 'device-list-properties', (r) => ({ return: f(r.return) }));

const q10 = load('qemu-10.0.2.json');
const q111 = load('qemu-11.1.3.json');
const q72 = load('qemu-7.2.22.json');
const helper = load('synthetic-helper-6.1.json');

test('QEMU 10.0.2 recording: supported through request-ebpf with the ebpf-rss-fds list', () => {
  const caps = decide(q10);
  assert.equal(caps.supported, true);
  assert.equal(caps.reason, undefined);
  assert.equal(caps.protocol, 'request-ebpf');
  assert.deepEqual(caps.property, { name: 'ebpf-rss-fds', type: 'list' });
  assert.deepEqual(caps.version, { major: 10, minor: 0, micro: 2, package: 'Debian 1:10.0.2+ds-2+deb13u1~bpo12+1' });
  const obj = rssObjectBytes(caps);
  assert.equal(obj.subarray(0, 4).toString('latin1'), '\x7fELF');
  assert.equal(caps.rssObjectSha256, createHash('sha256').update(obj).digest('hex'));
  assert.equal(q10.shortened?.bytes, 20208, 'the recording notes the full object size');
  assert.equal(caps.helperPath, undefined);
  // property types for rewriting key=value devices as typed JSON
  assert.equal(caps.deviceProps.rss, 'bool');
  assert.equal(caps.deviceProps.mq, 'bool');
  assert.equal(caps.deviceProps.vectors, 'uint32');
  assert.equal(caps.deviceProps['ebpf-rss-fds'], 'list');
  assert.equal(capsShapeProblem(caps), null);
  assert.deepEqual(JSON.parse(JSON.stringify(caps)), caps, 'caps are plain JSON data');
});

const HASH_PROPS = ['hash-ipv4', 'hash-ipv6', 'hash-ipv6ex', 'hash-tcp4', 'hash-tcp6', 'hash-tcp6ex', 'hash-udp4', 'hash-udp6', 'hash-udp6ex'];

test('QEMU 11.1.3 recording (trixie-backports): supported like 10.0.2, and the probe records its hash-* properties with their defaults', () => {
  const caps = decide(q111);
  assert.equal(caps.supported, true);
  assert.equal(caps.protocol, 'request-ebpf');
  assert.deepEqual(caps.property, { name: 'ebpf-rss-fds', type: 'list' });
  assert.deepEqual([caps.version.major, caps.version.minor, caps.version.micro], [11, 1, 3]);
  assert.deepEqual(Object.keys(caps.hashProps), HASH_PROPS);
  assert.ok(Object.values(caps.hashProps).every((d) => d === 'auto'), JSON.stringify(caps.hashProps));
  assert.ok(HASH_PROPS.every((p) => caps.deviceProps[p] === 'OnOffAuto'));
  assert.equal(caps.deviceProps.hash, 'bool', 'hash (hash reporting) stays a bool beside them');
  assert.equal(q111.shortened?.sha256, q10.shortened?.sha256, "11.1.3 ships 10.0.2's RSS program unchanged");
  assert.equal(capsShapeProblem(caps), null);
  assert.deepEqual(decide(q10).hashProps, {}, '10.0.2 has none');
});

test('Debian 12 QEMU 7.2 recording: unsupported, and the reason says what to do', () => {
  const caps = decide(q72);
  assert.equal(caps.supported, false);
  assert.equal(caps.protocol, null);
  assert.equal(caps.property, null);
  assert.match(caps.reason!, /QEMU 7\.2\.22 has no request-ebpf \(needs QEMU >= 9\.0\) and no ebpf_rss_fds property/);
  assert.match(caps.reason!, /upgrade QEMU/);
  assert.equal(capsShapeProblem(caps), null);
  assert.throws(() => assertSupported(caps), (e: unknown) => isVirtEbpfError(e, 'EMULATOR_UNSUPPORTED') && /needs QEMU >= 9\.0/.test(e.message));
  assertSupported(decide(q10));
});

test('QEMU 10.0.2 microvm recording (no PCI, no eBPF build): property but no object', () => {
  const caps = decide(load('qemu-10.0.2-microvm.json'));
  assert.equal(caps.supported, false);
  assert.equal(caps.protocol, null);
  assert.deepEqual(caps.property, { name: 'ebpf-rss-fds', type: 'list' });
  assert.match(caps.reason!, /no way to get the eBPF object/);
});

test('helper-protocol transcript: supported through the helper with the ebpf_rss_fds string', () => {
  const caps = decide(helper);
  assert.equal(caps.supported, true);
  assert.equal(caps.protocol, 'helper');
  assert.deepEqual(caps.property, { name: 'ebpf_rss_fds', type: 'string' });
  assert.equal(caps.helperPath, '/usr/libexec/qemu-ebpf-rss-helper');
  assert.equal(caps.rssObject, undefined);
  assert.equal(capsShapeProblem(caps), null);
});

test('2023 spelling: find-ebpf-rss-helper returning {path}', () => {
  const t: ProbeTranscript = JSON.parse(JSON.stringify(helper));
  const cmds = t.exchanges.find((x) => x.execute === 'query-commands')!;
  (cmds.reply as { return: Array<{ name: string }> }).return = [{ name: 'query-version' }, { name: 'query-commands' }, { name: 'find-ebpf-rss-helper' }];
  const x = t.exchanges.find((e) => e.execute === 'query-helper-paths')!;
  x.execute = 'find-ebpf-rss-helper';
  x.reply = { return: { path: '/opt/qemu/libexec/qemu-ebpf-rss-helper' } };
  const caps = decide(t);
  assert.equal(caps.protocol, 'helper');
  assert.equal(caps.helperPath, '/opt/qemu/libexec/qemu-ebpf-rss-helper');
});

test('no PCI (microvm): the bare virtio-net-device answers for it', () => {
  const t = variant(q10, 'device-list-properties', () => ({ error: { class: 'DeviceNotFound', desc: "Device 'virtio-net-pci' not found" } }));
  const pci = t.exchanges.find((x) => x.execute === 'device-list-properties')!;
  const props = q10.exchanges.find((x) => x.execute === 'device-list-properties')!.reply;
  t.exchanges.splice(t.exchanges.indexOf(pci) + 1, 0, { execute: 'device-list-properties', arguments: { typename: 'virtio-net-device' }, reply: props });
  const caps = decide(t);
  assert.equal(caps.supported, true, caps.reason);
  assert.deepEqual(caps.property, { name: 'ebpf-rss-fds', type: 'list' });
  const noRss = variant(t, 'device-list-properties', (r) => r); // pci error kept
  (noRss.exchanges.filter((x) => x.execute === 'device-list-properties')[1].reply as { return: Array<{ name: string }> }).return = [{ name: 'mac', type: 'str' } as never];
  assert.match(decide(noRss).reason!, /virtio-net-device has no rss property/);
});

test('request-ebpf is preferred when an emulator offers both ways', () => {
  assert.deepEqual(sourceCommand(['query-helper-paths', 'request-ebpf']), { execute: 'request-ebpf', arguments: { id: 'rss' } });
  assert.deepEqual(sourceCommand(['find-ebpf-rss-helper']), { execute: 'find-ebpf-rss-helper' });
  assert.equal(sourceCommand(['query-version']), null);
});

const refusals: Array<[string, () => ProbeTranscript, RegExp, Partial<EmulatorCaps>]> = [
  ['property present but no way to get the object', () => variant(withoutCommand(q10, 'request-ebpf'), 'request-ebpf', 'drop'), /no way to get the eBPF object/, { protocol: null, property: { name: 'ebpf-rss-fds', type: 'list' } }],
  ['request-ebpf present but no property', () => withProps(q10, (p) => p.filter((x) => x.name !== 'ebpf-rss-fds')), /request-ebpf but virtio-net-pci has no ebpf-rss-fds/, { protocol: 'request-ebpf', property: null }],
  ['request-ebpf fails', () => variant(q10, 'request-ebpf', () => ({ error: { class: 'GenericError', desc: 'eBPF support is not compiled in' } })), /request-ebpf failed: eBPF support is not compiled in/, { protocol: 'request-ebpf' }],
  ['request-ebpf returns invalid base64', () => variant(q10, 'request-ebpf', () => ({ return: { object: 'f0VMRg=!' } })), /not valid base64/, {}],
  ['request-ebpf returns something that is not ELF', () => variant(q10, 'request-ebpf', () => ({ return: { object: Buffer.from('MZ not elf').toString('base64') } })), /not an ELF object/, {}],
  ['ebpf-rss-fds of an unexpected type', () => withProps(q10, (p) => p.map((x) => (x.name === 'ebpf-rss-fds' ? { ...x, type: 'str' } : x))), /unexpected type "str"/, { property: null }],
  ['no virtio-net device at all', () => variant(q10, 'device-list-properties', () => ({ error: { class: 'DeviceNotFound', desc: "Device 'virtio-net-pci' not found" } })), /no usable virtio-net device: Device 'virtio-net-pci' not found/, {}],
  ['no rss property at all', () => withProps(q10, (p) => p.filter((x) => x.name !== 'rss')), /has no rss property/, {}],
  ['helper list without the RSS helper', () => variant(helper, 'query-helper-paths', () => ({ return: [{ name: 'qemu-bridge-helper', path: '/usr/lib/qemu/qemu-bridge-helper' }] })), /names no qemu-ebpf-rss-helper/, { protocol: 'helper' }],
  ['helper path not absolute', () => variant(helper, 'query-helper-paths', () => ({ return: [{ name: 'qemu-ebpf-rss-helper', path: 'qemu-ebpf-rss-helper' }] })), /relative helper path/, {}],
];

for (const [name, make, reason, fields] of refusals) {
  test(`unsupported, not an exception: ${name}`, () => {
    const caps = decide(make());
    assert.equal(caps.supported, false);
    assert.match(caps.reason!, reason);
    for (const [k, v] of Object.entries(fields)) assert.deepEqual(caps[k as keyof EmulatorCaps], v, k);
    assert.equal(caps.rssObject, undefined);
    assert.equal(caps.helperPath, undefined);
    assert.equal(capsShapeProblem(caps), null);
  });
}

test('a transcript that is not QEMU-like at all throws QMP_PROTOCOL', () => {
  assert.throws(() => decide(variant(q10, 'query-version', () => ({ error: { class: 'CommandNotFound', desc: 'nope' } }))), (e: unknown) => isVirtEbpfError(e, 'QMP_PROTOCOL'));
  assert.throws(() => decide(variant(q10, 'query-commands', () => ({ return: 'everything' }))), (e: unknown) => isVirtEbpfError(e, 'QMP_PROTOCOL'));
  assert.throws(() => decide(variant(q10, 'query-version', 'drop')), (e: unknown) => isVirtEbpfError(e, 'QMP_PROTOCOL'));
});

test('the strict shape check refuses tampered or partial caps', () => {
  const good = decide(q10);
  const bad: Array<[string, (c: any) => void]> = [
    ['unknown key', (c) => (c.extra = 1)],
    ['identity field missing', (c) => delete c.identity.ino],
    ['identity of another file', (c) => (c.identity.realpath = '/usr/bin/other')],
    ['object swapped, digest kept', (c) => (c.rssObject = Buffer.from('\x7fELF other bytes').toString('base64'))],
    ['object not base64', (c) => (c.rssObject = c.rssObject.slice(1))],
    ['object missing', (c) => delete c.rssObject],
    ['reason on a supported emulator', (c) => (c.reason = 'x')],
    ['unsupported without reason', (c) => (c.supported = false)],
    ['property of a wrong type', (c) => (c.property = { name: 'ebpf-rss-fds', type: 'string' })],
    ['helper path on request-ebpf caps', (c) => (c.helperPath = '/x')],
    ['bad date', (c) => (c.probedAt = 'yesterday')],
    ['version as string', (c) => (c.version.major = '10')],
    ['deviceProps missing', (c) => delete c.deviceProps],
    ['deviceProps with a non-string type', (c) => (c.deviceProps.mq = true)],
    ['hashProps missing', (c) => delete c.hashProps],
    ['hashProps naming another property', (c) => (c.hashProps.rss = 'auto')],
    ['hashProps with a non-string default', (c) => (c.hashProps['hash-ipv4'] = true)],
  ];
  for (const [what, mutate] of bad) {
    const c = JSON.parse(JSON.stringify(good));
    mutate(c);
    assert.notEqual(capsShapeProblem(c), null, what);
  }
  const h = JSON.parse(JSON.stringify(decide(helper)));
  h.helperPath = 'relative';
  assert.notEqual(capsShapeProblem(h), null);
});
