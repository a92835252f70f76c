/**
 * The start-path ops, against a real in-process broker (real resolver: trusted QEMU, probe,
 * BPF loads) and real peers: `exec-plan` plans QEMU's argv and hands over the fds, `hook` runs
 * the libvirt hook's logic inside the broker. Who may ask is decided by SO_PEERCRED: the
 * unprivileged peers are python3 children running as other uids.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Broker } from '../../src/broker/server';
import { makeResolver } from '../../src/broker/daemon';
import { EmulatorAllowlist } from '../../src/emulator/allowlist';
import { validateConfig } from '../../src/broker/config';
import { parseRequest, MAX_EXEC_ARGS, MAX_EXEC_ARGV_BYTES, fdPlaceholder } from '../../src/broker/protocol';
import { createLogger } from '../../src/log';
import { domainUuid } from '../../src/hook/event';
import { enableDomain, wrapperInDir } from '../../src/xml';
import { QEMU, REPO, needRoot, tempDir, watchFds } from '../harness';

const plainXml = readFileSync(join(REPO, 'test/fixtures/xml/one-rss-nic.in.xml'), 'utf8');

const dir = tempDir();
chmodSync(dir.path, 0o755); // the unprivileged peers must reach the socket
const socket = join(dir.path, 'broker.sock');
const stateDir = join(dir.path, 'state');
const ALLOWED_UID = 65534; // nobody: allowlisted, not root
const OTHER_UID = 65533;
let broker: Broker;
let leaks: () => void;

const rssDev = JSON.stringify({ driver: 'virtio-net-pci', rss: true, id: 'net0' });
const uuid = '5f1c8a3e-0000-4000-8000-00000000c0de';
const args = ['-name', 'guest=opsvm,debug-threads=on', '-uuid', uuid, '-machine', 'none', '-device', rssDev];

interface Answer {
  reply: { ok: boolean; op?: string; argv?: string[] | null; fds?: number; code?: number; stdout?: string; stderr?: string; error?: { code: string; message: string } };
  /** what each received fd is (readlink of /proc/self/fd/N in the peer) */
  fdKinds: string[];
}

/**
 * One request from a python3 peer running as `uid` (a separate process: this process is the
 * broker and cannot also block on it). The peer reports the reply and what the fds it got are.
 */
function askAs(uid: number, req: object): Promise<Answer> {
  const py = [
    'import json, os, socket, sys',
    's = socket.socket(socket.AF_UNIX)',
    's.connect(sys.argv[1])',
    "s.sendall(sys.stdin.buffer.read() + b'\\n')",
    "b, fds = b'', []",
    "while b'\\n' not in b:",
    '    d, f, _, _ = socket.recv_fds(s, 1 << 20, 253)',
    '    fds += f',
    '    if not d: break',
    '    b += d',
    "print(json.dumps({'reply': json.loads(b.split(b'\\n')[0]), 'fdKinds': [os.readlink('/proc/self/fd/%d' % f) for f in fds]}))",
  ].join('\n');
  return new Promise((resolve, reject) => {
    const child = spawn('/usr/bin/python3', ['-I', '-S', '-c', py, socket], { uid, gid: 65534, stdio: ['pipe', 'pipe', 'pipe'], timeout: 30_000 });
    child.stdin.end(JSON.stringify(req)); // a 1 MiB argument would not fit in an exec argument
    let out = '';
    let err = '';
    child.stdout.on('data', (c) => (out += c));
    child.stderr.on('data', (c) => (err += c));
    // 'close': the output is whole and the stdio sockets are closed (they come after 'exit')
    child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`peer failed (${code}): ${err}`))));
  });
}

before(async () => {
  needRoot('the broker loads BPF and checks peers of other uids');
  leaks = watchFds();
  const config = validateConfig({ socket, cacheDir: join(dir.path, 'cache'), pool: { size: 0 } });
  const logger = createLogger('error');
  broker = new Broker({
    socket,
    allow: { uids: new Set([0, ALLOWED_UID]), gids: new Set() },
    poolSize: 0,
    maxReservedPerDomain: 16,
    limits: { maxConnectionsPerUid: 8 },
    resolve: makeResolver(config, logger, (k) => broker.pool.drop(k), { allowlist: new EmulatorAllowlist() }),
    logger,
    hookEnv: { stateDir, manifest: join(dir.path, 'none.json') },
  });
  await broker.start();
});

after(async () => {
  await broker?.close();
  dir.remove();
  leaks?.();
});

test('exec-plan: the broker plans the argv with placeholders and attaches exactly those BPF fds', async () => {
  const { reply, fdKinds } = await askAs(ALLOWED_UID, { v: 1, id: 1, op: 'exec-plan', emulator: QEMU, argv: args });
  assert.equal(reply.ok, true, JSON.stringify(reply));
  assert.equal(reply.fds, fdKinds.length);
  assert.ok(fdKinds.length >= 2, 'a program and at least one map');
  assert.ok(fdKinds.every((k) => /^anon_inode:bpf-(prog|map)$/.test(k)), fdKinds.join(' '));
  const argv = reply.argv!;
  assert.equal(argv.length, args.length);
  const dev = JSON.parse(argv[args.indexOf(rssDev)]);
  assert.deepEqual(dev['ebpf-rss-fds'], fdKinds.map((_, k) => fdPlaceholder(k)), 'one placeholder per attached fd, in order');
  assert.deepEqual(argv.filter((a) => a !== argv[args.indexOf(rssDev)]), args.filter((a) => a !== rssDev), 'every other argument untouched');
});

