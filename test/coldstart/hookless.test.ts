/**
 * `virt-ebpf install --no-hook` on the real things: no libvirt hook of ours, so libvirtd forks
 * nothing of ours for any domain's events, and enabled domains still get their fds, their
 * policy and their hot-plug setting — the broker reads them at exec-plan from the status XML
 * libvirt writes before it lets the emulator's process exec (src/policy/live.ts). Domains are
 * vebpf-nh-<pid>-…, TCG without a guest; the install is the system's, undone in after().
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { needRoot, tempDir, watchFds } from '../harness';
import { readManifest } from '../../src/install/manifest';
import { DEFAULT_PATHS } from '../../src/install/plan';
import { DOMAIN_STATE_DIR, readDomainState } from '../../src/policy';
import { SHIM_SO } from '../../src/shims/constants';
import { parseWrapper } from '../../src/install/wrapper-script';
import { BrokerChild, tearDownInstalled } from './fixture';
import { bpfFds, cli, defineEnabled, define, domainState, domainXml, qemuPid, removeDomain, virsh, virshTry, waitFor } from './libvirt';
import { libvirtdReachable } from '../libvirt/fixture';

const PREFIX = `vebpf-nh-${process.pid}-`;
const S = PREFIX + 'strict';
const F = PREFIX + 'fallback';
const P = PREFIX + 'plain';
/** enabled for hot-plug only: no RSS NIC at start */
const H = PREFIX + 'hotplug-only';
const REAL_QEMU = '/usr/bin/qemu-system-x86_64';
const WRAPPER = `${DEFAULT_PATHS.wrapperDir}/qemu-system-x86_64`;
const broker = new BrokerChild();
const scratch = tempDir('vebpf-hookless-');
let installedBefore = false;
let checkFds: () => void;

/** The suite's domain with spare PCIe root ports (a q35 hot-plug needs a free one). */
const xmlOf = (name: string) =>
  domainXml({ name, nics: [{ rss: true }] }).replace('    <console', `    <controller type='pci' index='0' model='pcie-root'/>\n${"    <controller type='pci' model='pcie-root-port'/>\n".repeat(6)}    <console`);

const uuidOf = (name: string) => virsh('domuuid', name).trim();
const stateOf = (name: string) => readDomainState(uuidOf(name), DOMAIN_STATE_DIR);
const mapsOf = (pid: number) => readFileSync(`/proc/${pid}/maps`, 'utf8');

/** The broker's output reaches us through a pipe, a little after the fact. */
const logged = (re: RegExp) => waitFor(`the broker to log ${re}`, 5000, () => re.test(broker.log));

function start(name: string): number {
  const r = virshTry('start', name);
  assert.equal(r.status, 0, `virsh start ${name}: ${r.stderr.trim()}`);
  return qemuPid(name);
}

before(() => {
  needRoot('installs into system paths, runs the broker and starts domains in the system libvirtd');
  libvirtdReachable();
  checkFds = watchFds();
  installedBefore = Boolean(readManifest(DEFAULT_PATHS.manifest));
});

after(async () => {
  try {
    for (const d of [S, F, P, H]) removeDomain(d);
    await tearDownInstalled({ domains: [], broker, installedBefore });
    if (installedBefore) cli('install', '--hook');
  } finally {
    scratch.remove();
  }
  checkFds?.();
});

