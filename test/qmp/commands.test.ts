/**
 * The pure reply parsers behind the typed commands (no socket needed).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isVirtEbpfError } from '../../src/errors';
import { decodeBase64Strict, parseCommandNames, parseDeviceProperties, parseGreeting, parseHelperPaths, parseVersion } from '../../src/qmp';

test('strict base64: round-trips real data, refuses what Node would silently accept', () => {
  const bytes = Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0, 1, 2, 255]);
  assert.deepEqual(decodeBase64Strict(bytes.toString('base64')), bytes);
  assert.deepEqual(decodeBase64Strict(''), Buffer.alloc(0));
  for (const bad of ['f0VMRg', 'f0VMRg=', 'f0VM\nRg==', ' f0VMRg==', 'f0VMRg==f0VM', 'f0VMRh==', 'f0V-Rg==', 'f0VMRg===', '====']) {
    assert.throws(() => decodeBase64Strict(bad), (e: unknown) => isVirtEbpfError(e, 'BPF_BAD_BASE64'), JSON.stringify(bad));
  }
});

test('greeting parser wants version numbers and a capability list', () => {
  const g = parseGreeting({ QMP: { version: { qemu: { micro: 2, minor: 0, major: 10 }, package: 'p' }, capabilities: ['oob'] } });
  assert.deepEqual(g.version, { major: 10, minor: 0, micro: 2, package: 'p' });
  assert.deepEqual(g.capabilities, ['oob']);
  for (const bad of [{}, { QMP: {} }, { QMP: { version: { qemu: { major: '10', minor: 0, micro: 0 } }, capabilities: [] } }, { QMP: { version: { qemu: { major: 1, minor: 0, micro: 0 } } } }]) {
    assert.throws(() => parseGreeting(bad as Record<string, unknown>), (e: unknown) => isVirtEbpfError(e, 'QMP_PROTOCOL'));
  }
});

test('reply parsers reject wrong shapes with QMP_PROTOCOL naming the command', () => {
  assert.deepEqual(parseVersion({ qemu: { major: 7, minor: 2, micro: 22 } }), { major: 7, minor: 2, micro: 22, package: '' });
  assert.throws(() => parseVersion({ qemu: { major: -1, minor: 2, micro: 22 } }), /query-version/);
  assert.deepEqual(parseCommandNames([{ name: 'a' }, { name: 'b' }]), ['a', 'b']);
  assert.throws(() => parseCommandNames([{ name: 'a' }, 'b']), /query-commands/);
  assert.deepEqual(parseDeviceProperties([{ name: 'ebpf-rss-fds', type: 'list', 'default-value': [] }]), [{ name: 'ebpf-rss-fds', type: 'list', defaultValue: [] }]);
  assert.throws(() => parseDeviceProperties({ name: 'x' }), (e: unknown) => isVirtEbpfError(e, 'QMP_PROTOCOL'));
});

test('helper paths: list of {name, path}, or a single {path}', () => {
  assert.deepEqual(parseHelperPaths([{ name: 'qemu-ebpf-rss-helper', path: '/p' }]), [{ name: 'qemu-ebpf-rss-helper', path: '/p' }]);
  assert.deepEqual(parseHelperPaths({ path: '/q' }, 'find-ebpf-rss-helper'), [{ name: 'qemu-ebpf-rss-helper', path: '/q' }]);
  assert.throws(() => parseHelperPaths([{ name: 'x' }], 'find-ebpf-rss-helper'), /find-ebpf-rss-helper/);
});
