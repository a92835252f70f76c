/**
 * Hot-plug under stock libvirt, end to end on the real things: the REAL `virt-ebpf install`,
 * the installed broker, the guest fixture as a libvirt domain enabled with `virt-ebpf enable`
 * (hot-plug is on by default), and `virsh attach-device --live` / `detach-device --live` of
 * virtio NICs. The wrapper has loaded the hot-plug shim into QEMU; these tests check what a
 * user sees:
 *   - attach 1, then 3 RSS NICs: each holds its own program and 3 maps in QEMU, the guest
 *     brings them up and sets RSS, and `virt-ebpf status` shows them with the guest's table;
 *   - detach: the NIC's fds are gone from QEMU; a NIC without RSS is untouched;
 *   - broker down: strict refuses the attach with our message, the VM keeps running;
 *     fallback attaches without eBPF;
 *   - kill -9 of the broker, and a libvirtd restart: libvirt stays connected, the VM keeps
 *     running, hot-plug keeps working.
 * Domains are vebpf-hp-<pid>-…; destroyed, undefined and their files removed in after().
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { isDeepStrictEqual } from 'node:util';
import { execFileSync, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ensureFixture, parseEthtoolRss, startLibvirtGuest, type GuestFixture, type LibvirtGuest } from '../support/guest';
import { libvirtQemuAccount } from '../../src/broker/config';
import { lookupUser } from '../../src/sys/users';
import { readManifest } from '../../src/install/manifest';
import { DEFAULT_PATHS } from '../../src/install/plan';
import type { StatusReport } from '../../src/status';
import { needRoot, tempDir } from '../harness';
import { BrokerChild, installForReal, tearDownInstalled } from '../coldstart/fixture';
import { bpfFds, cmdline, procStatus, run, waitFor } from '../coldstart/libvirt';
import { cli } from '../status/qemu';
import { alive, bpfFdsOf, shimMemoryKiB } from '../hotplug-shim/support';
import { mapsShowShim } from '../../src/doctor/hotplug-shim';
import { libvirtdReachable } from '../libvirt/fixture';

const PREFIX = `vebpf-hp-${process.pid}-`;
const URI = 'qemu:///system';
const broker = new BrokerChild();
const scratch = tempDir('virt-ebpf-hotplug-');
let fixture: GuestFixture;
let guest: LibvirtGuest;
let fallback: LibvirtGuest | undefined;
let installedBefore = false;
let qemuUid: number;
let macSerial = 0x10;

before(async () => {
  needRoot('installs into system paths, runs the broker, starts domains in the system libvirtd, restarts libvirtd');
  libvirtdReachable();
  qemuUid = lookupUser(libvirtQemuAccount().user).uid;
  fixture = await ensureFixture();
  installedBefore = Boolean(readManifest(DEFAULT_PATHS.manifest));
  installForReal();
  await broker.start();
  guest = await startLibvirtGuest({
    name: PREFIX + 'main',
    fixture,
    nics: [{ queues: 2 }],
    vcpus: 2,
    hotplugSlots: 10,
    script: ['@channels vebpf_maxq eth0'],
  });
  console.log(`# virsh start to READY ${guest.bootMs} ms`);
});

after(async () => {
  await tearDownInstalled({ domains: [fallback, guest], broker, installedBefore });
  scratch.remove();
});

function nicXml(opts: { rss: boolean; queues?: number }): { file: string; mac: string } {
  const mac = `52:54:00:be:0f:${(macSerial++).toString(16).padStart(2, '0')}`;
  const file = join(scratch.path, `nic-${mac.replace(/:/g, '')}.xml`);
  writeFileSync(
    file,
    `<interface type='ethernet'>\n  <mac address='${mac}'/>\n  <model type='virtio'/>\n  <driver queues='${opts.queues ?? 2}'${opts.rss ? " rss='on'" : ''}/>\n</interface>\n`,
  );
  return { file, mac };
}

function virsh(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  return run('virsh', ['-c', URI, ...args], { timeoutMs: 120_000 });
}

function attach(name: string, file: string): { status: number | null; stdout: string; stderr: string } {
  return virsh('attach-device', name, file, '--live');
}

/** libvirt still talks to QEMU: a QMP command through libvirt's own monitor connection. */
function libvirtTalks(name: string): string {
  const r = virsh('qemu-monitor-command', name, '{"execute":"query-status"}');
  assert.equal(r.status, 0, `libvirt lost QEMU's monitor: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { return: { status: string } }).return.status;
}

async function statusOf(name: string): Promise<StatusReport['domains'][number]> {
  const r = await cli(['status', name, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout) as StatusReport;
  assert.equal(report.domains.length, 1);
  return report.domains[0];
}

/** QEMU's children: the shim starts no process. */
function childrenOf(pid: number): number[] {
  return readdirSync('/proc').filter((e) => /^\d+$/.test(e)).filter((e) => {
    try {
      return Number(readFileSync(`/proc/${e}/stat`, 'utf8').replace(/^.*\) /, '').split(' ')[1]) === pid;
    } catch {
      return false;
    }
  }).map(Number);
}

test('the wrapper loaded the hot-plug shim into QEMU: libvirt\'s own monitor socket, no extra process, libvirt talks to QEMU', async () => {
  assert.ok(mapsShowShim(readFileSync(`/proc/${guest.pid}/maps`, 'utf8')), 'the shim is mapped into QEMU');
  assert.equal(procStatus(guest.pid).uid, qemuUid, 'QEMU runs as the QEMU account');
  const argv = cmdline(guest.pid);
  const mon = argv[argv.findIndex((a) => a.includes('id=charmonitor'))];
  assert.match(mon, /^socket,id=charmonitor,fd=\d+,server=on,wait=off$/, 'QEMU listens on libvirt\'s socket, as libvirt asked');
  assert.deepEqual(childrenOf(guest.pid), [], 'no helper process');
  assert.equal(libvirtTalks(guest.name), 'running');
  assert.deepEqual(bpfFdsOf(guest.pid), { progs: 1, maps: 3 }, 'the cold-plugged NIC');
  const mem = shimMemoryKiB(guest.pid);
  console.log(`# hot-plug shim memory in QEMU: RSS ${mem.rss} KiB, PSS ${mem.pss} KiB`);
});

