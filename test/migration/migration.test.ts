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
import { parseEthtoolRss, THIS_HOST, type LibvirtGuest, type LibvirtHost, type RssConfig } from '../support/guest';
import { libvirtQemuAccount } from '../../src/broker/config';
import { lookupUser } from '../../src/sys/users';
import { readManifest } from '../../src/install/manifest';
import { DEFAULT_PATHS } from '../../src/install/plan';
import { domainStatePath } from '../../src/policy';
import { ask } from '../broker/support';
import type { StatusDocument } from '../../src/status';
import { needRoot, tempDir, watchFds } from '../harness';
import { BrokerChild, installForReal, tearDownInstalled } from '../coldstart/fixture';
import { bpfFds, CLI, cmdline, procStatus, run, waitFor } from '../coldstart/libvirt';
import { domainFacts, XML_NAMESPACE } from '../../src/xml';
import { cli } from '../status/qemu';
import { assertLibvirtFlows } from '../libvirt-guest/flows';
import { libvirtdReachable } from '../libvirt/fixture';
import { heldByDevice, setOwnTable, startTableGuest } from '../libvirt-guest/own-table';
import { SecondHost } from './second-host';

const PREFIX = `vebpf-mig-${process.pid}-`;
const HOST_IP = '10.199.82.1';
const GUEST_IP = '10.199.82.2';
const QUEUES = 4;
const MIGRATE_URI = 'tcp://127.0.0.1';

const brokerA = new BrokerChild();
const scratch = tempDir('virt-ebpf-migration-');
const hostB = new SecondHost(join(scratch.path, 'host-b'), { hostname: `vebpf-b-${process.pid}` });
/** A host where virt-ebpf was never installed. */
const hostC = new SecondHost(join(scratch.path, 'host-c'), { hostname: `vebpf-c-${process.pid}`, bare: true });
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
const C: Side = {
  label: 'C',
  get host() {
    return hostC.libvirtHost;
  },
  cli: async (args) => hostC.cli(...args),
  get broker(): BrokerChild {
    throw new Error('host C has no broker');
  },
  get stateDir() {
    return join(hostC.dir, 'run-virt-ebpf', 'domains');
  },
  hostname: () => hostC.hostname,
};

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


async function reserved(broker: BrokerChild): Promise<number> {
  const r = (await ask(broker.socket, { v: 1, id: 1, op: 'status' })) as { ok: boolean; reserved?: number };
  assert.ok(r.ok, JSON.stringify(r));
  return r.reserved!;
}

/** The migratable XML with the destination's own console path, in a file. */
function xmlFor(from: Side, to: Side): { file: string; console: string } {
  const consoleTo = join(dirname(guest.consoleSocket), `console-${to.label}.sock`);
  const xml = virshOn(from, 'dumpxml', '--migratable', guest.name).replace(guest.consoleSocket, consoleTo);
  assert.ok(xml.includes(consoleTo), 'the serial console path is in the migratable XML');
  const file = join(scratch.path, `to-${to.label}.xml`);
  writeFileSync(file, xml);
  return { file, console: consoleTo };
}

/** `virsh migrate --live` (or `virt-ebpf migrate`) from one side to the other; the result, the domain not followed. */
function tryMigrate(from: Side, to: Side, o: { extra?: string[]; via?: 'virsh' | 'virt-ebpf' } = {}): { status: number | null; stderr: string; console: string } {
  const x = xmlFor(from, to);
  const extra = o.extra ?? [];
  const persistent = extra.includes('--persistent') ? ['--persistent-xml', x.file] : [];
  const options = ['--live', ...extra, ...persistent, '--xml', x.file, '--migrateuri', MIGRATE_URI];
  const r =
    o.via === 'virt-ebpf'
      ? run(process.execPath, [CLI, 'migrate', '--connect', from.host.uri, guest.name, to.host.uri, '--', ...options], { timeoutMs: 300_000 })
      : run('virsh', ['-q', '-c', from.host.uri, 'migrate', ...options, guest.name, to.host.uri], { timeoutMs: 300_000 });
  return { status: r.status, stderr: r.stderr, console: x.console };
}

