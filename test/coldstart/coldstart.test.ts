/**
 * Acceptance of the libvirt cold start, end to end on the real things: `virt-ebpf install`
 * into the system paths, the installed broker as a child, libvirtd 11.3 starting QEMU 10.0.2
 * (TCG) as its unprivileged user through our emulator wrapper, and `uninstall --force` at the
 * end. Every fact is read where libvirt and the kernel keep it (/proc of the QEMU libvirt
 * started, its pid file, QMP through virsh, libvirt's capability cache, bpftool), not from our
 * code. Domains are vebpf-test-<pid>-…, destroyed and undefined in finally.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, readFileSync, readlinkSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { needRoot, tempDir, watchFds } from '../harness';
import { isEnabled, readConfig } from '../../src/xml';
import { libvirtQemuAccount } from '../../src/broker/config';
import { lookupUser } from '../../src/sys/users';
import { readManifest } from '../../src/install/manifest';
import { DEFAULT_PATHS } from '../../src/install/plan';
import { BrokerChild, installForReal, uninstallForReal } from './fixture';
import {
  bpfFds,
  cli,
  cmdline,
  defineEnabled,
  define,
  domainState,
  domainXml,
  processAlive,
  procStatus,
  qemuPid,
  qmp,
  QEMU_LOG_DIR,
  removeDomain,
  run,
  testDomains,
  virsh,
  virshTry,
  virtioNetDevices,
  waitFor,
} from './libvirt';
import { libvirtdReachable } from '../libvirt/fixture';

const REAL_QEMU = '/usr/bin/qemu-system-x86_64';
const WRAPPER = join(DEFAULT_PATHS.wrapperDir, 'qemu-system-x86_64');
const PREFIX = `vebpf-test-${process.pid}-`;
const broker = new BrokerChild();
let scratch: { path: string; remove(): void };
let qemuUid: number;
let checkFds: () => void;
let uninstalled = false;

const nameOf = (what: string) => PREFIX + what;

before(async () => {
  needRoot('installs into system paths, runs the broker and starts domains in the system libvirtd');
  libvirtdReachable();
  checkFds = watchFds();
  scratch = tempDir('vebpf-coldstart-');
  qemuUid = lookupUser(libvirtQemuAccount().user).uid;
  installForReal();
  await broker.start();
});

after(async () => {
  for (const name of testDomains(PREFIX)) removeDomain(name);
  await broker.stop();
  if (!uninstalled && readManifest(DEFAULT_PATHS.manifest)) cli('uninstall', '--force');
  scratch?.remove();
  checkFds?.();
});

/** The BPF fds a device's `ebpf-rss-fds` names, resolved in QEMU's own fd table. */
function namedObjects(pid: number, dev: Record<string, unknown>) {
  const names = dev['ebpf-rss-fds'];
  assert.ok(Array.isArray(names), `device ${String(dev.id)} has no ebpf-rss-fds list: ${JSON.stringify(dev)}`);
  const held = bpfFds(pid);
  return (names as string[]).map((n) => {
    assert.match(n, /^\d+$/, 'on the command line the fds are named by number');
    const link = readlinkSync(`/proc/${pid}/fd/${n}`);
    const fd = held.find((f) => f.fd === Number(n));
    assert.ok(fd, `fd ${n} named by ${String(dev.id)} is ${link}, not a BPF object`);
    return { ...fd, link };
  });
}

/** prog, config map (10 B values), Toeplitz key (40 B), indirection table (2 B), in this order. */
function assertRssOrder(objs: ReturnType<typeof namedObjects>, dev: string): void {
  assert.deepEqual(
    objs.map((o) => o.link),
    ['anon_inode:bpf-prog', 'anon_inode:bpf-map', 'anon_inode:bpf-map', 'anon_inode:bpf-map'],
    `${dev}: prog, map, map, map`,
  );
  assert.deepEqual(objs.slice(1).map((o) => o.valueSize), [10, 40, 2], `${dev}: config, key, indirection table`);
}

function assertUnprivileged(pid: number): void {
  const st = procStatus(pid);
  assert.equal(st.uid, qemuUid, 'QEMU runs as libvirt\'s QEMU user');
  assert.equal(st.capEff, 0n, 'QEMU has no effective capabilities');
}

