/**
 * The libvirt hook's decisions, run through the real code path (runHook) with a real broker
 * process, a scratch state dir and scratch install manifest: prepare prewarms or refuses per
 * policy, reconnect never fails, release cleans up, migrate/restore adapt only what must.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseHookArgs, mayFail, mayReplaceXml, domainUuid } from '../../src/hook/event';
import { runHook, HookEnv } from '../../src/hook/main';
import { clientBroker } from '../../src/broker/hook-client';
import { enableDomain, wrapperInDir, isEnabled, XML_NAMESPACE } from '../../src/xml';
import { readDomainState } from '../../src/policy';
import { install } from '../../src/install/apply';
import { hostFacts } from '../../src/install/host';
import { QEMU, REPO, needRoot, tempDir, trustedDir } from '../harness';
import { scratchPaths, trustedPrefix } from '../install/scratch';

const plain = readFileSync(join(REPO, 'test/fixtures/xml/one-rss-nic.in.xml'), 'utf8');
const uuid = domainUuid(plain)!;
const dir = tempDir();
const socket = join(dir.path, 'broker.sock');
const env: HookEnv = { broker: clientBroker({ socket, timeoutMs: 20_000 }), stateDir: join(dir.path, 'state'), manifest: join(dir.path, 'none.json') };
let broker: ChildProcess | undefined;

function enabled(policy: 'strict' | 'fallback', wrapperDir = '/usr/libexec/virt-ebpf', hotplug?: 'on' | 'off'): string {
  return enableDomain(plain, { wrapperFor: wrapperInDir(wrapperDir), policy, ...(hotplug ? { hotplug } : {}) }).xml;
}

async function startBroker(): Promise<void> {
  const cfg = join(dir.path, 'broker.json');
  writeFileSync(cfg, JSON.stringify({ socket, cacheDir: join(dir.path, 'cache'), pool: { size: 0 } }));
  broker = spawn(process.execPath, [join(REPO, 'dist/src/cli/main.js'), 'broker', '--config', cfg], { stdio: 'ignore' });
  for (let i = 0; i < 200 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 50));
}

async function stopBroker(): Promise<void> {
  if (!broker) return;
  const b = broker;
  broker = undefined;
  const exited = new Promise((r) => b.once('exit', r));
  b.kill('SIGTERM');
  await exited;
}

before(() => needRoot('runs a broker that loads BPF'));
after(async () => {
  await stopBroker();
  dir.remove();
});

test('hook arguments: a closed set; only prepare fails closed, only migrate/restore may replace the XML', async () => {
  assert.deepEqual(parseHookArgs(['vm', 'prepare', 'begin', '-']), { kind: 'prepare', name: 'vm' });
  assert.deepEqual(parseHookArgs(['vm', 'release', 'end', 'destroyed']), { kind: 'release', name: 'vm', reason: 'destroyed' });
  assert.deepEqual(parseHookArgs(['vm', 'started', 'begin', '-']), { kind: 'ignored', name: 'vm', op: 'started', subop: 'begin' });
  assert.deepEqual(parseHookArgs([]).kind, 'ignored');
  assert.equal(mayFail(parseHookArgs(['vm', 'reconnect', 'begin', '-'])), false);
  assert.equal(mayFail(parseHookArgs(['vm', 'prepare', 'begin', '-'])), true);
  assert.equal(mayReplaceXml(parseHookArgs(['vm', 'restore', 'begin', '-'])), true);
  assert.equal(mayReplaceXml(parseHookArgs(['vm', 'prepare', 'begin', '-'])), false);
  assert.equal(uuid.length, 36);
});

test('a domain we do not handle: every event is a silent no-op', async () => {
  for (const op of ['prepare', 'release', 'migrate', 'restore', 'reconnect']) {
    assert.deepEqual(await runHook(parseHookArgs(['vm', op, op === 'release' ? 'end' : 'begin', '-']), plain, env), { code: 0, stdout: '', stderr: '' });
  }
});

test('reconnect never fails, even on broken metadata; prepare does', async () => {
  const broken = enabled('strict').replace(/ original="[^"]*"/, '');
  assert.equal((await runHook({ kind: 'reconnect', name: 'vm' }, broken, env)).code, 0);
  const r = await runHook({ kind: 'prepare', name: 'vm' }, broken, env);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^virt-ebpf: .*XML_METADATA/);
});

test('prepare with the broker down: strict refuses with one line, fallback starts and says so; policy reaches the wrapper', async () => {
  const strict = await runHook({ kind: 'prepare', name: 'vm' }, enabled('strict'), env);
  assert.equal(strict.code, 1);
  assert.equal(strict.stderr.trim().split('\n').length, 1);
  assert.match(strict.stderr, /^virt-ebpf: cannot reach the virt-ebpf broker .*\(BROKER_UNREACHABLE\); start it/);
  assert.deepEqual(JSON.parse(readFileSync(join(env.stateDir!, `${uuid}.json`), 'utf8')), { name: 'vm', uuid, policy: 'strict', hotplug: true });

  // The per-domain opt-out of the hot-plug shim reaches the wrapper the same way.
  await runHook({ kind: 'prepare', name: 'vm' }, enabled('strict', '/usr/libexec/virt-ebpf', 'off'), env);
  assert.equal(JSON.parse(readFileSync(join(env.stateDir!, `${uuid}.json`), 'utf8')).hotplug, false);

  const fallback = await runHook({ kind: 'prepare', name: 'vm' }, enabled('fallback'), env);
  assert.equal(fallback.code, 0);
  assert.match(fallback.stderr, /policy is fallback: vm starts without eBPF RSS/);
  assert.equal(JSON.parse(readFileSync(join(env.stateDir!, `${uuid}.json`), 'utf8')).policy, 'fallback');
});

test('prepare with the broker up prewarms; release drops the state', async () => {
  await startBroker();
  try {
    const r = await runHook({ kind: 'prepare', name: 'vm' }, enabled('strict'), env);
    assert.deepEqual(r, { code: 0, stdout: '', stderr: '' });
    assert.ok(existsSync(join(env.stateDir!, `${uuid}.json`)));
    assert.equal((await runHook({ kind: 'release', name: 'vm', reason: 'destroyed' }, enabled('strict'), env)).code, 0);
    assert.ok(!existsSync(join(env.stateDir!, `${uuid}.json`)));
  } finally {
    await stopBroker();
  }
});

test('migrate/restore: keep the XML when this host has the wrapper; without it strict refuses, fallback runs the real QEMU with the devices unchanged', async () => {
  const elsewhere = (policy: 'strict' | 'fallback') => enabled(policy, join(dir.path, 'not-installed-here'));
  const wrapperDir = trustedDir('hook-wrappers');
  copyFileSync('/bin/true', join(wrapperDir, 'qemu-system-x86_64'));
  const present = enabled('strict', wrapperDir);
  assert.deepEqual(await runHook({ kind: 'migrate', name: 'vm' }, present, env), { code: 0, stdout: '', stderr: '' });

  for (const kind of ['migrate', 'restore'] as const) {
    const refused = await runHook({ kind, name: 'vm' }, elsewhere('strict'), env);
    assert.equal(refused.code, 1, `${kind} under strict`);
    assert.equal(refused.stdout, '');
    assert.equal(refused.stderr.trim().split('\n').length, 1);
    assert.match(refused.stderr, new RegExp(`^virt-ebpf: .*not-installed-here/qemu-system-x86_64 is not installed on this host and vm's policy is strict: the ${kind === 'migrate' ? 'incoming migration' : 'restore'} is refused \\(run \`virt-ebpf install\` here`));

    const xml = elsewhere('fallback');
    const plainHere = await runHook({ kind, name: 'vm' }, xml, env);
    assert.equal(plainHere.code, 0);
    assert.equal(isEnabled(plainHere.stdout), false, 'the wrapper is not used');
    // Only <emulator> changed: rss and queues stay, or the device state in the stream would not load.
    const emulatorLine = /<emulator>[^<]*<\/emulator>/;
    assert.equal(plainHere.stdout.replace(emulatorLine, ''), xml.replace(emulatorLine, ''), `${kind}: nothing but <emulator> changed`);
    assert.match(plainHere.stdout, /<emulator>\/usr\/bin\/qemu-system-x86_64<\/emulator>/);
    assert.match(plainHere.stdout, /rss='on'/);
    assert.match(plainHere.stderr, /runs without eBPF RSS here \(policy fallback/);
  }
  assert.equal(mayFail(parseHookArgs(['vm', 'migrate', 'begin', '-'])), false, 'a broken hook does not stop a migration');
});

test('a host-wide opt-out (our metadata, no config): prepare records it for the broker, fallback, no hot-plug shim; release removes it', async () => {
  const optOut = plain.replace('<devices>', `<metadata><virt-ebpf:host-wide xmlns:virt-ebpf="${XML_NAMESPACE}" mode="off"/></metadata>\n  <devices>`);
  assert.notEqual(optOut, plain);
  assert.deepEqual(await runHook({ kind: 'prepare', name: 'vm' }, optOut, env), { code: 0, stdout: '', stderr: '' });
  assert.deepEqual(JSON.parse(readFileSync(join(env.stateDir!, `${uuid}.json`), 'utf8')), { name: 'vm', uuid, policy: 'fallback', hotplug: false, hostWide: 'off' });
  assert.deepEqual(readDomainState(uuid, env.stateDir), { policy: 'fallback', hotplug: false, hostWideOff: true, writer: { by: 'hook' } });
  assert.equal((await runHook({ kind: 'release', name: 'vm', reason: 'destroyed' }, optOut, env)).code, 0);
  assert.ok(!existsSync(join(env.stateDir!, `${uuid}.json`)));
  const other = optOut.replace('mode="off"', 'mode="on"');
  await runHook({ kind: 'prepare', name: 'vm' }, other, env);
  assert.ok(!existsSync(join(env.stateDir!, `${uuid}.json`)), 'only mode="off" opts out');
});

test('prepare after the real QEMU changed: the wrapper is refreshed and the start is refused once (strict)', async () => {
  const bin = trustedDir('hook-stale');
  const copy = join(bin, 'qemu-system-x86_64');
  copyFileSync(QEMU, copy);
  const w = tempDir();
  try {
    const paths = scratchPaths(w.path);
    install({ ...hostFacts({ prefix: trustedPrefix(), emulators: [copy], paths }), systemd: false, apparmor: false, apt: false }, { rescan: false });
    const xml = enableDomain(plain.replace('/usr/bin/qemu-system-x86_64', copy), { wrapperFor: wrapperInDir(paths.wrapperDir) }).xml;
    utimesSync(copy, new Date(), new Date());
    const e = { ...env, manifest: paths.manifest };
    const r = await runHook({ kind: 'prepare', name: 'vm' }, xml, e);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /changed since libvirt read its capabilities; the wrapper is refreshed .*start vm again/);
    const again = await runHook({ kind: 'prepare', name: 'vm' }, xml, e);
    assert.doesNotMatch(again.stderr, /changed since/, 'refreshed: the next start goes on');
  } finally {
    w.remove();
  }
});