test('install --no-hook: no hook file, libvirtd told to rescan, the mode kept by a plain install', () => {
  const r = cli('install', '--no-hook');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^no hook {2}libvirt runs no hook of ours/m);
  assert.match(r.stdout, /sent SIGHUP to (libvirtd|virtqemud)/, 'libvirt rescans its hooks (it looks for them at start and on SIGHUP only)');
  assert.ok(!existsSync(DEFAULT_PATHS.hookFile), `${DEFAULT_PATHS.hookFile} is gone`);
  const m = readManifest(DEFAULT_PATHS.manifest)!;
  assert.equal(m.hook, 'off');
  assert.ok(!m.entries.some((e) => e.kind === 'hook'), 'the manifest lists no hook');
  const again = cli('install');
  assert.equal(again.status, 0, again.stderr);
  assert.ok(!existsSync(DEFAULT_PATHS.hookFile), 'a plain install (what the package postinst runs) keeps the mode');
  assert.equal(readManifest(DEFAULT_PATHS.manifest)!.hook, 'off');
  const doctor = cli('doctor');
  assert.match(doctor.stdout, /libvirt hook.*none \(install --no-hook\)/);
  assert.equal(parseWrapper(readFileSync(WRAPPER, 'utf8'))?.hookless, true, 'the wrapper says so (hook=off): no record of the hook is a start\'s own');
});

test('an enabled domain (strict, hot-plug on) starts with its fds; the broker read its settings from libvirt at exec-plan, no hook ran', async () => {
  await broker.start();
  defineEnabled(S, xmlOf(S), scratch.path);
  defineEnabled(F, xmlOf(F), scratch.path, { policy: 'fallback', hotplug: 'off' });
  define(domainXml({ name: P, nics: [{ rss: true }] }), scratch.path);
  const pid = start(S);
  assert.equal(bpfFds(pid).length, 4, 'QEMU holds the program and 3 maps of its RSS NIC');
  assert.deepEqual(stateOf(S), { policy: 'strict', hotplug: true, writer: { by: 'exec', pid } }, 'recorded by exec-plan, for this QEMU');
  await logged(new RegExp(`handed out .*"name":"${S}"`));
  assert.match(broker.log, new RegExp(`settings from libvirt's live XML.*"name":"${S}".*"policy":"strict"`));
  assert.doesNotMatch(broker.log, /"event":"prepare"/, 'libvirt ran no hook: the broker got no prepare');
  assert.ok(mapsOf(pid).includes(SHIM_SO), 'hot-plug on: the shim is in QEMU');
  // Hot-plug goes by the recorded setting too.
  const nic = `<interface type='ethernet'><model type='virtio'/><driver queues='4' rss='on'/></interface>`;
  const file = `${scratch.path}/nic.xml`;
  writeFileSync(file, nic);
  virsh('attach-device', S, file, '--live');
  assert.equal(bpfFds(pid).length, 8, 'the hot-plugged RSS NIC got its own program and maps');
});

test("an enabled domain with fallback and --hotplug off: its settings reach the wrapper (no hot-plug shim)", () => {
  const pid = start(F);
  assert.equal(bpfFds(pid).length, 4);
  assert.deepEqual(stateOf(F), { policy: 'fallback', hotplug: false, writer: { by: 'exec', pid } });
  assert.ok(!mapsOf(pid).includes(SHIM_SO), 'hot-plug off: no shim in QEMU');
});

test('an enabled domain without an RSS NIC at start (hot-plug only, --hotplug off) still gets its settings: the wrapper asks at every start', () => {
  defineEnabled(H, domainXml({ name: H, nics: [{ rss: false }] }), scratch.path, { policy: 'fallback', hotplug: 'off' });
  const pid = start(H);
  assert.equal(bpfFds(pid).length, 0);
  assert.deepEqual(stateOf(H), { policy: 'fallback', hotplug: false, writer: { by: 'exec', pid } });
  assert.ok(!mapsOf(pid).includes(SHIM_SO), 'hot-plug off: no shim in QEMU');
  virsh('destroy', H);
});

test('a domain that is not ours runs the packaged QEMU with no hook file of ours on the host; the broker hears nothing of it', () => {
  const before = broker.log.length;
  const pid = start(P);
  assert.equal(readlinkSync(`/proc/${pid}/exe`), REAL_QEMU);
  assert.equal(bpfFds(pid).length, 0);
  assert.ok(!broker.log.slice(before).includes(uuidOf(P)) && !broker.log.slice(before).includes(P), 'the broker got no request about it');
  virsh('destroy', P);
});