function emulatorOf(name: string): string | undefined {
  return /<emulator>([^<]*)<\/emulator>/.exec(virsh('dumpxml', '--inactive', name))?.[1];
}

test('1 RSS NIC: QEMU runs unprivileged with exactly 1 prog + 3 maps, named in order in its device, realized', { timeout: 120_000 }, () => {
  const name = nameOf('one');
  try {
    defineEnabled(name, domainXml({ name, nics: [{ rss: true }] }), scratch.path);
    assert.equal(emulatorOf(name), WRAPPER, 'the domain runs through our wrapper');
    virsh('start', name);
    const pid = qemuPid(name);
    assertUnprivileged(pid);
    assert.equal(readlinkSync(`/proc/${pid}/exe`), REAL_QEMU, 'the wrapper exec\'d the real QEMU in the pid libvirt tracks');
    const held = bpfFds(pid);
    assert.deepEqual(
      held.map((f) => f.kind),
      ['prog', 'map', 'map', 'map'],
      `QEMU holds exactly one context: ${JSON.stringify(held)}`,
    );
    const devs = virtioNetDevices(cmdline(pid));
    assert.equal(devs.length, 1);
    assert.equal(devs[0].rss, true);
    const objs = namedObjects(pid, devs[0]);
    assertRssOrder(objs, String(devs[0].id));
    assert.deepEqual(objs.map((o) => o.fd).sort(), held.map((f) => f.fd).sort(), 'the device names exactly the fds QEMU holds');
    const realized = qmp(name, { execute: 'qom-get', arguments: { path: `/machine/peripheral/${String(devs[0].id)}`, property: 'realized' } });
    assert.equal(realized, true);
  } finally {
    removeDomain(name);
  }
});

test('2 RSS NICs: 2 progs + 6 maps, each device names its own 4', { timeout: 120_000 }, () => {
  const name = nameOf('two');
  try {
    defineEnabled(name, domainXml({ name, nics: [{ rss: true }, { rss: true }] }), scratch.path);
    virsh('start', name);
    const pid = qemuPid(name);
    assertUnprivileged(pid);
    const held = bpfFds(pid);
    assert.equal(held.filter((f) => f.kind === 'prog').length, 2);
    assert.equal(held.filter((f) => f.kind === 'map').length, 6);
    const devs = virtioNetDevices(cmdline(pid));
    assert.equal(devs.length, 2);
    const perDev = devs.map((d) => {
      const objs = namedObjects(pid, d);
      assertRssOrder(objs, String(d.id));
      return objs;
    });
    const all = perDev.flat().map((o) => o.id + o.kind);
    assert.equal(new Set(all).size, 8, 'no kernel object is shared between the two devices');
    assert.deepEqual(perDev.flat().map((o) => o.fd).sort((a, b) => a - b), held.map((f) => f.fd), 'together they name every BPF fd QEMU holds');
    for (const d of devs) {
      assert.equal(qmp(name, { execute: 'qom-get', arguments: { path: `/machine/peripheral/${String(d.id)}`, property: 'realized' } }), true);
    }
  } finally {
    removeDomain(name);
  }
});

test('a domain without RSS, not enabled, is untouched: real QEMU, no BPF fds, no ebpf-rss-fds', { timeout: 120_000 }, () => {
  const name = nameOf('plain');
  try {
    define(domainXml({ name, nics: [{ rss: false }] }), scratch.path);
    assert.equal(emulatorOf(name), REAL_QEMU);
    virsh('start', name);
    const pid = qemuPid(name);
    assert.equal(readlinkSync(`/proc/${pid}/exe`), REAL_QEMU);
    assert.deepEqual(bpfFds(pid), []);
    assert.ok(!cmdline(pid).some((a) => a.includes('ebpf-rss-fds')));
  } finally {
    removeDomain(name);
  }
});

