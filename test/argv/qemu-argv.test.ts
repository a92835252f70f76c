import { test } from 'node:test';
import assert from 'node:assert/strict';
import { deviceArgs, domainIdentity, findRssDevices, keyvalToJson, namedFds, parseKeyVal, serializeKeyVal, withFds } from '../../src/argv';
import { isVirtEbpfError } from '../../src/errors';

// The shape libvirt 11.3 gives QEMU 10 (JSON -device/-netdev, fds by number).
const LIBVIRT_ARGV = [
  '/usr/bin/qemu-system-x86_64',
  '-name', 'guest=vm1,debug-threads=on',
  '-S',
  '-uuid', '0b3f1c7e-2d6e-4e0b-9d9f-6c1f2a8e7a11',
  '-chardev', 'socket,id=charmonitor,fd=25,server=on,wait=off',
  '-mon', 'chardev=charmonitor,id=monitor,mode=control',
  '-netdev', '{"type":"tap","fds":"27:28:29:30","vhost":false,"id":"hostnet0"}',
  '-device', '{"driver":"virtio-net-pci","mq":true,"vectors":10,"rss":true,"netdev":"hostnet0","id":"net0","mac":"52:54:00:12:34:56","bus":"pci.1","addr":"0x0"}',
  '-netdev', '{"type":"tap","fd":"31","id":"hostnet1"}',
  '-device', '{"driver":"e1000","netdev":"hostnet1","id":"net1","mac":"52:54:00:12:34:57"}',
  '-netdev', '{"type":"tap","fds":"32:33","vhostfds":"34:35","id":"hostnet2"}',
  '-device', '{"driver":"virtio-net-pci","mq":true,"netdev":"hostnet2","id":"net2"}',
  '-add-fd', 'set=0,fd=40,opaque=x',
  '-append', 'console=ttyS0 fd=99',
];

test('finds only virtio-net devices with rss on, in order', () => {
  const found = findRssDevices(LIBVIRT_ARGV);
  assert.deepEqual(found.map((d) => [d.id, d.netdev, d.form, d.hasFds]), [['net0', 'hostnet0', 'json', false]]);
  assert.equal(deviceArgs(LIBVIRT_ARGV).length, 3);
});

test('names every fd libvirt passes by number, and nothing from -append', () => {
  assert.deepEqual(namedFds(LIBVIRT_ARGV), [25, 27, 28, 29, 30, 31, 32, 33, 34, 35, 40]);
  assert.deepEqual(namedFds(['-incoming', 'fd:7', '-netdev', 'tap,id=n,fd=8,vhostfd=9']), [7, 8, 9]);
});

test('names the fds a user set in either RSS property, and an af-xdp netdev\'s sock-fds: they stay open', () => {
  const argv = [
    '-device', 'virtio-net-pci,rss=on,ebpf_rss_fds=11:12:13:14',
    '-device', '{"driver":"virtio-net-pci","rss":true,"ebpf-rss-fds":["21","22","23","24"]}',
    '-netdev', 'af-xdp,id=x,ifname=eth0,sock-fds=31:32',
  ];
  assert.deepEqual(namedFds(argv), [11, 12, 13, 14, 21, 22, 23, 24, 31, 32]);
});

test('adds ebpf-rss-fds as a list of strings to a JSON device and leaves everything else byte-identical', () => {
  const [dev] = findRssDevices(LIBVIRT_ARGV);
  const out = withFds(LIBVIRT_ARGV, [{ device: dev, fds: [50, 51, 52, 53], prop: { name: 'ebpf-rss-fds', type: 'list' } }]);
  assert.equal(out.length, LIBVIRT_ARGV.length);
  out.forEach((a, i) => {
    if (i !== dev.index) assert.equal(a, LIBVIRT_ARGV[i]);
  });
  const json = JSON.parse(out[dev.index]);
  assert.deepEqual(json['ebpf-rss-fds'], ['50', '51', '52', '53']);
  assert.equal(json.mac, '52:54:00:12:34:56');
  assert.equal(json.rss, true);
});

test('helper protocol: ebpf_rss_fds is one colon-separated string, key=value form kept', () => {
  const argv = ['-device', 'virtio-net-pci,netdev=n0,mq=on,rss=on,id=net0'];
  const [dev] = findRssDevices(argv);
  const out = withFds(argv, [{ device: dev, fds: [27, 28], prop: { name: 'ebpf_rss_fds', type: 'string' } }]);
  assert.equal(out[1], 'virtio-net-pci,netdev=n0,mq=on,rss=on,id=net0,ebpf_rss_fds=27:28');
});

test('key=value device converted to typed JSON for the list property', () => {
  const argv = ['-device', 'virtio-net-pci,netdev=n0,mq=on,rss=yes,vectors=10,id=net0,addr=0x3'];
  const types = { mq: 'bool', rss: 'bool', vectors: 'uint32', netdev: 'netdev', addr: 'int32' };
  const [dev] = findRssDevices(argv);
  const out = withFds(argv, [{ device: dev, fds: [5, 6, 7, 8], prop: { name: 'ebpf-rss-fds', type: 'list' } }], types);
  assert.deepEqual(JSON.parse(out[1]), {
    driver: 'virtio-net-pci', netdev: 'n0', mq: true, rss: true, vectors: 10, id: 'net0', addr: '0x3', 'ebpf-rss-fds': ['5', '6', '7', '8'],
  });
});

test('rss spellings: on/yes/true/y and JSON true count, off/absent do not; user-given fds flagged', () => {
  const argv = [
    '-device', 'virtio-net-pci,rss=y,id=a',
    '-device', 'virtio-net-pci,rss=off,id=b',
    '-device', 'virtio-net-pci,id=c',
    '-device', '{"driver":"virtio-net-pci","rss":"on","id":"d"}',
    '-device', '{"driver":"virtio-net-pci","rss":true,"id":"e","ebpf-rss-fds":["1","2","3","4"]}',
    '-device', 'virtio-blk-pci,rss=on,id=f',
    '--device', 'virtio-net-device,rss=true,id=g',
  ];
  assert.deepEqual(findRssDevices(argv).map((d) => `${d.id}:${d.hasFds}`), ['a:false', 'd:false', 'e:true', 'g:false']);
});

test('bad -device JSON and bad booleans give one-line ARGV_INVALID errors', () => {
  assert.throws(() => findRssDevices(['-device', '{"driver":']), (e) => isVirtEbpfError(e, 'ARGV_INVALID') && /not valid JSON/.test(e.message));
  assert.throws(() => findRssDevices(['-device', '{"rss":true}']), (e) => isVirtEbpfError(e, 'ARGV_INVALID'));
  assert.throws(() => keyvalToJson([['mq', 'maybe']], { mq: 'bool' }), (e) => isVirtEbpfError(e, 'ARGV_INVALID') && /mq=on/.test(e.remedy));
});

test('keyval: ",," escapes a comma and round-trips', () => {
  const kv = parseKeyVal('virtio-net-pci,id=a,,b,romfile=', 'driver');
  assert.deepEqual(kv, [['driver', 'virtio-net-pci'], ['id', 'a,b'], ['romfile', '']]);
  assert.equal(serializeKeyVal(kv, 'driver'), 'virtio-net-pci,id=a,,b,romfile=');
});

test('domain identity from -name guest= and -uuid', () => {
  assert.deepEqual(domainIdentity(LIBVIRT_ARGV), { name: 'vm1', uuid: '0b3f1c7e-2d6e-4e0b-9d9f-6c1f2a8e7a11' });
  assert.deepEqual(domainIdentity(['-name', 'plain']), { name: 'plain', uuid: undefined });
});
