/**
 * Command line → RSS NICs, pure: a command line libvirt 11.3 produced for QEMU 10 (recorded from
 * a domain log on the CI machine kind, plus the `ebpf-rss-fds` our wrapper adds), key=value
 * forms, the helper protocol's string property, getfd names, and map roles by shape.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { assignRssMapRoles, looksLikeQemu, numericFds, parseNetdevs, parseQemuRssArgs } from '../../src/status';

// /var/log/libvirt/qemu/<domain>.log, libvirt 11.3.0 + QEMU 10.0.2, domain with one 4-queue RSS NIC
// behind virt-ebpf's wrapper; the wrapper then exec'd QEMU with the device's ebpf-rss-fds added.
export const LIBVIRT_ARGV = [
  '/usr/libexec/virt-ebpf/qemu-system-x86_64',
  '-name', 'guest=vebpf-manual,debug-threads=on',
  '-S',
  '-object', '{"qom-type":"secret","id":"masterKey0","format":"raw","file":"/var/lib/libvirt/qemu/domain-1-vebpf-manual/master-key.aes"}',
  '-machine', 'pc-q35-10.0,usb=off,dump-guest-core=off,memory-backend=pc.ram,acpi=off',
  '-accel', 'tcg',
  '-cpu', 'qemu64',
  '-m', 'size=131072k',
  '-object', '{"qom-type":"memory-backend-ram","id":"pc.ram","size":134217728}',
  '-overcommit', 'mem-lock=off',
  '-smp', '2,sockets=2,cores=1,threads=1',
  '-uuid', '7e43b05d-f9a6-4612-a5bc-0b6f29de939c',
  '-display', 'none',
  '-no-user-config',
  '-nodefaults',
  '-chardev', 'socket,id=charmonitor,fd=29,server=on,wait=off',
  '-mon', 'chardev=charmonitor,id=monitor,mode=control',
  '-rtc', 'base=utc',
  '-no-shutdown',
  '-boot', 'strict=on',
  '-device', '{"driver":"pcie-root-port","port":8,"chassis":1,"id":"pci.1","bus":"pcie.0","multifunction":true,"addr":"0x1"}',
  '-device', '{"driver":"pcie-root-port","port":9,"chassis":2,"id":"pci.2","bus":"pcie.0","addr":"0x1.0x1"}',
  '-device', '{"driver":"qemu-xhci","id":"usb","bus":"pci.2","addr":"0x0"}',
  '-netdev', '{"type":"tap","fds":"30:33:34:35","id":"hostnet0"}',
  '-device', '{"driver":"virtio-net-pci","mq":true,"vectors":10,"rss":true,"netdev":"hostnet0","id":"net0","mac":"52:54:00:8d:c8:3b","bus":"pci.1","addr":"0x0","ebpf-rss-fds":["40","41","42","43"]}',
  '-chardev', 'pty,id=charserial0',
  '-device', '{"driver":"isa-serial","chardev":"charserial0","id":"serial0","index":0}',
  '-audiodev', '{"id":"audio1","driver":"none"}',
  '-global', 'ICH9-LPC.noreboot=off',
  '-watchdog-action', 'reset',
  '-device', '{"driver":"virtio-balloon-pci","id":"balloon0","bus":"pci.3","addr":"0x0"}',
  '-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
  '-msg', 'timestamp=on',
];

test('libvirt command line: the domain, and its one RSS NIC with backend and eBPF fds', () => {
  const q = parseQemuRssArgs(LIBVIRT_ARGV);
  assert.deepEqual(q.domain, { name: 'vebpf-manual', uuid: '7e43b05d-f9a6-4612-a5bc-0b6f29de939c' });
  assert.equal(q.nics.length, 1);
  const [nic] = q.nics;
  assert.deepEqual(
    { ...nic, index: undefined },
    {
      index: undefined,
      driver: 'virtio-net-pci',
      id: 'net0',
      netdev: 'hostnet0',
      mac: '52:54:00:8d:c8:3b',
      rss: true,
      ebpfFds: { property: 'ebpf-rss-fds', entries: ['40', '41', '42', '43'] },
      backend: { id: 'hostnet0', type: 'tap', fds: [30, 33, 34, 35], queues: 4, vhost: false },
    },
  );
  assert.equal(LIBVIRT_ARGV[nic.index - 1], '-device');
  assert.deepEqual(numericFds(nic), [40, 41, 42, 43]);
});

test('the same NIC before the wrapper added fds: rss on, nothing named', () => {
  const argv = LIBVIRT_ARGV.map((a) => a.replace(',"ebpf-rss-fds":["40","41","42","43"]', ''));
  const [nic] = parseQemuRssArgs(argv).nics;
  assert.equal(nic.rss, true);
  assert.equal(nic.ebpfFds, undefined);
  assert.equal(numericFds(nic), undefined);
});

test('key=value devices and netdevs; NICs without rss and without fds are not RSS NICs', () => {
  const argv = [
    'qemu-system-x86_64',
    '-netdev', 'tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off,queues=4',
    '-device', 'virtio-net-pci,netdev=n0,mq=on,vectors=10,rss=on,id=net0,mac=52:54:00:00:00:01',
    '-netdev', 'tap,id=n1,fd=7,vhost=on',
    '-device', 'virtio-net-pci,netdev=n1,rss=off,id=net1',
    '-netdev', 'tap,id=n2,fds=8:9,vhostfds=10:11',
    '-device', 'virtio-net-pci,netdev=n2,id=net2,ebpf_rss_fds=20:21',
    '-device', 'e1000,netdev=n3,rss=on,id=e0',
    '-device', '{"driver":"virtio-net-pci","rss":"on","id":"net4","ebpf-rss-fds":["prog0","cfg0","key0","tab0"]}',
  ];
  const q = parseQemuRssArgs(argv);
  assert.deepEqual(q.nics.map((n) => [n.id, n.rss, n.ebpfFds?.property, n.backend?.queues, n.backend?.vhost, n.backend?.ifname]), [
    ['net0', true, undefined, 4, false, 'tap0'],
    ['net2', false, 'ebpf_rss_fds', 2, true, undefined],
    ['net4', true, 'ebpf-rss-fds', undefined, undefined, undefined],
  ]);
  assert.deepEqual(numericFds(q.nics[1]), [20, 21], 'the helper protocol string, split');
  assert.equal(numericFds(q.nics[2]), undefined, 'getfd names are not fd numbers');
  assert.deepEqual(parseNetdevs(argv).get('n1'), { id: 'n1', type: 'tap', fds: [7], queues: 1, vhost: true });
  assert.deepEqual(q.domain, {});
});

test('hash reporting and hash-* settings of each NIC; virtio-net NICs without RSS come apart as plain NICs', () => {
  const argv = [
    'qemu-system-x86_64',
    '-netdev', '{"type":"tap","fds":"30:31","id":"hostnet0"}',
    '-device', '{"driver":"virtio-net-pci","mq":true,"rss":true,"hash":true,"netdev":"hostnet0","id":"net0","mac":"52:54:00:00:00:01","hash-tcp6ex":"off","hash-ipv4":"auto"}',
    '-netdev', 'tap,id=n1,ifname=tap1,vhost=off',
    '-device', 'virtio-net-pci,netdev=n1,id=net1,mac=52:54:00:00:00:02,hash=off,hash-udp4=on',
    '-device', 'virtio-net-pci,netdev=n2,id=net2,rss=on',
    '-device', 'e1000,netdev=n3,id=e0',
  ];
  const q = parseQemuRssArgs(argv);
  assert.deepEqual(q.nics.map((n) => [n.id, n.hashReport, n.hashSettings]), [
    ['net0', true, { 'hash-ipv4': 'auto', 'hash-tcp6ex': 'off' }],
    ['net2', undefined, undefined],
  ]);
  assert.deepEqual(q.plainNics.map((n) => [n.id, n.rss, n.hashReport, n.hashSettings, n.backend?.ifname]), [['net1', false, false, { 'hash-udp4': 'on' }, 'tap1']]);
  assert.deepEqual(parseQemuRssArgs(LIBVIRT_ARGV).plainNics, [], "libvirt's argv has one virtio-net NIC, with rss");
});

test('a broken -device JSON does not throw: the process is reported with no NICs', () => {
  assert.deepEqual(parseQemuRssArgs(['qemu-system-x86_64', '-device', '{"driver":']).nics, []);
});

test('QEMU by argv[0] or executable, including a wrapper that keeps the name', () => {
  assert.equal(looksLikeQemu('/usr/libexec/virt-ebpf/qemu-system-x86_64'), true);
  assert.equal(looksLikeQemu('qemu-kvm'), true);
  assert.equal(looksLikeQemu('/usr/bin/node', '/usr/bin/qemu-system-aarch64'), true);
  assert.equal(looksLikeQemu('/usr/bin/node', '/usr/bin/node'), false);
  assert.equal(looksLikeQemu('qemu-img'), false);
});

test('map roles by shape, whatever the order; ambiguity and absence are explained', () => {
  const cfg = { id: 11, valueSize: 10, maxEntries: 1 };
  const key = { id: 12, valueSize: 40, maxEntries: 1 };
  const tab = { id: 13, valueSize: 2, maxEntries: 128 };
  assert.deepEqual(assignRssMapRoles([tab, key, cfg]), { ids: [11, 12, 13] });
  const missing = assignRssMapRoles([cfg, tab]);
  assert.ok('problem' in missing && /no map shaped like the RSS toeplitz key/.test(missing.problem), JSON.stringify(missing));
  const twice = assignRssMapRoles([cfg, key, tab, { ...tab, id: 14 }]);
  assert.ok('problem' in twice && /more than one map shaped like the RSS indirection table/.test(twice.problem), JSON.stringify(twice));
});
