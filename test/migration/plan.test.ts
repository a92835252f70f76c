/**
 * What `virt-ebpf migrate` decides (src/migrate/plan.ts): pure, every cell of
 * enabled × destination × policy, and how the user's --xml / --persistent-xml are taken over.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { planMigration, takeOption } from '../../src/migrate';
import { isVirtEbpfError } from '../../src/errors';

const WRAPPER = '/usr/libexec/virt-ebpf/qemu-system-x86_64';
const base = { name: 'vm', destUri: 'qemu+ssh://b/system', options: ['--live', '--migrateuri', 'tcp://b'] };

test('a domain that is not enabled, or a destination that can run the wrapper: the migration runs as asked', () => {
  assert.deepEqual(planMigration({ ...base, enabled: null }), { kind: 'as-is', options: base.options });
  for (const policy of ['strict', 'fallback'] as const) {
    assert.deepEqual(planMigration({ ...base, enabled: { policy, wrapper: WRAPPER }, destHasWrapper: true }), { kind: 'as-is', options: base.options });
  }
});

test('strict to a destination without virt-ebpf: refused with one line that names both ways out', () => {
  assert.throws(
    () => planMigration({ ...base, enabled: { policy: 'strict', wrapper: WRAPPER }, destHasWrapper: false }),
    (e) => {
      assert.ok(isVirtEbpfError(e));
      assert.equal(e.code, 'MIGRATION_REFUSED');
      assert.equal(e.oneLine().split('\n').length, 1);
      assert.match(e.oneLine(), /qemu\+ssh:\/\/b\/system cannot run .* and vm's policy is strict: not migrated, vm keeps running here/);
      assert.match(e.remedy, /install virt-ebpf on the destination, or `virt-ebpf enable vm --policy fallback`/);
      return true;
    },
  );
});

test('fallback to a destination without virt-ebpf: the XML goes plain — the live one, or the one the user named', () => {
  const enabled = { policy: 'fallback' as const, wrapper: WRAPPER };
  assert.deepEqual(planMigration({ ...base, enabled, destHasWrapper: false }), {
    kind: 'plain',
    options: base.options,
    xmlFrom: 'live',
    warning: `virt-ebpf: qemu+ssh://b/system cannot run ${WRAPPER} (virt-ebpf is not installed there): vm runs there without eBPF RSS (policy fallback), with the same devices`,
  });
  const mine = planMigration({ ...base, enabled, destHasWrapper: false, options: ['--live', '--xml', '/tmp/x.xml', '--persistent', '--persistent-xml=/tmp/p.xml'] });
  assert.equal(mine.kind, 'plain');
  assert.deepEqual(mine.kind === 'plain' && { options: mine.options, xmlFrom: mine.xmlFrom, persistentXmlFrom: mine.persistentXmlFrom }, {
    options: ['--live', '--persistent'],
    xmlFrom: '/tmp/x.xml',
    persistentXmlFrom: '/tmp/p.xml',
  });
  const persistent = planMigration({ ...base, enabled, destHasWrapper: false, options: ['--live', '--persistent'] });
  assert.equal(persistent.kind === 'plain' && persistent.persistentXmlFrom, 'inactive', 'the persistent definition goes plain too, or it would not start there');
});

test('takeOption: both spellings, the rest in order', () => {
  assert.deepEqual(takeOption(['--a', '--xml', 'f', '--b'], '--xml'), { value: 'f', rest: ['--a', '--b'] });
  assert.deepEqual(takeOption(['--xml=g'], '--xml'), { value: 'g', rest: [] });
  assert.deepEqual(takeOption(['--persistent-xml', 'p'], '--xml'), { value: undefined, rest: ['--persistent-xml', 'p'] });
});
