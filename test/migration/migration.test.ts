/**
 * Live migration of an enabled domain between two libvirt hosts on this machine: this host (A,
 * the system libvirtd) and B, a second libvirtd in its own mount and UTS namespaces with its own
 * host_uuid, /run, /etc/libvirt, /var/lib/libvirt and broker (second-host.sh). QEMU's migration
 * stream goes over TCP on loopback. The real `virt-ebpf install`, real QEMU under TCG, the guest
 * fixture with its own RSS table set by `ethtool -X`.
 *
 * A → B → A with `virsh migrate --live`, then again with `--persistent --undefinesource`: on the
 * destination QEMU runs unprivileged holding a program and maps that host's broker handed out
 * for it; `status` there shows the table the guest set on A; `verify` agrees; UDP flows land
 * where verify predicts; the source keeps no reservation or state for it.
 *
 * The serial console is a unix socket on the shared file system: a QEMU that quits unlinks its
 * listening socket's path, so each migration gives the destination its own path (`--xml`, a
 * change libvirt allows: not guest ABI). Domains are vebpf-mig-<pid>-…; removed in after().
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { ensureFixture, parseEthtoolRss, startLibvirtGuest, THIS_HOST, type LibvirtGuest, type LibvirtHost, type RssConfig } from '../../src/guest';
import { libvirtQemuAccount } from '../../src/broker/config';
import { lookupUser } from '../../src/sys/users';
import { readManifest } from '../../src/install/apply';
import { DEFAULT_PATHS } from '../../src/install/plan';
import { domainStatePath } from '../../src/policy';
import { ask } from '../broker/support';
import type { StatusDocument } from '../../src/status';
import { needRoot, tempDir, watchFds } from '../harness';
import { BrokerChild, installForReal, tearDownInstalled } from '../coldstart/fixture';
import { bpfFds, cmdline, procStatus, run, virtioNetDevices, waitFor } from '../coldstart/libvirt';
import { cli } from '../status/qemu';
import { assertLibvirtFlows } from '../libvirt-guest/flows';
import { libvirtdReachable } from '../libvirt/fixture';
import { SecondHost } from './second-host';

const PREFIX = `vebpf-mig-${process.pid}-`;
const HOST_IP = '10.199.82.1';
const GUEST_IP = '10.199.82.2';
const QUEUES = 4;
const MIGRATE_URI = 'tcp://127.0.0.1';

const brokerA = new BrokerChild();
const scratch = tempDir('virt-ebpf-migration-');
const hostB = new SecondHost(join(scratch.path, 'host-b'), { hostname: `vebpf-b-${process.pid}` });
let guest: LibvirtGuest;
let installedBefore = false;
let qemuUid: number;
let checkFds: () => void;
let guestSet: RssConfig;

type NicJson = StatusDocument['domains'][number]['nics'][number];

interface Side {
  label: string;
  host: LibvirtHost;
  /** `virt-ebpf ARGS` run on that host */
  cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }>;
  broker: BrokerChild;
  stateDir: string;
  hostname: () => string;
}

const A: Side = {
  label: 'A',
  host: THIS_HOST,
  cli: (args) => cli(args),
  broker: brokerA,
  stateDir: '/run/virt-ebpf/domains',
  hostname: () => run('uname', ['-n']).stdout.trim(),
};
const B: Side = {
  label: 'B',
  get host() {
    return hostB.libvirtHost;
  },
  cli: async (args) => hostB.cli(...args),
  get broker() {
    return brokerB;
  },
  get stateDir() {
    return join(hostB.dir, 'run-virt-ebpf', 'domains');
  },
  hostname: () => hostB.hostname,
};
let brokerB: BrokerChild;

function virshOn(side: Side, ...args: string[]): string {
  const r = run('virsh', ['-q', '-c', side.host.uri, ...args], { timeoutMs: 300_000 });
  assert.equal(r.status, 0, `virsh (${side.label}) ${args.join(' ')} failed: ${r.stderr.trim()}\n${guest?.logTail(10) ?? ''}`);
  return r.stdout;
}

function stateOn(side: Side): string {
  const r = run('virsh', ['-q', '-c', side.host.uri, 'domstate', guest.name]);
  return r.status === 0 ? r.stdout.trim() : `(none: ${r.stderr.trim()})`;
}