const hotplugged: Array<{ file: string; mac: string }> = [];

test('attach 1, then 3 RSS NICs live: each holds its own program and 3 maps; the guest brings them up; status shows them with the guest\'s table', async () => {
  for (const count of [1, 3]) {
    for (let i = 0; i < count; i++) {
      const nic = nicXml({ rss: true });
      const r = attach(guest.name, nic.file);
      assert.equal(r.status, 0, `attach-device failed: ${r.stderr}\n${guest.logTail(10)}`);
      hotplugged.push(nic);
      const n = 1 + hotplugged.length;
      assert.deepEqual(bpfFdsOf(guest.pid), { progs: n, maps: 3 * n }, `${n} RSS NICs: 4 fds each`);
    }
  }
  assert.match(guest.logTail(40), /device_add net\d+: eBPF RSS fds \d+,\d+,\d+,\d+ /);
  // Programs and maps are all distinct objects (a context is never shared).
  const ids = bpfFds(guest.pid).map((f) => `${f.kind}:${f.id}`);
  assert.equal(new Set(ids).size, ids.length);

  const ifaces = [];
  for (const nic of hotplugged) ifaces.push(await guest.console.interfaceWithMac(nic.mac));
  const dev = ifaces[0];
  await guest.console.run(`ip link set ${dev} up`);
  await guest.console.run(`ethtool -L ${dev} combined 2`);
  // Not `equal 2`: that is the default table of a 2-queue NIC, which a guest may commit itself.
  await guest.console.run(`ethtool -X ${dev} weight 3 1`);
  const want = parseEthtoolRss((await guest.console.run(`ethtool -x ${dev}`)).output);
  const d = await statusOf(guest.name);
  const hot = d.nics.filter((n) => n.origin === 'unnamed-program');
  assert.equal(hot.length, 4, `status shows the 4 hot-plugged NICs: ${JSON.stringify(d.nics.map((n) => n.origin))}`);
  for (const n of hot) assert.ok(n.ebpf && n.ebpf.progId > 0, 'each with its live program');
  // Exactly one NIC holds the table the guest set on ${dev}. The others hold nothing yet
  // (Debian 12's 6.1 virtio_net commits RSS only on `ethtool -X`) or the guest driver's
  // default, which a kernel with "virtio_net: Sync rss config to device when virtnet_probe"
  // (Debian 13's 6.12) commits when it probes a NIC: `equal 2` over the NIC's 2 queues.
  const summaries = hot.map((n) => n.summary).join(' | ');
  const configured = hot.filter((n) => n.state === 'active' && isDeepStrictEqual(n.rss!.table, want.table));
  assert.equal(configured.length, 1, `the one the guest configured shows its table: ${summaries}`);
  assert.equal(configured[0].rss!.key, want.key, 'status reads exactly the key the guest set');
  for (const n of hot.filter((h) => h !== configured[0])) {
    assert.ok(n.state === 'unconfigured' || (n.state === 'active' && n.rss!.table.every((q, i) => q === i % 2)), `a NIC the test left alone: ${n.summary}`);
  }
});

