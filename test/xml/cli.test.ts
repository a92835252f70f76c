import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { DEFAULT_WRAPPER_DIR, readConfig, runXmlCommand, wrapperInDir } from '../../src/xml';
import { FIXTURES, read } from './cases';

const file = (name: string) => join(FIXTURES, name);

test('enable FILE with flags prints the enabled XML and reports changes and warnings on stderr', () => {
  const r = runXmlCommand(['enable', '--all-virtio', '--queues', '4', file('all-virtio-queues.in.xml')], '');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, read('all-virtio-queues.enabled.xml'));
  assert.match(r.stderr, /^virt-ebpf: changed: <emulator> \/usr\/bin\/qemu-system-x86_64 -> \/usr\/libexec\/virt-ebpf\/qemu-system-x86_64$/m);
  assert.match(r.stderr, /^virt-ebpf: changed: interface 0 \(52:54:00:6b:3c:01\): <driver> created$/m);
  assert.match(r.stderr, /^virt-ebpf: warning: interface 4 .*macvtap/m);
});

test("rss_hash_report='on' on an RSS NIC: one warning line on stderr, the XML transformed all the same", () => {
  const plain = read('one-rss-nic.in.xml');
  const input = plain.replace("<driver queues='4' rss='on'/>", "<driver queues='4' rss='on' rss_hash_report='on'/>");
  assert.notEqual(input, plain);
  const r = runXmlCommand(['enable', '-'], input);
  assert.equal(r.code, 0, r.stderr);
  const warnings = r.stderr.split('\n').filter((l) => l.startsWith('virt-ebpf: warning:'));
  assert.equal(warnings.length, 1, r.stderr);
  assert.match(warnings[0], /^virt-ebpf: warning: interface 0 \(52:54:00:6b:3c:01\) has rss_hash_report='on': a guest that turns hash reporting on \(Linux does\) makes QEMU steer in software instead of with eBPF; remove rss_hash_report/);
  assert.equal(r.stdout, runXmlCommand(['enable', '-'], plain).stdout.replace("rss='on'/>", "rss='on' rss_hash_report='on'/>"), 'the same edits as without it');
  assert.ok(readConfig(r.stdout), 'enabled');
  assert.doesNotMatch(runXmlCommand(['enable', '-'], plain).stderr, /rss_hash_report/, 'no warning without it');
  const off = runXmlCommand(['enable', '-'], plain.replace("rss='on'/>", "rss='on' rss_hash_report='off'/>"));
  assert.doesNotMatch(off.stderr, /warning/, "rss_hash_report='off' is fine");
});

test('reads stdin when FILE is absent or -, and --opt=value works', () => {
  const input = read('one-rss-nic.in.xml');
  const a = runXmlCommand(['enable', '--policy=fallback', '--wrapper-dir=/opt/vebpf/bin'], input);
  const b = runXmlCommand(['enable', '--policy', 'fallback', '--wrapper-dir', '/opt/vebpf/bin', '-'], input);
  assert.equal(a.code, 0, a.stderr);
  assert.equal(a.stdout, b.stdout);
  const cfg = readConfig(a.stdout)!;
  assert.equal(cfg.policy, 'fallback');
  assert.equal(cfg.emulator.wrapper, '/opt/vebpf/bin/qemu-system-x86_64');
  const back = runXmlCommand(['disable'], a.stdout);
  assert.equal(back.code, 0, back.stderr);
  assert.equal(back.stdout, input);
  assert.match(back.stderr, /metadata removed/);
  let reads = 0;
  const lazy = () => (reads++, input);
  assert.equal(runXmlCommand(['enable', file('one-rss-nic.in.xml')], lazy).code, 0);
  assert.equal(reads, 0, 'stdin is not read when FILE is given');
  const noop = runXmlCommand(['disable', '-'], lazy);
  assert.equal(reads, 1);
  assert.equal(noop.stdout, input);
  assert.match(noop.stderr, /not enabled; unchanged/);
});

test('--default-emulator fills in a domain without <emulator>', () => {
  const without = runXmlCommand(['enable', file('no-emulator.in.xml')], '');
  assert.equal(without.code, 2);
  assert.match(without.stderr, /^virt-ebpf: .*no <emulator>.*\(USAGE\); .*--default-emulator/);
  const r = runXmlCommand(['enable', '--default-emulator', '/usr/bin/qemu-system-x86_64', file('no-emulator.in.xml')], '');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, read('no-emulator.enabled.xml'));
});

test('show prints our metadata and the RSS NICs as JSON', () => {
  const r = runXmlCommand(['show', file('two-rss-nics.enabled.xml')], '');
  assert.equal(r.code, 0, r.stderr);
  const body = JSON.parse(r.stdout);
  assert.equal(body.enabled, true);
  assert.equal(body.config.emulator.original, '/usr/bin/qemu-system-x86_64');
  assert.deepEqual(body.rssNics.map((n: { mac: string }) => n.mac), ['52:54:00:6b:3c:01', '52:54:00:6b:3c:02']);
  const plain = JSON.parse(runXmlCommand(['show'], read('two-rss-nics.in.xml')).stdout);
  assert.deepEqual([plain.enabled, plain.config], [false, null]);
});

test('refusals exit 1 with the one-line reason; usage errors exit 2; --help exits 0', () => {
  const refused = runXmlCommand(['enable', file('e1000-rss.in.xml')], '');
  assert.equal(refused.code, 1);
  assert.equal(refused.stdout, '');
  assert.match(refused.stderr, /^virt-ebpf: cannot give eBPF RSS to interface 0: model e1000 is not virtio-net \(XML_UNSUPPORTED_NIC\); remove rss='on'/);
  assert.equal(refused.stderr.trimEnd().split('\n').length, 1);
  const malformed = runXmlCommand(['enable'], '<domain type="qemu">\n<name>x</domain>');
  assert.equal(malformed.code, 1);
  assert.match(malformed.stderr, /XML_INVALID/);
  for (const argv of [
    ['frobnicate'],
    ['enable', '--queues'],
    ['enable', '--queues', 'four'],
    ['enable', '--queues', '1'],
    ['enable', '--policy', 'lenient'],
    ['enable', '--wrapper-dir', 'relative/dir'],
    ['enable', '--bogus'],
    ['enable', 'a.xml', 'b.xml'],
    ['disable', '--all-virtio'],
    ['enable', '/nonexistent/vebpf-test.xml'],
  ]) {
    const r = runXmlCommand(argv, read('one-rss-nic.in.xml'));
    assert.equal(r.code, 2, `${argv.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, /\(USAGE\)/);
    assert.equal(r.stdout, '');
  }
  const help = runXmlCommand(['--help'], '');
  assert.equal(help.code, 0);
  assert.match(help.stdout, /usage: virt-ebpf xml enable/);
});

test('the wrapper of an emulator is the same file name in the wrapper directory', () => {
  assert.equal(DEFAULT_WRAPPER_DIR, '/usr/libexec/virt-ebpf');
  assert.equal(wrapperInDir('/usr/libexec/virt-ebpf/')('/usr/libexec/qemu-kvm'), '/usr/libexec/virt-ebpf/qemu-kvm');
  const w = wrapperInDir(DEFAULT_WRAPPER_DIR);
  assert.equal(w(w('/usr/bin/qemu-system-x86_64')), w('/usr/bin/qemu-system-x86_64'), 'a wrapper maps to itself');
});
