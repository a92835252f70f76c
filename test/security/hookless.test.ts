/**
 * On a hook-less host (`install --no-hook`) the broker reads a starting domain's settings from
 * libvirt's status XML at exec-plan and records them. A process of the QEMU account chooses its
 * own command line, `-uuid` included: it must not be able to remove, plant or change the record
 * of another domain, nor make the broker read settings on a host that has the hook. The broker
 * runs in this process with scratch directories for libvirt's status files, the records and
 * the install manifest; the peers are real processes of the QEMU account.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { needRoot, tempDir } from '../harness';
import { PEER, startTestBroker, type TestBroker } from '../broker/support';
import { QEMU_ACCOUNT } from './support';
import { XML_NAMESPACE } from '../../src/xml';
import { readDomainState, writeDomainState } from '../../src/policy';

const dir = tempDir('vebpf-sec-hookless-');
const runDir = join(dir.path, 'libvirt-qemu');
const stateDir = join(dir.path, 'domains');
const manifest = join(dir.path, 'installed.json');
const WRAPPER = '/usr/libexec/virt-ebpf/qemu-system-x86_64';
let broker: TestBroker;

function setHook(mode: 'on' | 'off'): void {
  writeFileSync(manifest, JSON.stringify({ version: 1, prefix: '/usr/lib/virt-ebpf', installedAt: new Date().toISOString(), entries: [], ...(mode === 'off' ? { hook: 'off' } : {}) }));
}

/** libvirt's status of a domain it is starting in process `pid`, enabled with `policy`. */
function writeStatus(name: string, uuid: string, pid: number, policy: 'strict' | 'fallback'): void {
  const meta = `<virt-ebpf:config xmlns:virt-ebpf="${XML_NAMESPACE}" version='1' policy='${policy}' hotplug='off'><virt-ebpf:emulator original="/usr/bin/qemu-system-x86_64" wrapper="${WRAPPER}"/></virt-ebpf:config>`;
  writeFileSync(
    join(runDir, `${name}.xml`),
    `<domstatus state='paused' reason='starting up' pid='${pid}'>\n<domain type='qemu' id='3'>\n  <name>${name}</name>\n  <uuid>${uuid}</uuid>\n  <metadata>${meta}</metadata>\n  <memory unit='KiB'>131072</memory>\n  <os><type arch='x86_64'>hvm</type></os>\n  <devices><emulator>${WRAPPER}</emulator></devices>\n</domain>\n</domstatus>\n`,
  );
}

/**
 * A QEMU-account process whose command line ends in `-uuid CLAIMED` sends an exec-plan for
 * `-name guest=NAME`; `beforeSend(pid)` runs once its pid is known and before it connects.
 */
async function execPlanAs(claimed: string, name: string, beforeSend: (pid: number) => void = () => {}): Promise<{ ok: boolean; reply?: any; message?: string }> {
  const req = { op: 'exec-plan', emulator: '/usr/bin/qemu-system-x86_64', argv: ['-name', `guest=${name},debug-threads=on`, '-uuid', claimed, '-machine', 'q35'] };
  // sh waits for a line, then execs node in its own pid: the status can name that pid first.
  const child = spawn('/bin/sh', ['-c', 'read go; exec "$@"', 'sh', process.execPath, PEER, String(QEMU_ACCOUNT.uid), String(QEMU_ACCOUNT.gid), broker.socket, JSON.stringify(req), '-uuid', claimed], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const done = new Promise<number | null>((r) => child.once('exit', r));
  beforeSend(child.pid!);
  child.stdin.end('go\n');
  const code = await done;
  assert.equal(code, 0, `peer: ${err}`);
  return JSON.parse(out);
}

before(async () => {
  needRoot('runs peers as the QEMU account and a broker that reads root-only files');
  mkdirSync(runDir, { recursive: true });
  mkdirSync(stateDir, { recursive: true });
  setHook('off');
  broker = await startTestBroker({}, { cacheDir: join(dir.path, 'cache'), manifest, hookEnv: { stateDir, libvirtRunDir: runDir } });
});

after(async () => {
  await broker?.close();
  dir.remove();
});

test("a peer claiming another domain's uuid cannot remove that domain's record", async () => {
  const victim = randomUUID();
  writeDomainState({ name: 'victim', uuid: victim }, { policy: 'fallback', hotplug: false }, { by: 'exec', pid: 424242 }, stateDir);
  const r = await execPlanAs(victim, 'no-such-domain');
  assert.ok(r.ok, r.message);
  assert.deepEqual(readDomainState(victim, stateDir), { policy: 'fallback', hotplug: false, writer: { by: 'exec', pid: 424242 } }, 'the record is still there');
});

test("a peer claiming another domain's uuid cannot plant settings for it (its own status names its own uuid)", async () => {
  const victim = randomUUID();
  const own = randomUUID();
  const r = await execPlanAs(victim, 'attacker', (pid) => writeStatus('attacker', own, pid, 'fallback'));
  assert.ok(r.ok, r.message);
  assert.ok(!existsSync(join(stateDir, `${victim}.json`)), `no record for the claimed uuid: ${existsSync(join(stateDir, `${victim}.json`)) ? readFileSync(join(stateDir, `${victim}.json`), 'utf8') : ''}`);
  assert.ok(!existsSync(join(stateDir, `${own}.json`)), 'nor for its own (it is not that QEMU: the uuids differ)');
});

test('a status of another pid is not read', async () => {
  const uuid = randomUUID();
  const r = await execPlanAs(uuid, 'other-pid', () => writeStatus('other-pid', uuid, 1, 'fallback'));
  assert.ok(r.ok, r.message);
  assert.equal(r.reply.policy, 'strict', 'the host default, not the status of pid 1');
  assert.ok(!existsSync(join(stateDir, `${uuid}.json`)));
});

test("the QEMU libvirt is starting (pid and uuid match its status) gets its domain's settings, recorded for its pid", async () => {
  const uuid = randomUUID();
  let pid = 0;
  const r = await execPlanAs(uuid, 'genuine', (p) => writeStatus('genuine', uuid, (pid = p), 'fallback'));
  assert.ok(r.ok, r.message);
  assert.equal(r.reply.policy, 'fallback');
  assert.equal(r.reply.hotplug, false);
  assert.deepEqual(readDomainState(uuid, stateDir), { policy: 'fallback', hotplug: false, writer: { by: 'exec', pid } });
});

test('with the hook installed, exec-plan reads no status at all', async () => {
  setHook('on');
  try {
    const uuid = randomUUID();
    const r = await execPlanAs(uuid, 'hooked', (p) => writeStatus('hooked', uuid, p, 'fallback'));
    assert.ok(r.ok, r.message);
    assert.equal(r.reply.policy, 'strict', 'the hook records settings on such a host; the status is not read');
    assert.ok(!existsSync(join(stateDir, `${uuid}.json`)));
  } finally {
    setHook('off');
  }
});
