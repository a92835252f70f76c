/**
 * The host-wide mode on the real things: `virt-ebpf install --host-wide` diverts this host's
 * packaged /usr/bin/qemu-system-x86_64 with the real dpkg-divert, the installed broker runs, and
 * a domain defined from XML as virt-install writes it — `<driver queues='4'/>`, no rss, no
 * virt-ebpf metadata, libvirt's default emulator — starts under the system libvirtd and gets its
 * fds, and a multiqueue NIC attached with `virsh attach-device` gets its own. The domain's XML
 * is never edited. Uninstall gives dpkg its file back, byte for byte, with no diversion left.
 *
 * The suite changes /usr/bin/qemu-system-x86_64 for every domain on this host while it runs;
 * after() undoes the diversion whatever failed. Domains are vebpf-hw-<pid>-….
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ensureFixture, startLibvirtGuest, type LibvirtGuest } from '../support/guest';
import { libvirtQemuAccount } from '../../src/broker/config';
import { lookupUser } from '../../src/sys/users';
import { identityOf, readManifest } from '../../src/install/manifest';
import { DEFAULT_PATHS } from '../../src/install/plan';
import { parseWrapper } from '../../src/install/wrapper-script';
import { domainFacts, XML_NAMESPACE } from '../../src/xml';
import type { StatusDocument } from '../../src/status';
import { needRoot, tempDir, watchFds } from '../harness';
import { BrokerChild, tearDownInstalled } from '../coldstart/fixture';
import { bpfFds, CLI, cli as cliSync, cmdline, define, domainXml, procStatus, removeDomain, run, virtioNetDevices, waitFor } from '../coldstart/libvirt';
import { SecondHost } from '../migration/second-host';
import { cli } from '../status/qemu';
import { libvirtdReachable } from '../libvirt/fixture';

const QEMU_PATH = '/usr/bin/qemu-system-x86_64';
const DIVERTED = `${QEMU_PATH}.distrib`;
const PREFIX = `vebpf-hw-${process.pid}-`;
const broker = new BrokerChild();
const scratch = tempDir('virt-ebpf-hostwide-');
let guest: LibvirtGuest;
let installedBefore = false;
let qemuUid: number;
let checkFds: () => void;
let packaged: { sha: string; size: number };

const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

function diversions(): string {
  return execFileSync('dpkg-divert', ['--list', '*qemu-system*'], { encoding: 'utf8' }).trim();
}

/** Whatever failed: for every emulator diverted, no wrapper at its path, no diversion, dpkg's file back. */
function undoDiversion(): void {
  for (const m of diversions().matchAll(/^local diversion of (\S+) to (\S+)$/gm)) {
    const [, path, to] = m;
    if (existsSync(path) && parseWrapper(readFileSync(path, 'utf8'))) unlinkSync(path);
    execFileSync('dpkg-divert', ['--local', '--rename', '--divert', to, '--remove', path], { stdio: 'ignore' });
  }
}