test('an enabled domain with no RSS NIC runs through the wrapper\'s pass-through: no broker request, no BPF fds', { timeout: 120_000 }, () => {
  const name = nameOf('enabled-norss');
  try {
    defineEnabled(name, domainXml({ name, nics: [{ rss: false }] }), scratch.path);
    assert.equal(emulatorOf(name), WRAPPER);
    const handedBefore = broker.handoffMicros().length;
    virsh('start', name);
    const pid = qemuPid(name);
    assertUnprivileged(pid);
    assert.equal(readlinkSync(`/proc/${pid}/exe`), REAL_QEMU);
    assert.deepEqual(bpfFds(pid), []);
    assert.ok(!cmdline(pid).some((a) => a.includes('ebpf-rss-fds')));
    assert.equal(broker.handoffMicros().length, handedBefore, 'nothing was handed out for it');
  } finally {
    removeDomain(name);
  }
});

test('virsh destroy leaves none of the BPF objects QEMU held behind', { timeout: 120_000 }, async () => {
  const name = nameOf('destroy');
  try {
    defineEnabled(name, domainXml({ name, nics: [{ rss: true }] }), scratch.path);
    virsh('start', name);
    const pid = qemuPid(name);
    const held = bpfFds(pid);
    assert.equal(held.length, 4);
    for (const o of held) {
      assert.equal(run('bpftool', [o.kind, 'show', 'id', String(o.id)]).status, 0, `bpftool sees ${o.kind} ${o.id} while QEMU runs`);
    }
    virsh('destroy', name);
    await waitFor(`QEMU ${pid} to exit`, 10_000, () => !processAlive(pid));
    // Freeing is deferred in the kernel (RCU): bounded wait until every id is gone.
    await waitFor(`the kernel to free ${held.map((o) => `${o.kind} ${o.id}`).join(', ')}`, 10_000, () =>
      held.every((o) => run('bpftool', [o.kind, 'show', 'id', String(o.id)]).status !== 0),
    );
  } finally {
    removeDomain(name);
  }
});

test('strict policy, broker stopped: virsh start fails with our one line and the domain is not running', { timeout: 120_000 }, async () => {
  const name = nameOf('strict-nobroker');
  try {
    defineEnabled(name, domainXml({ name, nics: [{ rss: true }] }), scratch.path, { policy: 'strict' });
    await broker.stop();
    const r = virshTry('start', name);
    assert.notEqual(r.status, 0, 'the start was refused');
    assert.match(r.stderr, /virt-ebpf: [^\n]*broker[^\n]*\(BROKER_UNREACHABLE\); [^\n]*virt-ebpf broker/, `virsh start's error: ${r.stderr}`);
    assert.notEqual(domainState(name), 'running');
  } finally {
    removeDomain(name);
    if (!broker.running) await broker.start();
  }
});

test('fallback policy, broker stopped: the domain starts without eBPF and the domain log says so', { timeout: 120_000 }, async () => {
  const name = nameOf('fallback-nobroker');
  try {
    defineEnabled(name, domainXml({ name, nics: [{ rss: true }] }), scratch.path, { policy: 'fallback' });
    await broker.stop();
    virsh('start', name);
    const pid = qemuPid(name);
    assertUnprivileged(pid);
    assert.deepEqual(bpfFds(pid), []);
    const devs = virtioNetDevices(cmdline(pid));
    assert.equal(devs[0].rss, true, 'rss stays on (QEMU steers in software)');
    assert.equal(devs[0]['ebpf-rss-fds'], undefined);
    const log = readFileSync(join(QEMU_LOG_DIR, `${name}.log`), 'utf8');
    assert.match(log, /virt-ebpf: [^\n]*BROKER_UNREACHABLE/);
    assert.match(log, /virt-ebpf: policy is fallback: starting [^\n]* without eBPF/);
  } finally {
    removeDomain(name);
    if (!broker.running) await broker.start();
  }
});

test('the enabled XML survives virsh dumpxml -> undefine -> define unchanged', { timeout: 120_000 }, () => {
  const name = nameOf('roundtrip');
  try {
    defineEnabled(name, domainXml({ name, nics: [{ rss: true }, { rss: false }] }), scratch.path);
    const dumped = virsh('dumpxml', '--inactive', name);
    assert.ok(isEnabled(dumped));
    virsh('undefine', name);
    define(dumped, scratch.path);
    const again = virsh('dumpxml', '--inactive', name);
    assert.equal(again, dumped);
    assert.ok(isEnabled(again));
    assert.equal(readConfig(again)!.emulator.wrapper, WRAPPER);
  } finally {
    removeDomain(name);
  }
});

