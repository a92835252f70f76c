/**
 * The C shims on the start path (shims/wrapper.c, shims/hook.c, built to dist/shims), with the broker down (the broker-up path is the libvirt
 * acceptance in test/coldstart): the wrapper shim refuses with exactly one line under strict and
 * execs the real emulator with the original argv and no BPF fds under fallback; the hook shim
 * decides strict/fallback from the domain XML and leaves the policy for the wrapper.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { domainUuid } from '../../src/hook/event';
import { enableDomain, wrapperInDir, XML_NAMESPACE } from '../../src/xml';
import { REPO, tempDir } from '../harness';
import { SHIM_FILES } from '../../src/install/host';
import { renderWrapper } from '../../src/install/wrapper-script';
import { renderHeader } from '../../src/shims/header';

const WRAPPER = join(REPO, 'dist/shims/vebpf-wrapper');
const HOOK = join(REPO, 'dist/shims/vebpf-hook');
const dir = tempDir();
const stateDir = join(dir.path, 'domains');
const env = { PATH: '/usr/bin:/bin', VIRT_EBPF_BROKER_SOCKET: join(dir.path, 'no-broker.sock'), VIRT_EBPF_DOMAIN_STATE_DIR: stateDir };
const uuid = '0b7e2f1a-1111-4222-8333-444455556666';
const dev = JSON.stringify({ driver: 'virtio-net-pci', rss: true, id: 'net0' });
const args = ['-name', 'guest=shimvm,,x,debug-threads=on', '-uuid', uuid, '-device', dev, '-nodefaults', 'an arg with spaces'];
const UNREACHABLE = /^virt-ebpf: cannot reach the virt-ebpf broker at \S+: No such file or directory \(BROKER_UNREACHABLE\); start it \(systemctl start virt-ebpfd\.socket, or `virt-ebpf broker` as root\) and check `virt-ebpf doctor`$/;

/** A stand-in for QEMU that records its argv and what its open fds are. */
const fakeQemu = join(dir.path, 'qemu');
writeFileSync(fakeQemu, `#!/bin/sh\nprintf '%s\\n' "$@" > '${fakeQemu}.argv'\nfor f in /proc/$$/fd/*; do readlink "$f"; done > '${fakeQemu}.fds'\nexit 3\n`);
chmodSync(fakeQemu, 0o755);

after(() => dir.remove());

/** What `virt-ebpf install` writes (src/install/wrapper-script.ts, hooks/qemu.d/virt-ebpf): text files whose `#!` names a shim. */
const wrapperFile = join(dir.path, 'qemu-system-x86_64');
writeFileSync(wrapperFile, renderWrapper({ real: fakeQemu, shim: WRAPPER, identity: 'test' }), { mode: 0o755 });
const hookFile = join(dir.path, 'hook');
writeFileSync(hookFile, `#!${HOOK}\nnode=${process.execPath}\nhook=${join(REPO, 'dist/src/hook/main.js')}\n`, { mode: 0o755 });

function policyFor(policy: 'strict' | 'fallback'): void {
  mkdirSync(stateDir, { recursive: true });
  writeFileSync(join(stateDir, `${uuid}.json`), JSON.stringify({ name: 'shimvm', uuid, policy }) + '\n');
}

function wrapper() {
  for (const f of ['argv', 'fds']) writeFileSync(`${fakeQemu}.${f}`, '');
  return spawnSync(wrapperFile, args, { env, encoding: 'utf8', timeout: 10_000 });
}

test('wrapper shim, broker down, strict: one line with the TS wording, exit 1, QEMU never runs', () => {
  policyFor('strict');
  const r = wrapper();
  assert.equal(r.status, 1);
  assert.equal(r.stdout, '');
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], UNREACHABLE);
  assert.equal(readFileSync(`${fakeQemu}.argv`, 'utf8'), '', 'the emulator was not started');
});

test('wrapper shim, broker down, fallback: says so and execs the real emulator with the original argv and no BPF fds', () => {
  policyFor('fallback');
  const r = wrapper();
  assert.equal(r.status, 3, 'the exit status is the emulator\'s: same process, exec');
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 2, r.stderr);
  assert.match(lines[0], UNREACHABLE);
  assert.equal(lines[1], 'virt-ebpf: policy is fallback: starting shimvm,x without eBPF RSS steering');
  assert.equal(readFileSync(`${fakeQemu}.argv`, 'utf8'), args.join('\n') + '\n', 'exactly the original arguments');
  const fds = readFileSync(`${fakeQemu}.fds`, 'utf8').trim().split('\n');
  assert.ok(fds.length >= 3);
  assert.ok(!fds.some((f) => /^anon_inode:bpf/.test(f)), fds.join(' '));
});

