/**
 * Seeing and proving steering under libvirt, end to end on the real things: the REAL
 * `virt-ebpf install`, the installed broker as a child (test/coldstart's fixture), the guest
 * fixture as a libvirt domain enabled with `virt-ebpf enable` and started by libvirtd as its
 * unprivileged user through our wrapper, on a tap libvirt created. Then, with the real CLI:
 *   - `status NAME --json` shows exactly the table and key the guest's `ethtool -x` prints
 *     (equal 2, weight 3 1, equal 4), tied to the very fds libvirt's QEMU holds;
 *   - `verify NAME` agrees with the reference on 256/256 flows;
 *   - UDP flows from the host into the libvirt tap land on the guest queues (the guest's and QEMU's per-queue counters)
 *     exactly where verify's predictions say;
 *   - a domain that asked for RSS but started without eBPF (fallback policy, broker stopped)
 *     is flagged by status, with why, and verify refuses it.
 * Domains are vebpf-lg-<pid>-…; destroyed, undefined and their files removed in after().
 * Uninstalls at the end only when nothing was installed before the suite.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ensureFixture, parseEthtoolRss, startLibvirtGuest, type GuestFixture, type LibvirtGuest } from '../support/guest';
import { libvirtQemuAccount } from '../../src/broker/config';
import { lookupUser } from '../../src/sys/users';
import { readManifest } from '../../src/install/manifest';
import { DEFAULT_PATHS } from '../../src/install/plan';
import type { StatusReport } from '../../src/status';
import { needRoot, watchFds } from '../harness';
import { BrokerChild, installForReal, tearDownInstalled } from '../coldstart/fixture';
import { bpfFds, cmdline, procStatus, run, virtioNetDevices, QEMU_LOG_DIR } from '../coldstart/libvirt';
import { cli } from '../status/qemu';
import { assertLibvirtFlows } from './flows';
import { libvirtdReachable } from '../libvirt/fixture';

const PREFIX = `vebpf-lg-${process.pid}-`;
const HOST_IP = '10.199.79.1';
const GUEST_IP = '10.199.79.2';
const QUEUES = 4;
const WRAPPER = join(DEFAULT_PATHS.wrapperDir, 'qemu-system-x86_64');

const broker = new BrokerChild();
let fixture: GuestFixture;
let guest: LibvirtGuest;
let fallback: LibvirtGuest | undefined;
let installedBefore = false;
let qemuUser: { name: string; uid: number };
let checkFds: () => void;

type NicJson = StatusReport['domains'][number]['nics'][number];

before(async () => {
  needRoot('installs into system paths, runs the broker, starts domains in the system libvirtd, adds a host address');
  libvirtdReachable();
  checkFds = watchFds();
  const account = lookupUser(libvirtQemuAccount().user);
  qemuUser = { name: account.name, uid: account.uid };
  fixture = await ensureFixture();
  installedBefore = Boolean(readManifest(DEFAULT_PATHS.manifest));
  const t0 = performance.now();
  installForReal();
  const installMs = Math.round(performance.now() - t0);
  await broker.start();
  guest = await startLibvirtGuest({
    name: PREFIX + 'rss',
    fixture,
    // Channels first: an `ethtool -L` after `ethtool -X` would turn RSS off in QEMU.
    script: ['@channels vebpf_maxq eth0'],
    ip: `${GUEST_IP}/30`,
  });
  await guest.addHostAddress(`${HOST_IP}/30`);
  console.log(`# install ${installMs} ms; libvirt guest: virsh start to READY ${guest.bootMs} ms (TCG, ${QUEUES} vCPUs), tap ${guest.interfaces[0].tap}`);
});

after(async () => {
  await tearDownInstalled({ domains: [fallback, guest], broker, installedBefore });
  checkFds?.();
});

async function statusJson(name: string): Promise<StatusReport> {
  const r = await cli(['status', name, '--json']);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as StatusReport;
}

async function nicOf(name: string): Promise<NicJson> {
  const report = await statusJson(name);
  assert.equal(report.domains.length, 1, `exactly one QEMU for ${name}`);
  assert.equal(report.domains[0].nics.length, 1);
  return report.domains[0].nics[0];
}

test('libvirt ran QEMU unprivileged through the wrapper; status NAME ties its NIC to the fds it holds and shows what the guest driver set at probe', async () => {
  const xml = run('virsh', ['-c', 'qemu:///system', 'dumpxml', guest.name]).stdout;
  assert.match(xml, new RegExp(`<emulator>${WRAPPER}</emulator>`), 'virt-ebpf enable pointed the domain at our wrapper');
  const st = procStatus(guest.pid);
  assert.equal(st.uid, qemuUser.uid);
  assert.equal(st.capEff, 0n, 'QEMU has no capabilities: it could not have loaded eBPF itself');
  const dev = virtioNetDevices(cmdline(guest.pid))[0];
  const named = (dev['ebpf-rss-fds'] as string[]).map(Number);
  const held = bpfFds(guest.pid);
  const ids = named.map((fd) => held.find((h) => h.fd === fd)?.id);

  const report = await statusJson(guest.name);
  assert.equal(report.domains.length, 1);
  const d = report.domains[0];
  assert.equal(d.name, guest.name);
  assert.equal(d.uuid, guest.uuid);
  assert.equal(d.pid, guest.pid);
  assert.equal(d.user, qemuUser.name);
  const nic = d.nics[0];
  assert.equal(nic.tap, guest.interfaces[0].tap, 'the tap libvirt created (found through the tap fds)');
  assert.equal(nic.mac, guest.interfaces[0].mac);
  assert.equal(nic.queues, QUEUES);
  assert.deepEqual(nic.ebpf, { source: 'fd-numbers', matchedBy: 'command-line', fds: named, progId: ids[0], mapIds: ids.slice(1) });
  assert.deepEqual(nic.problems, []);
  // Before any `ethtool -X`: Debian 12's 6.1 virtio_net has told the device nothing yet; a
  // kernel with "virtio_net: Sync rss config to device when virtnet_probe" (Debian 13's 6.12)
  // commits its default configuration when it probes the NIC. Status shows what the device holds.
  if (nic.state === 'active') {
    const guestView = parseEthtoolRss((await guest.console.run('ethtool -x eth0')).output);
    assert.deepEqual(nic.rss!.table, guestView.table, 'the guest driver\'s default table, as the guest prints it');
    assert.equal(nic.rss!.key, guestView.key);
  } else {
    assert.equal(nic.state, 'unconfigured', nic.summary);
  }
});

for (const setting of ['equal 2', 'weight 3 1', 'equal 4']) {
  test(`ethtool -X eth0 ${setting}: status NAME --json is exactly the guest's table and key; verify NAME agrees 256/256`, async () => {
    await guest.console.run(`ethtool -X eth0 ${setting}`);
    const want = parseEthtoolRss((await guest.console.run('ethtool -x eth0')).output);
    const nic = await nicOf(guest.name);
    assert.equal(nic.state, 'active', nic.summary);
    assert.equal(nic.rss!.indirectionsLen, want.size);
    assert.deepEqual(nic.rss!.table, want.table);
    assert.equal(nic.rss!.key, want.key, 'the key as the guest set it');
    assert.equal(nic.rss!.hashTypes, 0x3f, "Linux virtio_net's default hash types");
    assert.deepEqual(
      nic.histogram!.map((h) => h.entries),
      [0, 1, 2, 3].map((q) => want.table.filter((x) => x === q).length),
    );
    const v = await cli(['verify', guest.name]);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    assert.match(v.stdout, /: 256\/256 flows agree with the reference$/m);
  });
}

test('UDP flows from the host into the libvirt tap land on the guest queues exactly where verify predicts', async () => {
  // The table from the last step (equal 4) spreads flows over all four queues.
  await assertLibvirtFlows(guest, await nicOf(guest.name), { hostIp: HOST_IP, guestIp: GUEST_IP, queues: QUEUES, label: 'equal 4' });
});

test('status NAME (text) shows the domain, its tap and the table at a glance', async () => {
  const r = await cli(['status', guest.name]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`^${guest.name} {2}\\(uuid ${guest.uuid}, pid ${guest.pid}, user ${qemuUser.name}\\)$`, 'm'));
  assert.match(r.stdout, new RegExp(`net0 {2}${guest.interfaces[0].mac} {2}tap ${guest.interfaces[0].tap} {2}4 queues {2}netdev hostnet0`));
  assert.match(r.stdout, /RSS {4}on: 128 table entries, default queue 0/);
  assert.match(r.stdout, /table {2}q0 █{8} +32 \(25%\)\n +q1 █{8} +32 \(25%\)\n +q2 █{8} +32 \(25%\)\n +q3 █{8} +32 \(25%\)/);
  console.log(r.stdout.trimEnd().replace(/^/gm, '# '));
});

test('fallback policy, broker stopped: the domain runs without eBPF; status flags it with why, verify refuses it', async () => {
  await broker.stop();
  fallback = await startLibvirtGuest({
    name: PREFIX + 'fallback',
    fixture,
    script: [],
    enable: { policy: 'fallback' },
    // Status reads the command line and /proc: nothing in it waits for the guest.
    readyTimeoutMs: 0,
  });
  const log = readFileSync(join(QEMU_LOG_DIR, `${fallback.name}.log`), 'utf8');
  assert.match(log, /virt-ebpf: policy is fallback: starting [^\n]* without eBPF/, 'the wrapper fell back (domain log)');
  assert.deepEqual(bpfFds(fallback.pid), [], 'QEMU holds no BPF object');

  const nic = await nicOf(fallback.name);
  assert.equal(nic.state, 'no-ebpf');
  assert.equal(nic.ebpf, undefined);
  assert.match(nic.summary, /^asked for RSS but runs without eBPF: /);
  assert.match(nic.summary, new RegExp(`QEMU runs as uid ${qemuUser.uid} without CAP_BPF and was given no ebpf-rss-fds`));
  assert.match(nic.summary, /the domain's policy is fallback, so it was started without eBPF/);
  assert.match(nic.summary, /QEMU then steers in software/);

  const text = await cli(['status', fallback.name]);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /RSS {4}asked for RSS but runs without eBPF: /);
  console.log(text.stdout.trimEnd().replace(/^/gm, '# '));

  const v = await cli(['verify', fallback.name]);
  assert.equal(v.code, 1);
  assert.match(v.stderr, /no eBPF steering program to verify[^\n]*policy is fallback[^\n]*\(NIC_NO_EBPF\)/);
});
