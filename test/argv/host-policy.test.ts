/**
 * The host-wide policy on QEMU's devices (src/argv/host-policy.ts) and its hot-plug twin in
 * planDeviceAdd: rss on for multiqueue virtio-net devices that say nothing of rss, never for a
 * device that says rss either way (rss='off' in the XML is a NIC's opt-out), a single-queue one,
 * another driver, or with the policy off. Command lines as libvirt 11.3 writes them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { applyHostRss, planDeviceAdd } from '../../src/argv';

const dev = (o: Record<string, unknown>) => ['-device', JSON.stringify(o)];
const mq = { driver: 'virtio-net-pci', netdev: 'hostnet0', id: 'net0', mac: '52:54:00:00:00:01', mq: true, vectors: 10, bus: 'pci.1', addr: '0x0' };
const argv = [
  '/usr/bin/qemu-system-x86_64',
  '-name', 'guest=vm,debug-threads=on',
  '-netdev', '{"type":"tap","fds":"30:31:32:33","id":"hostnet0"}',
  ...dev(mq),
  ...dev({ ...mq, id: 'net1', netdev: 'hostnet1', mq: undefined, vectors: undefined }),
  ...dev({ ...mq, id: 'net2', netdev: 'hostnet2', rss: false }),
  ...dev({ ...mq, id: 'net3', netdev: 'hostnet3', rss: true }),
  ...dev({ driver: 'e1000', id: 'net4', netdev: 'hostnet4' }),
  '-device', 'virtio-net-pci,netdev=hostnet5,id=net5,mq=on',
];

test('multiqueue virtio-net devices silent on rss get rss on; every other device stays byte for byte', () => {
  const r = applyHostRss(argv, 'multiqueue');
  assert.deepEqual(r.added, ['net0']);
  assert.deepEqual(JSON.parse(r.argv[6]), { ...mq, rss: true });
  r.argv.forEach((a, i) => i !== 6 && assert.equal(a, argv[i], `argument ${i} unchanged`));
  assert.deepEqual(applyHostRss(argv, 'off'), { argv, added: [] }, 'policy off: nothing');
});

test('device_add: the host policy plans rss and fds for a multiqueue NIC, nothing for the rest', () => {
  const line = (o: Record<string, unknown>) => Buffer.from(JSON.stringify({ execute: 'device_add', arguments: o, id: 'libvirt-42' }));
  const p = planDeviceAdd(line(mq), 'multiqueue');
  assert.ok(p);
  assert.equal(p.addRss, true);
  assert.equal(line(mq).toString().slice(p.at - 1, p.at), '{', 'the fds (and rss) go just inside "arguments"');
  assert.equal(planDeviceAdd(line(mq), 'off'), null, 'policy off: a device that does not ask is left alone');
  assert.equal(planDeviceAdd(line({ ...mq, rss: false }), 'multiqueue'), null, "rss='off' opts out");
  assert.equal(planDeviceAdd(line({ ...mq, mq: undefined }), 'multiqueue'), null, 'single queue');
  const asked = planDeviceAdd(line({ ...mq, rss: true }), 'multiqueue');
  assert.equal(asked?.addRss, false, 'rss the domain asked for is planned as before, not added again');
});