// --- stale capabilities -------------------------------------------------------------------------

const COPY = '/usr/local/bin/qemu-system-x86_64-vebpftest';
const COPY_WRAPPER = join(DEFAULT_PATHS.wrapperDir, 'qemu-system-x86_64-vebpftest');
const capsFile = (emulator: string) => `/var/cache/libvirt/qemu/capabilities/${createHash('sha256').update(emulator).digest('hex')}.xml`;
const qemuCtime = (emulator: string) => /<qemuctime>(\d+)<\/qemuctime>/.exec(readFileSync(capsFile(emulator), 'utf8'))?.[1];

/** What a package upgrade does: a new file renamed over the old one (new inode, new ctime). */
function upgradeCopy(): void {
  const tmp = `${COPY}.vebpf-${process.pid}`;
  copyFileSync(REAL_QEMU, tmp);
  chmodSync(tmp, 0o755);
  renameSync(tmp, COPY);
}

async function startStopWithFds(name: string): Promise<void> {
  virsh('start', name);
  const pid = qemuPid(name);
  assert.equal(readlinkSync(`/proc/${pid}/exe`), COPY);
  assert.deepEqual(bpfFds(pid).map((f) => f.kind), ['prog', 'map', 'map', 'map']);
  virsh('destroy', name);
  await waitFor(`QEMU ${pid} to exit`, 10_000, () => !processAlive(pid));
}

test('an upgraded QEMU never runs with stale libvirt capabilities: the hook refreshes at prepare, `refresh` ahead of time', { timeout: 180_000 }, async () => {
  const name = nameOf('stale');
  try {
    upgradeCopy();
    const m = installForReal();
    assert.ok(m.entries.some((e) => e.path === COPY_WRAPPER), 'install wraps the new emulator');
    defineEnabled(name, domainXml({ name, emulator: COPY, nics: [{ rss: true }] }), scratch.path);
    assert.equal(emulatorOf(name), COPY_WRAPPER);
    await startStopWithFds(name);
    const probed = qemuCtime(COPY_WRAPPER);
    assert.ok(probed, `libvirt cached capabilities for ${COPY_WRAPPER}`);

    // (a) upgrade, nothing else: libvirt alone would keep its cache (keyed on the wrapper's ctime)
    upgradeCopy();
    const refused = virshTry('start', name);
    assert.notEqual(refused.status, 0, 'strict: the start with stale capabilities is refused');
    assert.match(refused.stderr, /virt-ebpf: [^\n]*changed since libvirt read its capabilities[^\n]*start [^\n]* again/);
    assert.notEqual(domainState(name), 'running');
    assert.equal(qemuCtime(COPY_WRAPPER), probed, 'libvirt did not notice the upgrade by itself');
    await startStopWithFds(name);
    const reprobed = qemuCtime(COPY_WRAPPER);
    assert.notEqual(reprobed, probed, 'libvirt re-probed after the wrapper was refreshed');

    // (b) upgrade + `virt-ebpf refresh` (the apt hook): the very next start succeeds
    upgradeCopy();
    const r = cli('refresh');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`refreshed ${COPY_WRAPPER}`));
    await startStopWithFds(name);
    assert.notEqual(qemuCtime(COPY_WRAPPER), reprobed, 'libvirt re-probed after refresh');
  } finally {
    removeDomain(name);
    rmSync(COPY, { force: true });
    rmSync(capsFile(COPY_WRAPPER), { force: true });
    // install again: a wrapper whose emulator is gone is removed and leaves the manifest
    installForReal();
  }
  assert.ok(!existsSync(COPY_WRAPPER), 'the wrapper of the removed emulator is gone');
  assert.ok(!readManifest(DEFAULT_PATHS.manifest)!.entries.some((e) => e.path === COPY_WRAPPER));
});

test('uninstall --force removes exactly what install added', { timeout: 60_000 }, async () => {
  await broker.stop();
  const manifest = readManifest(DEFAULT_PATHS.manifest)!;
  assert.ok(manifest.entries.length >= 3);
  const left = uninstallForReal();
  uninstalled = true;
  assert.deepEqual(left, [], 'every path the manifest listed (and the runtime) is gone');
});