async function statusOf(name: string): Promise<StatusDocument['domains'][number]> {
  const r = await cli(['status', name, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const doc = JSON.parse(r.stdout) as StatusDocument;
  assert.equal(doc.domains.length, 1);
  return doc.domains[0];
}

before(async () => {
  needRoot('diverts the packaged QEMU, installs into system paths, runs the broker, starts a domain in the system libvirtd');
  libvirtdReachable();
  assert.equal(diversions(), '', 'no qemu-system diversion before the suite (a leftover would be restored to the wrong file)');
  checkFds = watchFds();
  qemuUid = lookupUser(libvirtQemuAccount().user).uid;
  installedBefore = Boolean(readManifest(DEFAULT_PATHS.manifest));
  packaged = { sha: sha256(QEMU_PATH), size: readFileSync(QEMU_PATH).length };
});

after(async () => {
  try {
    await tearDownInstalled({ domains: [guest], broker, installedBefore: false });
  } finally {
    undoDiversion();
    scratch.remove();
  }
  if (installedBefore) cliSync('install');
  checkFds?.();
});

test('install --host-wide: dpkg diverts the packaged QEMU, its path runs the host-wide wrapper, every wrapper names the packaged binary', () => {
  const r = cliSync('install', '--host-wide');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`^diverted ${QEMU_PATH} \\(the packaged binary is at ${DIVERTED}; its path runs the wrapper\\)$`, 'm'));
  assert.match(diversions(), new RegExp(`^local diversion of ${QEMU_PATH} to ${DIVERTED}$`, 'm'));
  const wrapped = r.stdout.match(/^wrapped {2}\/usr\/bin\/\S+$/gm) ?? [];
  assert.ok(wrapped.length >= 2, r.stdout);
  assert.equal(diversions().split('\n').length, wrapped.length, 'every emulator install wraps is diverted (qemu-system-i386 too)');
  assert.equal(sha256(DIVERTED), packaged.sha, 'the packaged binary moved, unchanged');
  const atPath = parseWrapper(readFileSync(QEMU_PATH, 'utf8'));
  assert.equal(atPath?.real, DIVERTED);
  assert.equal(atPath?.hostWide, true);
  assert.equal(parseWrapper(readFileSync(join(DEFAULT_PATHS.wrapperDir, 'qemu-system-x86_64'), 'utf8'))?.real, DIVERTED, "an enabled domain's wrapper runs the packaged binary directly");
  // libvirt re-reads the capabilities of the path it knows (its ctime changed): through the wrapper, to the real QEMU.
  const caps = run('virsh', ['-c', 'qemu:///system', 'domcapabilities', '--emulatorbin', QEMU_PATH, '--virttype', 'qemu']);
  assert.equal(caps.status, 0, caps.stderr);
  assert.match(caps.stdout, /<path>\/usr\/bin\/qemu-system-x86_64<\/path>/);
});