async function statusOn(side: Side): Promise<StatusDocument> {
  const r = await side.cli(['status', guest.name, '--json']);
  assert.equal(r.code, 0, `status on ${side.label}: ${r.stderr}`);
  return JSON.parse(r.stdout) as StatusDocument;
}

function heldByDevice(pid: number): { fds: number[]; ids: number[] } {
  const dev = virtioNetDevices(cmdline(pid))[0];
  const fds = (dev['ebpf-rss-fds'] as string[] | undefined)?.map(Number) ?? [];
  const held = bpfFds(pid);
  return { fds, ids: fds.map((fd) => held.find((h) => h.fd === fd)?.id ?? -1) };
}

async function reserved(broker: BrokerChild): Promise<number> {
  const r = (await ask(broker.socket, { v: 1, id: 1, op: 'status' })) as { ok: boolean; reserved?: number };
  assert.ok(r.ok, JSON.stringify(r));
  return r.reserved!;
}

/**
 * `virsh migrate --live` from one side to the other, the destination's console on its own
 * path; afterwards the test follows the domain there.
 */
async function migrate(from: Side, to: Side, extra: string[] = []): Promise<void> {
  const consoleTo = join(dirname(guest.consoleSocket), `console-${to.label}.sock`);
  const xml = virshOn(from, 'dumpxml', '--migratable', guest.name).replace(guest.consoleSocket, consoleTo);
  assert.ok(xml.includes(consoleTo), 'the serial console path is in the migratable XML');
  const xmlFile = join(scratch.path, `to-${to.label}.xml`);
  writeFileSync(xmlFile, xml);
  const persistent = extra.includes('--persistent') ? ['--persistent-xml', xmlFile] : [];
  virshOn(from, 'migrate', '--live', ...extra, ...persistent, '--xml', xmlFile, guest.name, to.host.uri, MIGRATE_URI);
  await guest.moveTo(to.host, consoleTo);
}

/** Everything that must hold after the domain arrived on `to` from `from`. */
async function checkArrived(from: Side, to: Side, old: { pid: number; progId: number; handoffs: number }): Promise<void> {
  const how = `${from.label} → ${to.label}`;
  assert.equal(stateOn(to), 'running', `${how}: runs on ${to.label}`);
  assert.notEqual(stateOn(from), 'running', `${how}: no longer runs on ${from.label}`);
  assert.notEqual(guest.pid, old.pid, `${how}: a new QEMU`);
  assert.ok(cmdline(guest.pid).includes('-incoming'), `${how}: QEMU was started to receive the migration`);
  const st = procStatus(guest.pid);
  assert.equal(st.uid, qemuUid, `${how}: QEMU runs as libvirt's QEMU account`);
  assert.equal(st.capEff, 0n, `${how}: QEMU has no capabilities: it could not have loaded eBPF itself`);
  const held = heldByDevice(guest.pid);
  assert.equal(held.fds.length, 4, `${how}: the device names a program and 3 maps`);
  assert.ok(held.ids.every((id) => id > 0), `${how}: QEMU holds them: ${held.ids}`);
  assert.notEqual(held.ids[0], old.progId, `${how}: a program loaded for this QEMU, not the source's`);
  await waitFor(`${how}: ${to.label}'s broker handed out fds for the new QEMU`, 10_000, () => to.broker.handoffMicros().length > old.handoffs);

  const doc = await statusOn(to);
  assert.equal(doc.host.name, to.hostname(), `${how}: status runs on ${to.label}`);
  assert.equal(doc.domains.length, 1);
  const nic: NicJson = doc.domains[0].nics[0];
  assert.equal(nic.ebpf?.progId, held.ids[0], `${how}: status ties the NIC to the program QEMU holds`);
  assert.equal(nic.state, 'active', `${how}: ${nic.summary}`);
  assert.deepEqual(nic.rss!.table, guestSet.table, `${how}: the table the guest set on A`);
  assert.equal(nic.rss!.key, guestSet.key, `${how}: the key the guest set on A`);

  const v = await to.cli(['verify', guest.name]);
  assert.equal(v.code, 0, `${how}: verify: ${v.stdout}${v.stderr}`);
  assert.match(v.stdout, /: 256\/256 flows agree with the reference$/m);

  const inGuest = parseEthtoolRss((await guest.console.run('ethtool -x eth0')).output);
  assert.deepEqual(inGuest.table, guestSet.table, `${how}: the guest still sees its table`);

  // The source's tap (with the host address) goes when its QEMU has gone.
  await waitFor(`${how}: the source's tap to go`, 15_000, () => run('ip', ['-o', '-4', 'addr', 'show', 'to', HOST_IP]).stdout.trim() === '');
  await guest.addHostAddress(`${HOST_IP}/30`);
  await assertLibvirtFlows(guest, nic, { hostIp: HOST_IP, guestIp: GUEST_IP, queues: QUEUES, label: how });

  // The source keeps nothing for it: no reservation in its broker, no state file.
  assert.equal(await reserved(from.broker), 0, `${how}: ${from.label}'s broker holds no reservation`);
  assert.ok(!existsSync(domainStatePath(guest.uuid, from.stateDir)!), `${how}: ${from.label} has no state file for the domain`);
  assert.ok(existsSync(domainStatePath(guest.uuid, to.stateDir)!), `${how}: ${to.label}'s hook left the domain's state`);
}

