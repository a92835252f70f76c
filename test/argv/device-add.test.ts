/**
 * planDeviceAdd: which QMP lines the broker splices eBPF fds into, and at which byte. The splice
 * must land just inside `arguments` whatever the member order, spacing or escapes, and lines
 * QEMU would refuse anyway (duplicate keys, broken JSON) are left alone.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { planDeviceAdd } from '../../src/argv';

const rssNic = { driver: 'virtio-net-pci', rss: true, mq: true, netdev: 'hostnet1', id: 'net1' };

function splice(line: string, text = '"X":1,'): string | null {
  const b = Buffer.from(line);
  const p = planDeviceAdd(b);
  return p ? Buffer.concat([b.subarray(0, p.at), Buffer.from(text), b.subarray(p.at)]).toString() : null;
}

test('libvirt\'s form (id last, a number or a string): the splice opens the arguments object', () => {
  for (const id of [7, 'libvirt-42']) {
    const line = JSON.stringify({ execute: 'device_add', arguments: rssNic, id }) + '\r\n';
    const out = splice(line)!;
    assert.deepEqual(JSON.parse(out), { execute: 'device_add', arguments: { X: 1, ...rssNic }, id });
  }
});

test('member order, whitespace, UTF-8 before the arguments and escaped keys do not move the splice off', () => {
  const line = '{ "id" : "ünï-\\"q" ,\n "arguments" :  {"driver":"virtio-net-pci","rss":"on","netdev":"h","x":[1,{"y":"}"}]}, "exe\\u0063ute":"device_add"}\n';
  const out = splice(line)!;
  const parsed = JSON.parse(out);
  assert.equal(parsed.arguments.X, 1);
  assert.equal(parsed.arguments.driver, 'virtio-net-pci');
  assert.equal(parsed.id, 'ünï-"q');
  assert.equal(planDeviceAdd(Buffer.from(line))!.id, undefined, 'the device has no id');
});

test('only a virtio-net device with rss on and no eBPF fds of its own', () => {
  const not = [
    { ...rssNic, rss: false },
    { ...rssNic, rss: 'off' },
    { ...rssNic, driver: 'e1000' },
    { ...rssNic, 'ebpf-rss-fds': ['a', 'b', 'c', 'd'] },
    { ...rssNic, ebpf_rss_fds: '1:2' },
    { driver: 'virtio-net-pci', netdev: 'h' },
  ];
  for (const a of not) assert.equal(planDeviceAdd(Buffer.from(JSON.stringify({ execute: 'device_add', arguments: a }))), null, JSON.stringify(a));
  for (const driver of ['virtio-net', 'virtio-net-pci-non-transitional', 'virtio-net-device', 'virtio-net-ccw']) {
    assert.notEqual(planDeviceAdd(Buffer.from(JSON.stringify({ execute: 'device_add', arguments: { ...rssNic, driver } }))), null, driver);
  }
});

test('lines QEMU refuses itself, and other commands, are not planned', () => {
  const lines = [
    '{"execute":"device_add","arguments":{"driver":"virtio-net-pci","rss":true,"rss":true}}',
    '{"execute":"device_add","execute":"device_add","arguments":{"driver":"virtio-net-pci","rss":true}}',
    '{"execute":"device_add","arguments":{"driver":"virtio-net-pci","rss":true}',
    '{"execute":"device_add","arguments":["driver"]}',
    '{"execute":"device_del","arguments":{"driver":"virtio-net-pci","rss":true}}',
    '{"execute":"qmp_capabilities"}',
    '[1,2]',
    '',
    '\u0000\u00ff{{{{',
  ];
  for (const l of lines) assert.equal(planDeviceAdd(Buffer.from(l)), null, l);
});