/** Migrate and follow the domain to the destination. */
async function migrate(from: Side, to: Side, extra: string[] = [], via: 'virsh' | 'virt-ebpf' = 'virsh'): Promise<string> {
  const r = tryMigrate(from, to, { extra, via });
  assert.equal(r.status, 0, `migrate ${from.label} → ${to.label} failed: ${r.stderr.trim()}\n${guest.logTail(10)}`);
  await guest.moveTo(to.host, r.console);
  return r.stderr;
}

/** The domain's policy in its live XML (what a migration carries), changed with virsh metadata --live. */
function setPolicyLive(side: Side, policy: 'strict' | 'fallback'): void {
  const cur = virshOn(side, 'metadata', guest.name, XML_NAMESPACE, '--live');
  const next = cur.replace(/policy=(["'])(strict|fallback)\1/, `policy="${policy}"`);
  assert.notEqual(next, cur.replace(/policy=(["'])(strict|fallback)\1/, 'policy="?"'), 'the metadata names a policy');
  virshOn(side, 'metadata', guest.name, XML_NAMESPACE, '--live', '--key', 'virt-ebpf', '--set', next.trim());
  assert.match(virshOn(side, 'metadata', guest.name, XML_NAMESPACE, '--live'), new RegExp(`policy=["']${policy}["']`));
}

/** How the domain runs on A now: refused migrations must leave exactly this. */
function runningOnA(): { pid: number; reason: string } {
  return { pid: guest.pid, reason: virshOn(A, 'domstate', '--reason', guest.name).trim() };
}

async function assertUntouchedOnA(before: { pid: number; reason: string }, how: string): Promise<void> {
  assert.deepEqual(runningOnA(), before, `${how}: the domain runs on A as before, never paused (same QEMU, same state reason)`);
  assert.equal((await guest.console.run('echo alive')).output.trim(), 'alive', `${how}: the guest answers`);
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
  installedBefore = Boolean(readManifest(DEFAULT_PATHS.manifest));
  installForReal();
  await brokerA.start();
  await hostB.start();
  brokerB = await hostB.startBroker();
  guest = await startTableGuest(PREFIX + 'guest', `${GUEST_IP}/30`);
  await guest.addHostAddress(`${HOST_IP}/30`);
});

after(async () => {
  await hostC.stop();
  await hostB.stop();
  await tearDownInstalled({ domains: [guest], broker: brokerA, installedBefore });
  scratch.remove();
  checkFds?.();
});

test('on A the guest sets its own table (weight 1 2 3 4 and a key of its own); status shows it', async () => {
  guestSet = await setOwnTable(guest, 7);
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
  const kept = domainFacts(defined);
  assert.ok(kept.enabled, 'B\'s definition is enabled: our metadata and the wrapper as emulator');
  assert.equal(kept.config?.policy, 'strict', 'with its policy');

  old = snapshot(A);
  await migrate(B, A, ['--persistent', '--undefinesource']);
  await checkArrived(B, A, old);
  assert.match(stateOn(B), /^\(none/, 'B no longer defines it');
  assert.match(virshOn(A, 'dominfo', guest.name), /Persistent:\s+yes/);
});

test('strict, B\'s broker down: virsh migrate is refused by B\'s hook before the guest pauses, with our line', async () => {
  await hostB.stopBroker();
  const before = runningOnA();
  const r = tryMigrate(A, B);
  assert.notEqual(r.status, 0, 'the migration was refused');
  console.log(`# virsh migrate: ${r.stderr.trim().replace(/\n/g, ' | ')}`);
  assert.match(r.stderr, /virt-ebpf: cannot reach the virt-ebpf broker/, 'libvirt passes on the reason our hook gave');
  await assertUntouchedOnA(before, 'strict, broker down on B');
  assert.match(stateOn(B), /^\(none/, 'nothing left on B');
  assert.equal(await reserved(brokerA), 0);
});

test('fallback, B\'s broker down: the domain runs on B without eBPF and status there says so; back on A it has eBPF again', async () => {
  setPolicyLive(A, 'fallback');
  await migrate(A, B);
  assert.equal(stateOn(B), 'running');
  assert.equal(procStatus(guest.pid).uid, qemuUid);
  assert.ok(!bpfFds(guest.pid).some((f) => f.kind === 'prog'), 'QEMU on B holds no program');
  const doc = await statusOn(B);
  const nic = doc.domains[0].nics[0];
  console.log(`# status on B: ${nic.state}: ${nic.summary}`);
  assert.equal(nic.state, 'no-ebpf', nic.summary);
  assert.equal(nic.ebpf, undefined);
  const inGuest = parseEthtoolRss((await guest.console.run('ethtool -x eth0')).output);
  assert.deepEqual(inGuest.table, guestSet.table, 'the guest keeps its table');

  await hostB.startBroker();
  const old = snapshot(A);
  await migrate(B, A);
  await checkArrived(B, A, old);
});

test('strict, a host without virt-ebpf: virsh migrate fails before the guest pauses; virt-ebpf migrate refuses with one line and never starts it', async () => {
  setPolicyLive(A, 'strict');
  await hostC.start();
  const before = runningOnA();
  const plain = tryMigrate(A, C);
  assert.notEqual(plain.status, 0);
  console.log(`# virsh migrate to C: ${plain.stderr.trim().replace(/\n/g, ' | ')}`);
  assert.match(plain.stderr, /\/usr\/libexec\/virt-ebpf\/qemu-system-x86_64/, 'libvirt on C cannot find the wrapper');
  await assertUntouchedOnA(before, 'virsh migrate to C');

  const ours = tryMigrate(A, C, { via: 'virt-ebpf' });
  assert.equal(ours.status, 1);
  const lines = ours.stderr.trim().split('\n');
  assert.equal(lines.length, 1, ours.stderr);
  assert.match(lines[0], /^virt-ebpf: .* cannot run \/usr\/libexec\/virt-ebpf\/qemu-system-x86_64 \(virt-ebpf is not installed there\) and its policy is strict: .* not migrated, it keeps running here \(MIGRATION_REFUSED\); install virt-ebpf on the destination/);
  await assertUntouchedOnA(before, 'virt-ebpf migrate to C');
  assert.match(stateOn(C), /^\(none/, 'nothing was started on C');
});

test('fallback, a host without virt-ebpf: virt-ebpf migrate runs it there on the real QEMU with the same devices; status there says no eBPF', async () => {
  setPolicyLive(A, 'fallback');
  const stderr = await migrate(A, C, [], 'virt-ebpf');
  assert.match(stderr, /runs there without eBPF RSS \(policy fallback\), with the same devices/);
  assert.equal(stateOn(C), 'running');
  // The wrapper execs QEMU, so /proc/PID/exe cannot tell them apart: libvirt's live XML can.
  assert.match(virshOn(C, 'dumpxml', guest.name), /<emulator>\/usr\/bin\/qemu-system-x86_64<\/emulator>/, 'C runs the real QEMU, not the wrapper');
  assert.ok(cmdline(guest.pid).join(' ').includes('"rss":true'), 'the device keeps rss=on');
  assert.ok(!bpfFds(guest.pid).some((f) => f.kind === 'prog'), 'QEMU on C holds no program');
  const doc = await statusOn(C);
  assert.equal(doc.host.name, hostC.hostname);
  const nic = doc.domains[0].nics[0];
  console.log(`# status on C: ${nic.state}: ${nic.summary}`);
  assert.equal(nic.state, 'no-ebpf', nic.summary);
  const inGuest = parseEthtoolRss((await guest.console.run('ethtool -x eth0')).output);
  assert.deepEqual(inGuest.table, guestSet.table, 'the guest keeps its table');
  assert.equal(await reserved(brokerA), 0, 'A keeps nothing');
});
