/**
 * Save and restore of an enabled domain, on the real things: the REAL `virt-ebpf install`, the
 * installed broker as a child, the guest fixture under libvirt with its own RSS table set
 * (`ethtool -X`), then
 *   - `virsh save` + `virsh restore FILE`, and
 *   - `virsh managedsave` + `virsh start` (libvirt restores from its managed image).
 * After each: libvirt started a new QEMU (with -incoming), unprivileged, holding a program and
 * maps the broker handed out for it (not the old ones); `status --json` shows the very table and
 * key the guest set before the save (QEMU writes its migrated RSS state into the new maps); the
 * guest's own view is unchanged; and UDP flows from the host land on the queues verify predicts.
 * Domains are vebpf-sr-<pid>-…; destroyed, undefined, files removed in after().
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseEthtoolRss, type LibvirtGuest, type RssConfig } from '../support/guest';
import { libvirtQemuAccount } from '../../src/broker/config';
import { lookupUser } from '../../src/sys/users';
import { readManifest } from '../../src/install/manifest';
import { DEFAULT_PATHS } from '../../src/install/plan';
import type { StatusReport } from '../../src/status';
import { needRoot, tempDir, watchFds } from '../harness';
import { BrokerChild, installForReal, tearDownInstalled } from '../coldstart/fixture';
import { cmdline, domainState, procStatus, run, waitFor } from '../coldstart/libvirt';
import { cli } from '../status/qemu';
import { assertLibvirtFlows } from '../libvirt-guest/flows';
import { libvirtdReachable } from '../libvirt/fixture';
import { heldByDevice, setOwnTable, startTableGuest } from '../libvirt-guest/own-table';

const PREFIX = `vebpf-sr-${process.pid}-`;
const HOST_IP = '10.199.81.1';
const GUEST_IP = '10.199.81.2';
const QUEUES = 4;

const broker = new BrokerChild();
const scratch = tempDir('virt-ebpf-saverestore-');
let guest: LibvirtGuest;
let installedBefore = false;
let qemuUid: number;
let checkFds: () => void;
/** The table and key the guest set, from its own `ethtool -x`. */
let guestSet: RssConfig;

type NicJson = StatusReport['domains'][number]['nics'][number];

function virsh(...args: string[]): string {
  const r = run('virsh', ['-q', '-c', 'qemu:///system', ...args], { timeoutMs: 180_000 });
  assert.equal(r.status, 0, `virsh ${args.join(' ')} failed: ${r.stderr.trim()}\n${guest?.logTail(10) ?? ''}`);
  return r.stdout;
}

async function nicOf(name: string): Promise<NicJson> {
  const r = await cli(['status', name, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout) as StatusReport;
  assert.equal(report.domains.length, 1, `exactly one QEMU for ${name}`);
  assert.equal(report.domains[0].nics.length, 1);
  return report.domains[0].nics[0];
}

before(async () => {
  needRoot('installs into system paths, runs the broker, saves and restores domains in the system libvirtd');
  libvirtdReachable();
  checkFds = watchFds();
  qemuUid = lookupUser(libvirtQemuAccount().user).uid;
  installedBefore = Boolean(readManifest(DEFAULT_PATHS.manifest));
  installForReal();
  await broker.start();
  guest = await startTableGuest(PREFIX + 'guest', `${GUEST_IP}/30`);
  await guest.addHostAddress(`${HOST_IP}/30`);
});

after(async () => {
  await tearDownInstalled({ domains: [guest], broker, installedBefore });
  scratch.remove();
  checkFds?.();
});

test('the guest sets its own table (weight 1 2 3 4 and a key of its own); status shows exactly that', async () => {
  guestSet = await setOwnTable(guest, 11);
  const nic = await nicOf(guest.name);
  assert.equal(nic.state, 'active', nic.summary);
  assert.deepEqual(nic.rss!.table, guestSet.table);
  assert.equal(nic.rss!.key, guestSet.key);
});

/**
 * Libvirt's new QEMU after a restore: unprivileged, restored from an image (-incoming), with a
 * program and maps the broker handed out for it; status and the guest both show the table the
 * guest set; traffic goes where verify says.
 */
async function checkRestored(how: string, old: { pid: number; progId: number; handoffs: number }): Promise<void> {
  assert.equal(domainState(guest.name), 'running');
  await guest.reconnect();
  assert.notEqual(guest.pid, old.pid, `${how}: a new QEMU`);
  assert.ok(cmdline(guest.pid).includes('-incoming'), `${how}: QEMU was started to load the saved state`);
  const st = procStatus(guest.pid);
  assert.equal(st.uid, qemuUid, `${how}: QEMU runs as libvirt's QEMU account`);
  assert.equal(st.capEff, 0n, `${how}: QEMU has no capabilities: it could not have loaded eBPF itself`);
  const held = heldByDevice(guest.pid);
  assert.equal(held.fds.length, 4, `${how}: the device names a program and 3 maps`);
  assert.ok(held.ids.every((id) => id > 0), `${how}: QEMU holds them: ${held.ids}`);
  assert.notEqual(held.ids[0], old.progId, `${how}: a program loaded for this QEMU, not the saved one's`);
  await waitFor(`${how}: the broker's handoff for the new QEMU`, 10_000, () => broker.handoffMicros().length > old.handoffs);

  const nic = await nicOf(guest.name);
  assert.deepEqual(nic.ebpf?.progId, held.ids[0], `${how}: status ties the NIC to the program QEMU holds`);
  assert.equal(nic.state, 'active', `${how}: ${nic.summary}`);
  assert.deepEqual(nic.rss!.table, guestSet.table, `${how}: the table the guest set before the save`);
  assert.equal(nic.rss!.key, guestSet.key, `${how}: the key the guest set before the save`);
  assert.equal(nic.rss!.hashTypes, 0x3f);

  const inGuest = parseEthtoolRss((await guest.console.run('ethtool -x eth0')).output);
  assert.deepEqual(inGuest.table, guestSet.table, `${how}: the guest still sees its table`);

  await guest.addHostAddress(`${HOST_IP}/30`);
  await assertLibvirtFlows(guest, nic, { hostIp: HOST_IP, guestIp: GUEST_IP, queues: QUEUES, label: how });
}

function snapshot(): { pid: number; progId: number; handoffs: number } {
  return { pid: guest.pid, progId: heldByDevice(guest.pid).ids[0], handoffs: broker.handoffMicros().length };
}

test('virsh save + virsh restore: a new unprivileged QEMU with fresh fds from the broker, the guest\'s table, working network', async () => {
  const old = snapshot();
  const file = join(scratch.path, `${guest.name}.save`);
  virsh('save', guest.name, file);
  assert.equal(domainState(guest.name), 'shut off');
  assert.ok(existsSync(file));
  virsh('restore', file);
  rmSync(file, { force: true });
  await checkRestored('restore', old);
});

test('virsh managedsave + virsh start: the same, from libvirt\'s managed image', async () => {
  const old = snapshot();
  virsh('managedsave', guest.name);
  assert.equal(domainState(guest.name), 'shut off');
  assert.match(virsh('dominfo', guest.name), /Managed save:\s+yes/);
  virsh('start', guest.name);
  assert.doesNotMatch(virsh('dominfo', guest.name), /Managed save:\s+yes/, 'the start used the managed image');
  await checkRestored('managedsave + start', old);
});
