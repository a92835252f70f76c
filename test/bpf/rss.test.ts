import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeRssConfig, parseBpfObject, parseRssObject, RSS_MAPS, RSS_ROLES, validateRssSpec, type BpfSpec } from '../../src/bpf';
import { isVirtEbpfError } from '../../src/errors';
import { rssObject } from './fixture';
import { promoteLabelToProgram, renameString, setMapAttr } from './mutate';

let obj: Buffer;
before(async () => {
  obj = await rssObject();
});

function unexpected(bytes: Buffer, ...parts: RegExp[]): void {
  assert.throws(
    () => parseRssObject(bytes),
    (e: unknown) => {
      assert.ok(isVirtEbpfError(e, 'BPF_UNEXPECTED_OBJECT'), `expected BPF_UNEXPECTED_OBJECT, got ${String(e)}`);
      for (const p of parts) assert.match(e.message, p);
      assert.match(e.remedy, /upgrade virt-ebpf|supported QEMU/);
      assert.deepEqual(e.detail?.split('\n'), e.fields.problems);
      return true;
    },
  );
}

test("QEMU 10's object is accepted as is", () => {
  const spec = parseRssObject(obj);
  assert.deepEqual(
    spec.maps.map((m) => m.name),
    RSS_MAPS.map((m) => m.name),
  );
  assert.deepEqual(RSS_ROLES, ['program', 'configuration', 'toeplitz_key', 'indirection_table']);
  assert.deepEqual(
    RSS_MAPS.map((m) => m.role),
    RSS_ROLES.slice(1),
  );
});

test('a map with other entries or value size is refused, naming map and number', () => {
  unexpected(setMapAttr(obj, 'tap_rss_map_indirection_table', 'max_entries', 256), /^unexpected RSS eBPF object: map tap_rss_map_indirection_table has 256 entries, expected 128$/);
  unexpected(setMapAttr(obj, 'tap_rss_map_configurations', 'value_size', 12), /map tap_rss_map_configurations has value size 12, expected 10/);
});

test('flags and type are checked on every map (shared BTF types change several at once)', () => {
  // all three maps share one int[1024] for map_flags
  const noMmap = setMapAttr(obj, 'tap_rss_map_configurations', 'map_flags', 0, 3);
  unexpected(noMmap, /map tap_rss_map_configurations has flags 0x0, expected 0x400 \(BPF_F_MMAPABLE\)/, /map tap_rss_map_toeplitz_key has flags 0x0/, /map tap_rss_map_indirection_table has flags 0x0/);
  // `type` of all maps and the indirection table's value_size share int[2]
  const hash = setMapAttr(obj, 'tap_rss_map_configurations', 'type', 1, 4);
  assert.throws(
    () => parseRssObject(hash),
    (e: unknown) => {
      assert.ok(isVirtEbpfError(e, 'BPF_UNEXPECTED_OBJECT'));
      assert.deepEqual(e.fields.problems, [
        'map tap_rss_map_configurations has type 1 (hash), expected 2 (array)',
        'map tap_rss_map_toeplitz_key has type 1 (hash), expected 2 (array)',
        'map tap_rss_map_indirection_table has type 1 (hash), expected 2 (array)',
        'map tap_rss_map_indirection_table has value size 1, expected 2',
      ]);
      assert.match(e.message, /; and 1 more$/);
      return true;
    },
  );
});

test('a renamed map is reported as missing and unexpected', () => {
  unexpected(renameString(obj, '.BTF', 'tap_rss_map_toeplitz_key', 'tap_rss_map_toeplitz_kez'), /missing map tap_rss_map_toeplitz_key; unexpected map tap_rss_map_toeplitz_kez/);
});

test('programs: renamed, extra', () => {
  unexpected(renameString(obj, '.strtab', 'tun_rss_steering_prog', 'tun_rss_steering_prof'), /missing program tun_rss_steering_prog; unexpected program tun_rss_steering_prof in section socket/);
  unexpected(promoteLabelToProgram(obj, 'LBB0_104', 1), /^unexpected RSS eBPF object: unexpected program LBB0_104 in section socket$/);
});

test('an extra (implicit data) map is refused', () => {
  unexpected(renameString(obj, '.strtab', '_license', '_.data\0\0'), /unexpected map \.data/);
});

test('an object over the size bound is refused even if otherwise right', () => {
  // the section table is addressed absolutely, so padding at the end keeps the ELF valid
  const big = Buffer.concat([obj, Buffer.alloc(1024 * 1024)]);
  assert.equal(parseBpfObject(big).maps.length, 3);
  unexpected(big, /object is \d+ bytes, over the 1048576-byte limit/);
});

test('declaration order is part of the contract (it is the ebpf-rss-fds order)', () => {
  const spec = parseBpfObject(obj);
  const swapped: BpfSpec = { ...spec, maps: [spec.maps[0], spec.maps[2], spec.maps[1]] };
  assert.throws(() => validateRssSpec(swapped), /maps are declared in the order tap_rss_map_configurations, tap_rss_map_indirection_table, tap_rss_map_toeplitz_key/);
  const pinned: BpfSpec = { ...spec, maps: spec.maps.map((m, i) => (i === 1 ? { ...m, pinning: 1 } : m)) };
  assert.throws(() => validateRssSpec(pinned), /map tap_rss_map_toeplitz_key asks to be pinned/);
  const legacy: BpfSpec = { ...spec, maps: spec.maps.map((m, i) => (i === 0 ? { ...m, source: 'legacy' } : m)) };
  assert.throws(() => validateRssSpec(legacy), /map tap_rss_map_configurations is a legacy map/);
  const twice: BpfSpec = { ...spec, maps: [...spec.maps, spec.maps[2]] };
  assert.throws(() => validateRssSpec(twice), /map tap_rss_map_indirection_table is declared twice/);
  const moved: BpfSpec = { ...spec, programs: [{ ...spec.programs[0], section: 'xdp' }] };
  assert.throws(() => validateRssSpec(moved), /program tun_rss_steering_prog is in section xdp, expected socket or tun_rss_steering/);
});

test('malformed ELF keeps its own code through parseRssObject', () => {
  assert.throws(() => parseRssObject(Buffer.alloc(0)), (e: unknown) => isVirtEbpfError(e, 'BPF_BAD_ELF'));
});

test('configuration value: the bytes a Linux guest made QEMU write', () => {
  const value = Buffer.from('01003f00000080000000', 'hex');
  assert.deepEqual(decodeRssConfig(value), { redirect: true, populateHash: false, hashTypes: 0x3f, indirectionsLen: 128, defaultQueue: 0 });
  // a view into a larger buffer (as from an mmap'ed map) decodes from its own offset
  const framed = Buffer.concat([Buffer.from([9, 9, 9]), Buffer.from('0001010000000200ff00', 'hex'), Buffer.alloc(6)]);
  assert.deepEqual(decodeRssConfig(framed.subarray(3, 13)), { redirect: false, populateHash: true, hashTypes: 1, indirectionsLen: 2, defaultQueue: 255 });
  assert.throws(() => decodeRssConfig(Buffer.alloc(9)), (e: unknown) => isVirtEbpfError(e, 'BPF_UNEXPECTED_OBJECT') && /9 bytes, expected 10/.test(e.message));
});
