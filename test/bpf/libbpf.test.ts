/**
 * Our parser against libbpf's own view of the same bytes (bpf_object__open_mem parses without
 * the kernel, so no root is needed here).
 */
import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { loadRss, parseBpfObject } from '../../src/bpf';
import { LibbpfObject, withLibbpfMessages } from '../../src/bpf/libbpf';
import { isVirtEbpfError } from '../../src/errors';
import { rssObject } from './fixture';
import { setMapAttr } from './mutate';

let obj: Buffer;
before(async () => {
  obj = await rssObject();
});

function libbpfView(bytes: Buffer) {
  const o = LibbpfObject.open(bytes, 'virt_ebpf_test');
  try {
    return { programs: o.programs(), maps: o.maps() };
  } finally {
    o.close();
  }
}

test('parseBpfObject agrees with libbpf on programs and maps, in order', () => {
  const spec = parseBpfObject(obj);
  const lib = libbpfView(obj);
  assert.deepEqual(
    lib.maps,
    spec.maps.map(({ name, type, keySize, valueSize, maxEntries, flags }) => ({ name, type, keySize, valueSize, maxEntries, flags })),
  );
  // libbpf infers SOCKET_FILTER (1) from SEC("socket"); QEMU sets it explicitly anyway
  assert.deepEqual(
    lib.programs,
    spec.programs.map((p) => ({ ...p, type: 1 })),
  );
});

test('…and on a mutated object, so the agreement is not a coincidence', () => {
  const mutated = setMapAttr(obj, 'tap_rss_map_indirection_table', 'max_entries', 64);
  assert.equal(parseBpfObject(mutated).maps[2].maxEntries, 64);
  assert.equal(libbpfView(mutated).maps[2].maxEntries, 64);
});

test("libbpf's messages are captured, not printed", () => {
  const junk = Buffer.from(obj);
  junk.writeUInt16LE(62, 18); // x86-64 machine: libbpf refuses it
  const messages = withLibbpfMessages((m) => {
    assert.throws(() => LibbpfObject.open(junk, 'virt_ebpf_test'), (e: unknown) => isVirtEbpfError(e, 'BPF_LOAD') && typeof e.fields.errno === 'number');
    return m;
  });
  assert.ok(messages.some((m) => /libbpf: /.test(m)), `messages: ${JSON.stringify(messages)}`);
});

test('a missing libbpf is BPF_LIBBPF_MISSING with the package to install', () => {
  assert.throws(
    () => loadRss(obj, { libbpfSoname: 'libbpf-virt-ebpf-absent.so.1' }),
    (e: unknown) => {
      assert.ok(isVirtEbpfError(e, 'BPF_LIBBPF_MISSING'), String(e));
      assert.match(e.message, /cannot load libbpf-virt-ebpf-absent\.so\.1/);
      assert.match(e.remedy, /apt-get install libbpf1/);
      return true;
    },
  );
});

test('validation runs before libbpf is even looked up', () => {
  const bad = setMapAttr(obj, 'tap_rss_map_indirection_table', 'max_entries', 256);
  assert.throws(() => loadRss(bad, { libbpfSoname: 'libbpf-virt-ebpf-absent.so.1' }), (e: unknown) => isVirtEbpfError(e, 'BPF_UNEXPECTED_OBJECT'));
});
