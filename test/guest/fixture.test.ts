/**
 * The guest fixture end to end: build (cached), boot a Debian kernel under QEMU TCG with a
 * 4-queue virtio-net NIC (rss=on) on a real multiqueue tap, let the guest turn RSS on with
 * ethtool, read back what it set, drive it interactively, send it traffic and power it off.
 * QEMU runs as root here and loads its own eBPF steering program (no ebpf-rss-fds).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { existsSync, statSync } from 'node:fs';
import { bootGuest, DEFAULT_SCRIPT, ensureFixture, parseEthtoolChannels, parseEthtoolRss, parseEthtoolStats, type BootedGuest, type GuestFixture } from '../support/guest';
import { ip } from '../support/guest/tap';
import { spreadPorts } from '../libvirt-guest/flows';
import { isVirtEbpfError } from '../../src/errors';
import { needRoot, QEMU, watchFds } from '../harness';
import { HASH_TYPES_LINUX_DEFAULT, rssHashInput, toeplitz } from '../../src/rss';

const HOST_IP = '10.199.77.1';
const GUEST_IP = '10.199.77.2';

let fixture: GuestFixture;
let guest: BootedGuest;
let checkFds: () => void;

before(async () => {
  needRoot('creates a tap and boots QEMU');
  checkFds = watchFds();
  const t0 = performance.now();
  fixture = await ensureFixture();
  const buildMs = Math.round(performance.now() - t0);
  guest = await bootGuest({ fixture, qemu: QEMU, ip: `${GUEST_IP}/30`, tap: { hostIp: `${HOST_IP}/30` } });
  console.log(
    `# guest fixture: kernel ${fixture.manifest.kernelRelease}, initrd ${statSync(fixture.initrd).size} B, ` +
      `build/check ${buildMs} ms, boot to READY ${guest.bootMs} ms (TCG)`,
  );
});

after(async () => {
  await guest?.close();
});

test('manifest names the kernel and every module it packed, in load order', () => {
  const m = fixture.manifest;
  assert.match(m.kernelRelease, /^\d+\.\d+\.\d+(-\d+|\+deb\d+)-amd64$/, 'a Debian kernel release: 6.1.0-57-amd64 (Debian 12), 6.12.117+deb13-amd64 (Debian 13)');
  assert.equal(m.packages[m.kernelPackage] !== undefined, true);
  assert.deepEqual(
    [...m.modules, ...m.builtinModules].sort(),
    ['failover', 'net_failover', 'virtio', 'virtio_net', 'virtio_pci', 'virtio_pci_legacy_dev', 'virtio_pci_modern_dev', 'virtio_ring'],
  );
  assert.equal(m.initrdBytes, statSync(fixture.initrd).size);
});

test('boot block: modules loaded, eth0 up with the address from the command line', async () => {
  const boot = await guest.console.block('boot');
  assert.equal(boot.rc, 0, boot.output);
  assert.doesNotMatch(boot.output, /insmod .* failed/);
  assert.match(boot.output, new RegExp(`eth0: <[^>]*\\bUP\\b[^>]*>.*link/ether ${guest.mac}`));
  assert.match(boot.output, new RegExp(`inet ${GUEST_IP.replace(/\./g, '\\.')}/30`));
});

test('default script ran in order, every step succeeded', () => {
  const labels = DEFAULT_SCRIPT.map((l) => l.slice(1).split(' ')[0]);
  const blocks = guest.console.blocks.filter((b) => labels.includes(b.label));
  assert.deepEqual(blocks.map((b) => b.label), labels);
  for (const b of blocks) assert.equal(b.rc, 0, `${b.label}: ${b.output}`);
});

test('all 4 queue pairs are in use, in the guest and on the tap after RSS was set', async () => {
  const ch = parseEthtoolChannels((await guest.console.block('channels')).output);
  assert.deepEqual(ch, { max: { combined: 4 }, current: { combined: 4 } });
  // QEMU takes the pair count from the guest's RSS command; a stale count detaches tap queues.
  await guest.console.block('show-weight');
  assert.match(await ip(['-d', 'link', 'show', guest.tap]), /multi_queue numqueues 4 numdisabled 0/);
});

test('ethtool -X equal 2: the device table alternates 0,1 over all its entries, Toeplitz key reported', async () => {
  const rss = parseEthtoolRss((await guest.console.block('show-equal')).output);
  assert.equal(rss.iface, 'eth0');
  assert.equal(rss.rings, 4);
  assert.equal(rss.size, 128, 'QEMU virtio-net offers a 128-entry indirection table');
  assert.deepEqual(rss.table, Array.from({ length: 128 }, (_, i) => i % 2));
  assert.match(rss.key ?? '', /^[0-9a-f]{80}$/, 'a 40-byte key');
  assert.notEqual(rss.key, '0'.repeat(80));
  assert.equal(rss.hashFunc, 'toeplitz');
});

test('ethtool -X weight 3 1: three quarters of the table to queue 0, one to queue 1, same key', async () => {
  const equal = parseEthtoolRss((await guest.console.block('show-equal')).output);
  const rss = parseEthtoolRss((await guest.console.block('show-weight')).output);
  assert.equal(rss.size, 128);
  assert.equal(rss.table.filter((q) => q === 0).length, 96);
  assert.equal(rss.table.filter((q) => q === 1).length, 32);
  assert.equal(rss.key, equal.key);
});

test('interactive console: labels, exit codes, output without trailing newline, functions of init', async () => {
  const hello = await guest.console.run('printf "a b\\nno-newline"');
  assert.equal(hello.output, 'a b\nno-newline');
  assert.match(hello.label, /^h\d+$/);
  const failing = await guest.console.run('echo oops >&2; exit 3', { allowFailure: true, label: 'fail-3' });
  assert.deepEqual([failing.label, failing.rc, failing.output], ['fail-3', 3, 'oops']);
  await assert.rejects(guest.console.run('false'), (e) => isVirtEbpfError(e, 'GUEST_COMMAND'));
  const ch = await guest.console.run('vebpf_maxq eth0');
  assert.equal(parseEthtoolChannels(ch.output).current.combined, 4);
  // The guest is still the same shell afterwards: an `exit` in a command does not end init.
  assert.equal((await guest.console.run('echo alive')).output, 'alive');
});

test('UDP flows from the host land exactly on the queues a reference Toeplitz hash predicts', async () => {
  const rss = parseEthtoolRss((await guest.console.block('show-weight')).output);
  const key = Buffer.from(rss.key ?? '', 'hex');
  await ip(['neigh', 'replace', GUEST_IP, 'lladdr', guest.mac, 'dev', guest.tap, 'nud', 'permanent']);
  const before = parseEthtoolStats((await guest.console.run('ethtool -S eth0')).output).rxPackets;
  const expected = [0, 0, 0, 0];
  const sockets = 8;
  const portsPerSocket = 25;
  const dports = spreadPorts(portsPerSocket);
  for (let s = 0; s < sockets; s++) {
    const sock = createSocket('udp4');
    try {
      await new Promise<void>((resolve, reject) => sock.bind({ address: HOST_IP, port: 0 }, resolve).once('error', reject));
      const sport = sock.address().port;
      for (let p = 0; p < portsPerSocket; p++) {
        const dport = dports[p];
        expected[rss.table[toeplitz(key, rssHashInput({ family: 4, proto: 'udp', src: HOST_IP, dst: GUEST_IP, sport, dport }, HASH_TYPES_LINUX_DEFAULT)!.input) % rss.size]]++;
        await new Promise<void>((resolve, reject) => sock.send(Buffer.from('flow'), dport, GUEST_IP, (e) => (e ? reject(e) : resolve())));
      }
    } finally {
      await new Promise<void>((resolve) => sock.close(() => resolve()));
    }
  }
  const flows = sockets * portsPerSocket;
  let delta: number[] = [];
  const deadline = Date.now() + 20_000;
  do {
    const now = parseEthtoolStats((await guest.console.run('ethtool -S eth0')).output).rxPackets;
    delta = now.map((n, q) => n - (before[q] ?? 0));
  } while (delta.reduce((a, b) => a + b, 0) < flows && Date.now() < deadline);
  console.log(`# rx per queue for ${flows} flows: got ${delta.join(' ')}, predicted ${expected.join(' ')}`);
  assert.equal(delta.length, 4);
  assert.ok(expected[0] > 0 && expected[1] > 0 && expected[0] + expected[1] === flows, `the 3:1 table splits these flows: ${expected}`);
  // Queue 1 gets exactly our flows. Queue 0 is also the guest's unclassified queue: the ARP
  // reply it may need for its ICMP answers lands there too.
  assert.equal(delta[1], expected[1], `queue 1: ${delta} vs ${expected}`);
  assert.ok(delta[0] >= expected[0] && delta[0] <= expected[0] + 3, `queue 0: ${delta} vs ${expected}`);
  assert.deepEqual([delta[2], delta[3]], [0, 0], 'queues 2 and 3 are not in the table');
});

test('poweroff -f ends QEMU cleanly; the tap is deleted and no fd leaks', async () => {
  const tap = guest.tap;
  const status = await guest.poweroff(30_000);
  assert.deepEqual(status, { code: 0, signal: null });
  assert.equal(existsSync(`/sys/class/net/${tap}`), false);
  await assert.rejects(guest.console.run('echo late'), (e) => isVirtEbpfError(e, 'GUEST_BOOT'));
  checkFds();
});

test('one-shot mode: a custom script from the command line, then power-off without a console', async () => {
  const t0 = performance.now();
  const g = await bootGuest({
    fixture,
    qemu: QEMU,
    queues: 2,
    script: ['@one ethtool -X eth0 equal 2', '@two ethtool -x eth0', "echo 'quotes \"and\" $dollar = fine'"],
    then: 'poweroff',
  });
  try {
    assert.deepEqual(await g.exited, { code: 0, signal: null });
    const [one, two, three] = g.console.blocks.slice(-3);
    assert.deepEqual([one.label, one.rc, two.label, three.label], ['one', 0, 'two', 's3']);
    const rss = parseEthtoolRss(two.output);
    assert.equal(rss.rings, 2);
    assert.deepEqual(rss.table, Array.from({ length: 128 }, (_, i) => i % 2));
    assert.equal(three.output, 'quotes "and" $dollar = fine', 'the script reached the shell byte for byte');
    assert.equal(g.console.blocks.some((b) => b.label === 'show-equal'), false, 'the default script did not run');
  } finally {
    await g.close();
  }
  console.log(`# one-shot boot+script+poweroff: ${Math.round(performance.now() - t0)} ms`);
  checkFds();
});