function snapshot(side: Side): { pid: number; progId: number; handoffs: number } {
  return { pid: guest.pid, progId: heldByDevice(guest.pid).ids[0], handoffs: side.broker.handoffMicros().length };
}

before(async () => {
  needRoot('installs into system paths, runs two libvirtd and their brokers, migrates domains between them');
  libvirtdReachable();
  checkFds = watchFds();
  qemuUid = lookupUser(libvirtQemuAccount().user).uid;
  const fixture = await ensureFixture();
  installedBefore = Boolean(readManifest(DEFAULT_PATHS.manifest));
  installForReal();
  await brokerA.start();
  await hostB.start();
  brokerB = await hostB.startBroker();
  guest = await startLibvirtGuest({
    name: PREFIX + 'guest',
    fixture,
    // Channels first: an `ethtool -L` after `ethtool -X` would turn RSS off in QEMU.
    script: ['@channels vebpf_maxq eth0'],
    ip: `${GUEST_IP}/30`,
  });
  await guest.addHostAddress(`${HOST_IP}/30`);
});

after(async () => {
  await hostB.stop();
  await tearDownInstalled({ domains: [guest], broker: brokerA, installedBefore });
  scratch.remove();
  checkFds?.();
});

test('on A the guest sets its own table (weight 1 2 3 4 and a key of its own); status shows it', async () => {
  await guest.console.run('ethtool -X eth0 weight 1 2 3 4 hkey ' + Array.from({ length: 40 }, (_, i) => ((i * 53 + 7) & 0xff).toString(16).padStart(2, '0')).join(':'));
  guestSet = parseEthtoolRss((await guest.console.run('ethtool -x eth0')).output);
  const nic = (await statusOn(A)).domains[0].nics[0];
  assert.equal(nic.state, 'active', nic.summary);
  assert.deepEqual(nic.rss!.table, guestSet.table);
});

test('virsh migrate --live A → B: fds from B\'s broker, the guest\'s table, verify, flows; A keeps nothing', async () => {
  const old = snapshot(B);
  await migrate(A, B);
  await checkArrived(A, B, old);
  assert.equal(stateOn(A), 'shut off', 'A keeps its persistent definition, shut off');
});

test('virsh migrate --live B → A: the same on the way back', async () => {
  const old = snapshot(A);
  await migrate(B, A);
  await checkArrived(B, A, old);
  assert.match(stateOn(B), /^\(none/, 'the domain was transient on B: nothing left there');
});

test('virsh migrate --live --persistent --undefinesource A → B → A: the definition moves with it', async () => {
  let old = snapshot(B);
  await migrate(A, B, ['--persistent', '--undefinesource']);
  await checkArrived(A, B, old);
  assert.match(stateOn(A), /^\(none/, 'A no longer defines it');
  assert.match(virshOn(B, 'dominfo', guest.name), /Persistent:\s+yes/);
  const defined = virshOn(B, 'dumpxml', '--inactive', guest.name);
  assert.match(defined, /virt-ebpf/, 'B\'s definition keeps the virt-ebpf metadata');

  old = snapshot(A);
  await migrate(B, A, ['--persistent', '--undefinesource']);
  await checkArrived(B, A, old);
  assert.match(stateOn(B), /^\(none/, 'B no longer defines it');
  assert.match(virshOn(A, 'dominfo', guest.name), /Persistent:\s+yes/);
});