test('hook shim, broker down: prepare strict refuses with one line, fallback goes on; both leave the policy and hotplug for the wrapper; release cleans up', () => {
  const plain = readFileSync(join(REPO, 'test/fixtures/xml/one-rss-nic.in.xml'), 'utf8');
  const id = domainUuid(plain)!;
  const state = join(stateDir, `${id}.json`);
  const hook = (xml: string, ...ev: string[]) => spawnSync(hookFile, ['vm', ...ev, '-'], { env, input: xml, encoding: 'utf8', timeout: 10_000 });
  const enabled = (policy: 'strict' | 'fallback') => enableDomain(plain, { wrapperFor: wrapperInDir('/usr/libexec/virt-ebpf'), policy }).xml;

  const strict = hook(enabled('strict'), 'prepare', 'begin');
  assert.equal(strict.status, 1);
  assert.equal(strict.stderr.trimEnd().split('\n').length, 1);
  assert.match(strict.stderr.trimEnd(), UNREACHABLE);
  assert.deepEqual(JSON.parse(readFileSync(state, 'utf8')), { name: 'vm', uuid: id, policy: 'strict', hotplug: true }, 'the same state runHook writes');

  // A domain's hot-plug opt-out survives a broker that is down at prepare.
  const optedOut = enableDomain(plain, { wrapperFor: wrapperInDir('/usr/libexec/virt-ebpf'), policy: 'strict', hotplug: 'off' }).xml;
  assert.equal(hook(optedOut, 'prepare', 'begin').status, 1);
  assert.deepEqual(JSON.parse(readFileSync(state, 'utf8')), { name: 'vm', uuid: id, policy: 'strict', hotplug: false });

  const fallback = hook(enabled('fallback'), 'prepare', 'begin');
  assert.equal(fallback.status, 0);
  assert.match(fallback.stderr, /\nvirt-ebpf: policy is fallback: vm starts without eBPF RSS if the wrapper cannot get fds\n$/);
  assert.equal(JSON.parse(readFileSync(state, 'utf8')).policy, 'fallback');

  const release = hook(enabled('fallback'), 'release', 'end');
  assert.deepEqual({ status: release.status, stderr: release.stderr }, { status: 0, stderr: '' });
  assert.ok(!existsSync(state));
});

test('hook shim: a domain without our metadata is done at once, broker or not; the shims name our XML namespace as src/xml does', () => {
  const plain = readFileSync(join(REPO, 'test/fixtures/xml/one-rss-nic.in.xml'), 'utf8');
  for (const ev of [['prepare', 'begin'], ['release', 'end']]) {
    const r = spawnSync(hookFile, ['vm', ...ev, '-'], { env, input: plain, encoding: 'utf8', timeout: 10_000 });
    assert.deepEqual({ status: r.status, stdout: r.stdout, stderr: r.stderr }, { status: 0, stdout: '', stderr: '' }, ev.join(' '));
  }
  assert.ok(!existsSync(join(stateDir, `${domainUuid(plain)}.json`)), 'no state for a domain that is not ours');
  assert.match(renderHeader(), new RegExp(`#define VEBPF_XMLNS "${XML_NAMESPACE.replace(/[.]/g, '\\.')}"`));
});