test('exec-plan: nothing to plan (rss off) is argv null and no fds', async () => {
  const off = args.map((a) => (a === rssDev ? JSON.stringify({ driver: 'virtio-net-pci', rss: false, id: 'net0' }) : a));
  const { reply, fdKinds } = await askAs(ALLOWED_UID, { v: 1, id: 1, op: 'exec-plan', emulator: QEMU, argv: off });
  assert.deepEqual({ ok: reply.ok, argv: reply.argv, fds: reply.fds, got: fdKinds.length }, { ok: true, argv: null, fds: 0, got: 0 });
});

test('exec-plan: refused for a uid outside the allowlist, with no fds', async () => {
  const { reply, fdKinds } = await askAs(OTHER_UID, { v: 1, id: 1, op: 'exec-plan', emulator: QEMU, argv: args });
  assert.equal(reply.ok, false);
  assert.equal(reply.error!.code, 'BROKER_DENIED');
  assert.match(reply.error!.message, new RegExp(`uid ${OTHER_UID} .*may not use the broker`));
  assert.deepEqual(fdKinds, []);
});

test('exec-plan: an argv that already holds the fd marker, or is too large, is refused before any load', async () => {
  const collide = [...args, '-device', `virtio-net-pci,netdev=${fdPlaceholder(0)}`];
  const { reply, fdKinds } = await askAs(ALLOWED_UID, { v: 1, id: 1, op: 'exec-plan', emulator: QEMU, argv: collide });
  assert.equal(reply.ok, false);
  assert.equal(reply.error!.code, 'BROKER_PROTOCOL');
  assert.match(reply.error!.message, /fd marker/);
  assert.deepEqual(fdKinds, []);
  const req = (argv: string[]) => JSON.stringify({ v: 1, id: 1, op: 'exec-plan', emulator: QEMU, argv });
  assert.throws(() => parseRequest(req(Array(MAX_EXEC_ARGS + 1).fill('x'))), /at most 4096 strings/);
  assert.throws(() => parseRequest(req(['x'.repeat(MAX_EXEC_ARGV_BYTES + 1)])), /longer than/);
  assert.doesNotThrow(() => parseRequest(req(['x'.repeat(MAX_EXEC_ARGV_BYTES / 2)])));
  const big = await askAs(ALLOWED_UID, { v: 1, id: 1, op: 'exec-plan', emulator: QEMU, argv: [...args, 'y'.repeat(MAX_EXEC_ARGV_BYTES)] });
  assert.equal(big.reply.ok, false);
  assert.match(big.reply.error!.message, /longer than/);
});

test('hook: refused for a non-root peer even when it may use the broker', async () => {
  const { reply } = await askAs(ALLOWED_UID, { v: 1, id: 1, op: 'hook', event: 'prepare', name: 'vm', xml: plainXml });
  assert.equal(reply.ok, false);
  assert.equal(reply.error!.code, 'BROKER_DENIED');
  assert.match(reply.error!.message, /may not run the libvirt hook/);
  assert.ok(!existsSync(stateDir), 'nothing was run');
});

test('hook: as root the broker runs the hook (prewarm straight into its own pool, no deadlock); release cleans up', async () => {
  const xml = enableDomain(plainXml, { wrapperFor: wrapperInDir('/usr/libexec/virt-ebpf'), policy: 'strict' }).xml;
  const state = join(stateDir, `${domainUuid(xml)}.json`);
  const prep = await askAs(0, { v: 1, id: 1, op: 'hook', event: 'prepare', name: 'vm', xml });
  assert.deepEqual(prep.reply, { v: 1, id: 1, ok: true, op: 'hook', code: 0, stdout: '', stderr: '' });
  assert.equal(JSON.parse(readFileSync(state, 'utf8')).policy, 'strict');
  const rel = await askAs(0, { v: 1, id: 1, op: 'hook', event: 'release', name: 'vm', xml });
  assert.equal(rel.reply.code, 0);
  assert.equal(broker.pool.release(domainUuid(xml)!), 0, 'release already dropped the reserved contexts');
  assert.ok(!existsSync(state));
  const plain = await askAs(0, { v: 1, id: 1, op: 'hook', event: 'prepare', name: 'vm', xml: plainXml });
  assert.deepEqual({ code: plain.reply.code, stderr: plain.reply.stderr }, { code: 0, stderr: '' }, 'a domain we do not handle');
});

test('resolve: concurrent first requests for one emulator share one probe and one source per kind', async () => {
  const config = validateConfig({ socket, cacheDir: join(dir.path, 'cache-concurrent'), pool: { size: 0 } });
  const resolve = makeResolver(config, createLogger('error'), () => {}, { allowlist: new EmulatorAllowlist() });
  const [a, b] = await Promise.all([resolve(QEMU), resolve(QEMU, 'rss')]);
  assert.equal(a, b, 'one source object: a refill of one is not dropped for the other');
  assert.match(a.key, /#\d+:\d+:\d+:[\d.]+:[\d.]+ rss$/, 'the pool key is the build and the kind');
  assert.equal(await resolve(QEMU), a, 'the next request finds it');
});
