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
      assert.match(e.oneLine(), /qemu\+ssh:\/\/b\/system cannot run .* and its policy is strict: vm not migrated, it keeps running here/);
      assert.match(e.remedy, /install virt-ebpf on the destination, or make vm's policy fallback \(`virt-ebpf enable vm --policy fallback` changes its definition; a running domain keeps its policy until it starts again\)/);
      return true;
    },
  );
});

test('running fallback, defined strict: --persistent would carry the strict definition there, so it is refused; without --persistent it goes', () => {
  const enabled = { policy: 'fallback' as const, wrapper: WRAPPER };
  assert.throws(
    () => planMigration({ ...base, enabled, definitionPolicy: 'strict', destHasWrapper: false, options: ['--live', '--persistent'] }),
    (e) => isVirtEbpfError(e) && e.code === 'MIGRATION_REFUSED' && /the policy of its definition \(which --persistent would take there\) is strict/.test(e.message),
  );
  assert.equal(planMigration({ ...base, enabled, definitionPolicy: 'strict', destHasWrapper: false }).kind, 'plain');
});

test('bad option lists: one line each', () => {
  const enabled = { policy: 'fallback' as const, wrapper: WRAPPER };
  assert.throws(() => planMigration({ ...base, enabled, destHasWrapper: false, options: ['--live', '--xml'] }), /migrate: --xml needs a file/);
  assert.throws(() => planMigration({ ...base, enabled, destHasWrapper: false, options: ['--persistent-xml', 'p.xml'] }), /migrate: --persistent-xml needs --persistent/);
});

test('fallback to a destination without virt-ebpf: the XML goes plain — the live one, or the one the user named', () => {
  const enabled = { policy: 'fallback' as const, wrapper: WRAPPER };
  assert.deepEqual(planMigration({ ...base, enabled, destHasWrapper: false }), {
    kind: 'plain',
    options: base.options,
    xml: { libvirt: 'live' },
    warning: `virt-ebpf: qemu+ssh://b/system cannot run ${WRAPPER} (virt-ebpf is not installed there): vm runs there without eBPF RSS (policy fallback), with the same devices`,
  });
  const mine = planMigration({ ...base, enabled, destHasWrapper: false, options: ['--live', '--xml', '/tmp/x.xml', '--persistent', '--persistent-xml=/tmp/p.xml'] });
  assert.equal(mine.kind, 'plain');
  assert.deepEqual(mine.kind === 'plain' && { options: mine.options, xml: mine.xml, persistentXml: mine.persistentXml }, {
    options: ['--live', '--persistent'],
    xml: { file: '/tmp/x.xml' },
    persistentXml: { file: '/tmp/p.xml' },
  });
  const persistent = planMigration({ ...base, enabled, destHasWrapper: false, options: ['--live', '--persistent'] });
  assert.deepEqual(persistent.kind === 'plain' && persistent.persistentXml, { libvirt: 'inactive' }, 'the persistent definition goes plain too, or it would not start there');
  // A file named like libvirt's sources is still a file.
  const named = planMigration({ ...base, enabled, destHasWrapper: false, options: ['--xml', 'live'] });
  assert.deepEqual(named.kind === 'plain' && named.xml, { file: 'live' });
});

test('takeOption: both spellings, the rest in order', () => {
  assert.deepEqual(takeOption(['--a', '--xml', 'f', '--b'], '--xml'), { value: 'f', rest: ['--a', '--b'] });
  assert.deepEqual(takeOption(['--xml=g'], '--xml'), { value: 'g', rest: [] });
  assert.deepEqual(takeOption(['--persistent-xml', 'p'], '--xml'), { value: undefined, rest: ['--persistent-xml', 'p'] });
});

test("withRssOn: rss='on' for the NICs the host policy gave rss (by MAC), a minimal edit; a NIC that says rss either way is left", async () => {
  const { withRssOn, interfacesOf } = await import('../../src/xml');
  const xml = `<domain type='qemu'>
  <name>vm</name>
  <devices>
    <interface type='ethernet'>
      <mac address='52:54:00:00:00:01'/>
      <model type='virtio'/>
      <driver queues='4'/>
    </interface>
    <interface type='ethernet'>
      <mac address='52:54:00:00:00:02'/>
      <model type='virtio'/>
    </interface>
    <interface type='ethernet'>
      <mac address='52:54:00:00:00:03'/>
      <model type='virtio'/>
      <driver queues='4' rss='off'/>
    </interface>
  </devices>
</domain>
`;
  const r = withRssOn(xml, new Set(['52:54:00:00:00:01', '52:54:00:00:00:02', '52:54:00:00:00:03']));
  assert.equal(
    r.xml,
    xml.replace("<driver queues='4'/>", "<driver queues='4' rss='on'/>").replace("<model type='virtio'/>\n    </interface>", "<model type='virtio'/>\n      <driver rss='on'/>\n    </interface>"),
  );
  assert.deepEqual(interfacesOf(r.xml).filter((i) => i.rss === 'on').map((i) => i.mac).sort(), ['52:54:00:00:00:01', '52:54:00:00:00:02']);
  assert.equal(withRssOn(xml, new Set()).xml, xml, 'no MAC: byte for byte');
});