test('the hot-plug shim exports only the calls it wraps: nothing else of it can stand in for a symbol of QEMU or its libraries', () => {
  const r = spawnSync('nm', ['-D', '--defined-only', join(REPO, SHIM_FILES.qmp)], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const names = r.stdout.trim().split('\n').map((l) => l.trim().split(/\s+/).pop()).sort();
  assert.deepEqual(names, ['accept', 'accept4', 'close', 'mmap', 'mmap64', 'recvmsg', 'sendmsg']);
});

test('the shims trust only a script that is root\'s and writable by root alone: the wrapper names what it runs there', () => {
  const loose = join(dir.path, 'loose-wrapper');
  writeFileSync(loose, renderWrapper({ real: fakeQemu, shim: WRAPPER, identity: 'test' }), { mode: 0o755 });
  chmodSync(loose, 0o757); // others may write it: someone else could name another "real" QEMU
  for (const f of ['argv', 'fds']) writeFileSync(`${fakeQemu}.${f}`, '');
  const r = spawnSync(loose, ['-version'], { env, encoding: 'utf8', timeout: 10_000 });
  assert.equal(r.status, 1);
  assert.equal(r.stderr, `virt-ebpf: ${loose} is not root's or others than root may write it: not trusted; run \`virt-ebpf install\` again\n`);
  assert.equal(readFileSync(`${fakeQemu}.argv`, 'utf8'), '', 'nothing ran');
});

test('wrapper shim, a command line without rss or libvirt\'s monitor (capability probing): the real emulator as it is, no broker asked', () => {
  const r = spawnSync(wrapperFile, ['-machine', 'none', '-qmp', 'stdio', 'x y'], { env, encoding: 'utf8', timeout: 10_000 });
  assert.equal(r.status, 3);
  assert.equal(r.stderr, '', 'no broker was asked (it is down: asking would have said so)');
  assert.equal(readFileSync(`${fakeQemu}.argv`, 'utf8'), ['-machine', 'none', '-qmp', 'stdio', 'x y'].join('\n') + '\n');
});

test('hook shim, broker down: policy and hotplug are our element\'s own attributes (either quote, blanks and lines around =), never text inside another attribute, a comment or CDATA', () => {
  const plain = readFileSync(join(REPO, 'test/fixtures/xml/one-rss-nic.in.xml'), 'utf8');
  const id = domainUuid(plain)!;
  const state = join(stateDir, `${id}.json`);
  const enabled = enableDomain(plain, { wrapperFor: wrapperInDir('/usr/libexec/virt-ebpf'), policy: 'strict' }).xml;
  const tag = /<virt-ebpf:config [^>]*>/.exec(enabled)![0];
  const prepare = (start: string) => {
    const xml = enabled.replace(tag, start);
    assert.notEqual(xml, enabled);
    return spawnSync(hookFile, ['vm', 'prepare', 'begin', '-'], { env, input: xml, encoding: 'utf8', timeout: 10_000 });
  };
  const ns = `xmlns:virt-ebpf="${XML_NAMESPACE}"`;
  const cases: Array<[string, string, number, boolean]> = [
    ['another attribute\'s value', `<virt-ebpf:config ${ns} note='a policy="fallback" hotplug="off"' policy="strict">`, 1, true],
    ['a comment and CDATA before', `<!-- <virt-ebpf:config policy="fallback" hotplug="off"> --><![CDATA[<virt-ebpf:config policy="fallback">]]><virt-ebpf:config ${ns} policy="strict">`, 1, true],
    ['a longer element name before', `<virt-ebpf:configuration policy="fallback" hotplug="off"/><virt-ebpf:config ${ns} policy="strict">`, 1, true],
    ['attributes on lines, single quotes, blanks around =', `<virt-ebpf:config\n\t${ns}\n\tpolicy = 'fallback'\n\thotplug=\n"off">`, 0, false],
  ];
  for (const [what, start, status, hotplug] of cases) {
    const r = prepare(start);
    assert.equal(r.status, status, `${what}: ${r.stderr}`);
    assert.deepEqual(JSON.parse(readFileSync(state, 'utf8')), { name: 'vm', uuid: id, policy: status ? 'strict' : 'fallback', hotplug }, what);
  }
});

test('the shims refuse a script over 64 KiB or with a NUL byte, in one line: a real= cut short there would name another program', () => {
  const big = join(dir.path, 'big-wrapper');
  const text = renderWrapper({ real: fakeQemu, shim: WRAPPER, identity: 'test' });
  const at = text.indexOf('real=');
  // real= straddles byte 65 536: read up to there, it would name a program that is a prefix of the real one
  writeFileSync(big, text.slice(0, at) + '#'.repeat(65_536 - at - 'real='.length - 3) + '\n' + text.slice(at), { mode: 0o755 });
  const nul = join(dir.path, 'nul-wrapper');
  writeFileSync(nul, text.replace(`real=${fakeQemu}`, `real=${fakeQemu}\0-not-this`), { mode: 0o755 });
  for (const [file, why] of [[big, 'is over 64 KiB'], [nul, 'holds a NUL byte']]) {
    for (const f of ['argv', 'fds']) writeFileSync(`${fakeQemu}.${f}`, '');
    const r = spawnSync(file, ['-version'], { env, encoding: 'utf8', timeout: 10_000 });
    assert.equal(r.stderr, `virt-ebpf: ${file} ${why}: not a script \`virt-ebpf install\` wrote; run \`virt-ebpf install\` again\n`);
    assert.equal(r.status, 1);
    assert.equal(readFileSync(`${fakeQemu}.argv`, 'utf8'), '', 'nothing ran');
  }
});