test("broker down: the wrapper goes by the policy of the domain's last start here (fallback starts without eBPF, strict is refused with our line)", async () => {
  virsh('destroy', S);
  virsh('destroy', F);
  await broker.stop();
  const pid = start(F);
  assert.equal(bpfFds(pid).length, 0, 'fallback: no fds');
  virsh('destroy', F);
  const r = virshTry('start', S);
  assert.notEqual(r.status, 0, 'strict: refused');
  assert.match(r.stderr, /virt-ebpf: .*broker/);
  assert.equal(domainState(S), 'shut off');
  await broker.start();
});

test("a record exec-plan left for an earlier QEMU is not this one's: a changed definition is read again", () => {
  const old = stateOf(F);
  assert.equal(old.writer?.by, 'exec');
  const r = cli('enable', F, '--policy', 'strict', '--hotplug', 'on');
  assert.equal(r.status, 0, r.stderr);
  const pid = start(F);
  assert.deepEqual(stateOf(F), { policy: 'strict', hotplug: true, writer: { by: 'exec', pid } });
  assert.ok(mapsOf(pid).includes(SHIM_SO), 'the new hot-plug setting reached the wrapper');
  virsh('destroy', F);
});

test('install --hook puts the hook back; prepare records the settings again', async () => {
  const r = cli('install', '--hook');
  assert.equal(r.status, 0, r.stderr);
  assert.ok(existsSync(DEFAULT_PATHS.hookFile));
  assert.equal(readManifest(DEFAULT_PATHS.manifest)!.hook, undefined);
  assert.equal(parseWrapper(readFileSync(WRAPPER, 'utf8'))?.hookless, undefined);
  const pid = start(S);
  assert.equal(bpfFds(pid).length, 4);
  assert.deepEqual(stateOf(S), { policy: 'strict', hotplug: true, writer: { by: 'hook' } }, 'written by the hook at prepare');
  await logged(/"event":"prepare"/);
  virsh('destroy', S);
  assert.ok(!existsSync(`${DOMAIN_STATE_DIR}/${uuidOf(S)}.json`), 'release removed it');
});

test("install --no-hook while domains run: the hook's records outlive them (no release runs), and their next starts read the definitions again, with an RSS NIC or without", async () => {
  const pid = start(S);
  const pidH = start(H);
  assert.deepEqual(stateOf(S), { policy: 'strict', hotplug: true, writer: { by: 'hook' } });
  assert.deepEqual(stateOf(H), { policy: 'fallback', hotplug: false, writer: { by: 'hook' } });
  const r = cli('install', '--no-hook');
  assert.equal(r.status, 0, r.stderr);
  virsh('destroy', S);
  virsh('destroy', H);
  assert.deepEqual(stateOf(S).writer, { by: 'hook' }, "no hook ran at release: the hook's record is left");
  assert.deepEqual(stateOf(H).writer, { by: 'hook' });
  for (const [d, policy, hotplug] of [[S, 'fallback', 'off'], [H, 'strict', 'on']] as const) {
    const e = cli('enable', d, '--policy', policy, '--hotplug', hotplug);
    assert.equal(e.status, 0, e.stderr);
  }
  const next = start(S);
  assert.notEqual(next, pid);
  assert.deepEqual(stateOf(S), { policy: 'fallback', hotplug: false, writer: { by: 'exec', pid: next } }, 'the status libvirt wrote wins over the old record');
  assert.ok(!mapsOf(next).includes(SHIM_SO));
  // No RSS NIC at start: the wrapper asks because the hook's old record is not this start's.
  const nextH = start(H);
  assert.notEqual(nextH, pidH);
  assert.deepEqual(stateOf(H), { policy: 'strict', hotplug: true, writer: { by: 'exec', pid: nextH } });
  assert.ok(mapsOf(nextH).includes(SHIM_SO), 'the new hot-plug setting reached the wrapper');
  virsh('destroy', S);
  virsh('destroy', H);
});