test('detach-device: the NIC\'s program and maps are gone from QEMU, and libvirt drops the NIC', async () => {
  const before = bpfFdsOf(guest.pid);
  const nic = hotplugged.pop()!;
  const r = virsh('detach-device', guest.name, nic.file, '--live');
  assert.equal(r.status, 0, r.stderr);
  await waitFor('QEMU to drop the detached NIC\'s eBPF fds', 90_000, () => {
    const now = bpfFdsOf(guest.pid);
    return now.progs === before.progs - 1 && now.maps === before.maps - 3;
  });
  const list = virsh('domiflist', guest.name).stdout;
  assert.ok(!list.includes(nic.mac), 'libvirt removed it too');
});

test('attaching a NIC without RSS is untouched: no eBPF fds, no ebpf-rss-fds', async () => {
  const before = bpfFdsOf(guest.pid);
  const nic = nicXml({ rss: false });
  const r = attach(guest.name, nic.file);
  assert.equal(r.status, 0, r.stderr);
  assert.ok(virsh('domiflist', guest.name).stdout.includes(nic.mac));
  assert.deepEqual(bpfFdsOf(guest.pid), before);
});

test('broker down, strict: attach-device fails with our message, the VM keeps running and libvirt keeps talking to it', async () => {
  await broker.stop();
  try {
    const before = bpfFdsOf(guest.pid);
    const nic = nicXml({ rss: true });
    const r = attach(guest.name, nic.file);
    assert.notEqual(r.status, 0, 'the attach must fail under strict');
    assert.match(r.stderr, /virt-ebpf: cannot reach the virt-ebpf broker .*BROKER_UNREACHABLE/);
    assert.equal(libvirtTalks(guest.name), 'running');
    assert.ok(!virsh('domiflist', guest.name).stdout.includes(nic.mac), 'libvirt rolled the NIC back');
    assert.deepEqual(bpfFdsOf(guest.pid), before);
    assert.match((await guest.console.run('echo still-here')).output, /still-here/, 'the guest runs');
  } finally {
    await broker.start();
  }
});

test('kill -9 of the broker: libvirt stays connected, the VM runs, hot-plug works once the broker is back', async () => {
  await broker.crash();
  assert.equal(libvirtTalks(guest.name), 'running');
  await broker.start();
  const before = bpfFdsOf(guest.pid);
  const nic = nicXml({ rss: true });
  const r = attach(guest.name, nic.file);
  assert.equal(r.status, 0, r.stderr);
  hotplugged.push(nic);
  assert.deepEqual(bpfFdsOf(guest.pid), { progs: before.progs + 1, maps: before.maps + 3 });
  assert.ok(alive(guest.pid));
  assert.match((await guest.console.run('echo still-here')).output, /still-here/);
});

test('libvirtd restarts: it reconnects to QEMU\'s monitor, the VM keeps running, hot-plug keeps working on the new connection', async () => {
  const pidOf = (): number[] => spawnSync('pidof', ['libvirtd'], { encoding: 'utf8' }).stdout.trim().split(/\s+/).filter(Boolean).map(Number);
  const old = pidOf();
  assert.ok(old.length > 0, 'libvirtd runs');
  for (const pid of old) process.kill(pid, 'SIGTERM');
  await waitFor('libvirtd to exit', 30_000, () => pidOf().length === 0);
  execFileSync('libvirtd', ['-d']);
  await waitFor('libvirtd to answer', 30_000, () => virsh('list').status === 0);
  await waitFor(`libvirt to see ${guest.name} running again`, 30_000, () => virsh('domstate', guest.name).stdout.trim() === 'running');
  assert.equal(libvirtTalks(guest.name), 'running');
  assert.match(guest.logTail(20), /libvirt connected to the monitor again/);
  const before = bpfFdsOf(guest.pid);
  const nic = nicXml({ rss: true });
  const r = attach(guest.name, nic.file);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(bpfFdsOf(guest.pid), { progs: before.progs + 1, maps: before.maps + 3 });
  assert.match((await guest.console.run('echo still-here')).output, /still-here/);
});

test('fallback policy, broker down: attach-device succeeds without eBPF and the domain log says why', async () => {
  fallback = await startLibvirtGuest({
    name: PREFIX + 'fallback',
    fixture,
    nics: [{ queues: 2, rss: false }],
    vcpus: 2,
    hotplugSlots: 3,
    enable: { policy: 'fallback' },
    readyTimeoutMs: 0,
  });
  await broker.stop();
  try {
    const nic = nicXml({ rss: true });
    const r = attach(fallback.name, nic.file);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(virsh('domiflist', fallback.name).stdout.includes(nic.mac));
    assert.deepEqual(bpfFdsOf(fallback.pid), { progs: 0, maps: 0 });
    assert.match(fallback.logTail(20), /policy is fallback: net\d+ is added without eBPF RSS steering/);
  } finally {
    await broker.start();
  }
});