test('apt reinstalls QEMU under the diversion: the package writes the .distrib binary, our wrapper keeps the path, the apt hook refreshes it, libvirt reads the new capabilities', () => {
  const before = parseWrapper(readFileSync(QEMU_PATH, 'utf8'))!;
  const version = execFileSync('dpkg-query', ['-W', '-f=${Version}', 'qemu-system-x86'], { encoding: 'utf8' }).trim();
  // The installed version again, through apt (so apt's Post-Invoke hooks run, ours among them).
  const r = run('apt-get', ['install', '--reinstall', '-y', '-q', '--no-install-recommends', '-o', 'Dpkg::Options::=--force-confold', `qemu-system-x86=${version}`], { timeoutMs: 600_000 });
  assert.equal(r.status, 0, `apt-get install --reinstall qemu-system-x86=${version} failed (it needs the package in apt's cache or the archive): ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
  assert.match(diversions(), new RegExp(`^local diversion of ${QEMU_PATH} to ${DIVERTED}$`, 'm'), 'the diversion survives');
  const after = parseWrapper(readFileSync(QEMU_PATH, 'utf8'));
  assert.ok(after?.hostWide, 'our wrapper still has the path: dpkg wrote the package file at the diverted name');
  assert.equal(sha256(DIVERTED), packaged.sha, 'the same version: the same binary, at .distrib');
  assert.notEqual(after.identity, before.identity, 'the apt hook (virt-ebpf refresh) rewrote the wrapper for the new file');
  assert.equal(after.identity, identityOf(DIVERTED));
  const caps = run('virsh', ['-c', 'qemu:///system', 'domcapabilities', '--emulatorbin', QEMU_PATH, '--virttype', 'qemu']);
  assert.equal(caps.status, 0, caps.stderr);
});

test("a domain as virt-install writes it (queues='4', no rss, no metadata, the default emulator) starts with fds from the broker; its XML is not edited", async () => {
  await broker.start();
  guest = await startLibvirtGuest({
    name: PREFIX + 'plain',
    fixture: await ensureFixture(),
    nics: [{ queues: 4, rss: false }, { queues: 1, rss: false }],
    vcpus: 4,
    hotplugSlots: 4,
    enable: false,
    emulator: QEMU_PATH,
  });
  const xml = run('virsh', ['-c', 'qemu:///system', 'dumpxml', '--inactive', guest.name]).stdout;
  assert.doesNotMatch(xml, /rss=/, 'the definition says nothing of rss');
  assert.equal(domainFacts(xml).config, null, 'no virt-ebpf metadata');
  assert.match(xml, /<emulator>\/usr\/bin\/qemu-system-x86_64<\/emulator>/);

  const st = procStatus(guest.pid);
  assert.equal(st.uid, qemuUid, "QEMU runs as libvirt's QEMU account");
  assert.equal(st.capEff, 0n, 'QEMU has no capabilities');
  const [net0, net1] = virtioNetDevices(cmdline(guest.pid));
  assert.equal(net0.rss, true, 'the host policy turned rss on for the multiqueue NIC');
  const fds = (net0['ebpf-rss-fds'] as string[]).map(Number);
  const held = bpfFds(guest.pid);
  assert.equal(fds.length, 4);
  assert.ok(fds.every((fd) => held.some((h) => h.fd === fd && h.id > 0)), `QEMU holds the fds its device names: ${fds}`);
  assert.equal(net1.rss, undefined, 'a single-queue NIC is left as it was');
  assert.equal(net1['ebpf-rss-fds'], undefined);
  await waitFor('the broker handed out fds', 10_000, () => broker.handoffMicros().length > 0);

  const dom = await statusOf(guest.name);
  assert.equal(dom.nics.length, 1);
  assert.equal(dom.nics[0].rssFrom, 'host-policy', 'status says the host policy turned rss on');
  assert.equal(dom.nics[0].ebpf?.progId, held.find((h) => h.fd === fds[0])?.id);
  const text = await cli(['status', guest.name]);
  assert.match(text.stdout, /rss by the host-wide policy: the domain's XML does not ask/);
  assert.match(run('virsh', ['-c', 'qemu:///system', 'dumpxml', guest.name]).stdout, /<driver queues='4'\/>/, 'the live XML is not edited either');
});

test('a domain that opts out in its metadata (<virt-ebpf:host-wide mode="off"/>) starts as its XML says: no rss, no fds', () => {
  const name = PREFIX + 'optout';
  const xml = domainXml({ name, nics: [{ rss: false, queues: 4 }] }).replace('<devices>', `<metadata><virt-ebpf:host-wide xmlns:virt-ebpf="${XML_NAMESPACE}" mode="off"/></metadata>\n  <devices>`);
  define(xml, scratch.path);
  try {
    const r = run('virsh', ['-c', 'qemu:///system', 'start', name]);
    assert.equal(r.status, 0, r.stderr);
    const pid = Number(readFileSync(`/run/libvirt/qemu/${name}.pid`, 'utf8'));
    const [net0] = virtioNetDevices(cmdline(pid));
    assert.equal(net0.mq, true, 'a multiqueue NIC the policy would have taken');
    assert.equal(net0.rss, undefined, 'no rss: the domain opted out');
    assert.equal(net0['ebpf-rss-fds'], undefined);
    assert.ok(!bpfFds(pid).some((f) => f.kind === 'prog'));
  } finally {
    removeDomain(name);
  }
});

test('virsh attach-device of a multiqueue NIC: the host policy gives it rss and its own fds at hot-plug', async () => {
  const file = join(scratch.path, 'nic.xml');
  writeFileSync(file, "<interface type='ethernet'>\n  <model type='virtio'/>\n  <driver queues='2'/>\n</interface>\n");
  const before = bpfFds(guest.pid).filter((f) => f.kind === 'prog').length;
  const r = run('virsh', ['-c', 'qemu:///system', 'attach-device', guest.name, file, '--live']);
  assert.equal(r.status, 0, r.stderr);
  await waitFor('a second program in QEMU', 10_000, () => bpfFds(guest.pid).filter((f) => f.kind === 'prog').length === before + 1);
  const dom = await statusOf(guest.name);
  assert.equal(dom.nics.length, 2, 'status shows the hot-plugged NIC too');
  assert.ok(dom.nics.some((n) => n.origin === 'unnamed-program'), JSON.stringify(dom.nics.map((n) => n.origin)));
});

test('migration to a host without the host-wide policy: virsh migrate fails when QEMU there loads the devices (the source keeps running); virt-ebpf migrate carries rss=on and it runs there', async () => {
  const hostB = new SecondHost(join(scratch.path, 'host-b'), { hostname: `vebpf-hwb-${process.pid}`, plainQemu: true });
  await hostB.start();
  try {
    const uriB = hostB.uri;
    const xmlFor = (consolePath: string): string => {
      const xml = run('virsh', ['-c', 'qemu:///system', 'dumpxml', '--migratable', guest.name]).stdout.replace(guest.consoleSocket, consolePath);
      const file = join(scratch.path, 'to-b.xml');
      writeFileSync(file, xml);
      return file;
    };
    const pid = guest.pid;
    const plain = run('virsh', ['-c', 'qemu:///system', 'migrate', '--live', '--xml', xmlFor(join(scratch.path, 'console-b0.sock')), guest.name, uriB, 'tcp://127.0.0.1'], { timeoutMs: 300_000 });
    console.log(`# virsh migrate to a host without the policy: ${plain.stderr.trim().replace(/\n/g, ' | ')}`);
    assert.notEqual(plain.status, 0, 'the devices differ: QEMU on B cannot load the stream');
    assert.equal(run('virsh', ['-c', 'qemu:///system', 'domstate', guest.name]).stdout.trim(), 'running', 'the source keeps running');
    assert.equal(guest.pid, pid);
    assert.equal((await guest.console.run('echo alive')).output.trim(), 'alive');

    const consoleB = join(scratch.path, 'console-b.sock');
    const ours = run(process.execPath, [CLI, 'migrate', guest.name, uriB, '--', '--live', '--migrateuri', 'tcp://127.0.0.1', '--xml', xmlFor(consoleB)], { timeoutMs: 300_000 });
    assert.equal(ours.status, 0, ours.stderr);
    assert.match(ours.stderr, /run with rss from this host's host-wide policy: the migration XML says rss='on' for them/);
    await guest.moveTo(hostB.libvirtHost, consoleB);
    assert.equal(hostB.virsh('domstate', guest.name).trim(), 'running');
    const onB = hostB.virsh('dumpxml', guest.name);
    assert.equal((onB.match(/rss='on'/g) ?? []).length, 2, "on B the two NICs the policy gave rss (net0 and the hot-plugged one) have rss='on' in their XML, the single-queue one not");
    assert.equal(virtioNetDevices(cmdline(guest.pid))[0].rss, true);
    assert.equal((await guest.console.run('echo alive')).output.trim(), 'alive', 'the guest runs on B');
  } finally {
    await hostB.stop();
  }
});

test('a plain install keeps the mode it finds; install --no-host-wide removes the diversion and dpkg\'s file is back byte for byte (our wrapper at that path is removed, never the file dpkg moved back)', () => {
  const kept = cliSync('install');
  assert.equal(kept.status, 0, kept.stderr);
  assert.match(diversions(), new RegExp(`^local diversion of ${QEMU_PATH} to ${DIVERTED}$`, 'm'), 'a plain install (the package postinst, an "install again" remedy) keeps the host-wide mode');
  assert.equal(parseWrapper(readFileSync(QEMU_PATH, 'utf8'))?.hostWide, true);
  const r = cliSync('install', '--no-host-wide');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(diversions(), '');
  assert.ok(!existsSync(DIVERTED));
  assert.equal(sha256(QEMU_PATH), packaged.sha);
  assert.equal(parseWrapper(readFileSync(join(DEFAULT_PATHS.wrapperDir, 'qemu-system-x86_64'), 'utf8'))?.real, QEMU_PATH, "an enabled domain's wrapper names the packaged path again");
  const again = cliSync('install', '--host-wide');
  assert.equal(again.status, 0, again.stderr);
  assert.equal(sha256(DIVERTED), packaged.sha, 'and diverted again, unchanged');
});

test('uninstall: our wrapper leaves the path, dpkg gets its file back byte for byte, no diversion left', async () => {
  await guest.close();
  await broker.stop();
  assert.equal(run('virsh', ['-c', 'qemu:///system', 'list', '--name']).stdout.includes(PREFIX), false);
  const r = cliSync('uninstall', '--force');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(diversions(), '');
  assert.ok(!existsSync(DIVERTED));
  assert.equal(sha256(QEMU_PATH), packaged.sha);
  assert.equal(readFileSync(QEMU_PATH).subarray(0, 4).toString('latin1'), '\x7fELF');
  assert.match(execFileSync('dpkg', ['-S', QEMU_PATH], { encoding: 'utf8' }), /^qemu-system-x86: /);
});
