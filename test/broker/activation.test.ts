/**
 * Socket activation for real: `systemd-socket-activate` (systemd's own implementation of the
 * protocol, no running systemd needed) holds the listening socket and execs
 * `virt-ebpf broker` on the first connection, as virt-ebpfd.socket does. Peers are processes
 * of their own running as root or as libvirt's QEMU account; the socket's mode and directory
 * are those templates/virt-ebpfd.socket describes. Sockets that are not an AF_UNIX listening
 * stream are refused with one line. The choice among several passed fds, and the clearing of
 * the variables, are also checked as pure functions.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { chooseActivationFd, socketModeProblem, takeActivationSocket, BROKER_FD_NAME } from '../../src/broker/activation';
import { isVirtEbpfError } from '../../src/errors';
import { lookupUser } from '../../src/sys/users';
import { PYTHON, QEMU, REPO, needRoot, tempDir } from '../harness';
import { peer, ROOT, served, type Account } from './support';

const CLI = join(REPO, 'dist/src/cli/main.js');
const UNIT = join(REPO, 'templates/virt-ebpfd.socket');

// --- pure: which fd, and the variables leave the environment ---------------------------------

test('chooseActivationFd: one fd is fd 3; several need exactly one named "broker"; other processes and no fds mean no activation', () => {
  assert.equal(chooseActivationFd({}, 100), undefined);
  assert.equal(chooseActivationFd({ LISTEN_PID: '99', LISTEN_FDS: '1' }, 100), undefined, 'meant for another process');
  assert.equal(chooseActivationFd({ LISTEN_PID: '100', LISTEN_FDS: '0' }, 100), undefined);
  assert.deepEqual(chooseActivationFd({ LISTEN_PID: '100', LISTEN_FDS: '1' }, 100), { fd: 3, name: undefined, passed: [3] });
  assert.deepEqual(chooseActivationFd({ LISTEN_PID: '100', LISTEN_FDS: '1', LISTEN_FDNAMES: 'virt-ebpfd.socket' }, 100), { fd: 3, name: 'virt-ebpfd.socket', passed: [3] });
  assert.deepEqual(chooseActivationFd({ LISTEN_PID: '100', LISTEN_FDS: '3', LISTEN_FDNAMES: `a:${BROKER_FD_NAME}:b` }, 100), { fd: 4, name: 'broker', passed: [3, 4, 5] });
  const refused = (vars: Record<string, string>, message: RegExp): void =>
    assert.throws(() => chooseActivationFd(vars, 100), (e) => isVirtEbpfError(e, 'BROKER_ACTIVATION') && message.test(e.message) && e.remedy.length > 0);
  refused({ LISTEN_PID: '100', LISTEN_FDS: '2' }, /2 sockets were passed \(without names\) and none is named "broker"/);
  refused({ LISTEN_PID: '100', LISTEN_FDS: '2', LISTEN_FDNAMES: 'x:y' }, /named x, y\) and none is named "broker"/);
  refused({ LISTEN_PID: '100', LISTEN_FDS: '2', LISTEN_FDNAMES: 'broker:broker' }, /more than one is named "broker"/);
  refused({ LISTEN_PID: '100', LISTEN_FDS: '2', LISTEN_FDNAMES: 'broker' }, /LISTEN_FDNAMES names 1 fds but LISTEN_FDS is 2/);
  refused({ LISTEN_PID: '100', LISTEN_FDS: 'two' }, /LISTEN_FDS="two" is not a count/);
  refused({ LISTEN_PID: 'me', LISTEN_FDS: '1' }, /LISTEN_PID="me" is not a process id/);
});

test('takeActivationSocket removes LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES from the environment, for this process or not', () => {
  const env: NodeJS.ProcessEnv = { LISTEN_PID: '1', LISTEN_FDS: '1', LISTEN_FDNAMES: 'x', PATH: '/usr/bin' };
  assert.equal(takeActivationSocket(env, 12345), undefined, 'pid 1 is not us');
  assert.deepEqual(env, { PATH: '/usr/bin' });
});

test('socketModeProblem: a socket only root may write to keeps QEMU out; 0666, or 0660 with an allowlisted group, lets it in', () => {
  const qemuGid = 64055;
  assert.equal(socketModeProblem({ mode: 0o140666, uid: 0, gid: 0 }, new Set([qemuGid])), undefined);
  assert.equal(socketModeProblem({ mode: 0o140660, uid: 0, gid: qemuGid }, new Set([qemuGid])), undefined);
  assert.match(socketModeProblem({ mode: 0o140660, uid: 0, gid: 0 }, new Set([qemuGid]))!, /mode 0660, owner 0:0: QEMU running as an allowlisted account cannot connect.*SocketMode=0666/);
  assert.match(socketModeProblem({ mode: 0o140755, uid: 0, gid: 0 }, new Set([qemuGid]))!, /mode 0755/);
});

// --- real: systemd-socket-activate ----------------------------------------------------------

/** The [Socket] settings of the unit as shipped. */
function unitSocket(): { listen: string; socketMode: number; directoryMode: number; user?: string; group?: string } {
  const text = readFileSync(UNIT, 'utf8');
  const get = (key: string): string | undefined => new RegExp(`^${key}=(.*)$`, 'm').exec(text)?.[1].trim();
  const listen = get('ListenStream');
  assert.ok(listen, `${UNIT} has a ListenStream=`);
  return { listen, socketMode: parseInt(get('SocketMode') ?? '0666', 8), directoryMode: parseInt(get('DirectoryMode') ?? '0755', 8), user: get('SocketUser'), group: get('SocketGroup') };
}

const unit = unitSocket();
const dir = tempDir('virt-ebpf-activation-');
const qemuAccount = lookupUser('libvirt-qemu');
const QEMU_USER: Account = { uid: qemuAccount.uid, gid: qemuAccount.gid };
const children: ChildProcess[] = [];

interface Activator {
  child: ChildProcess;
  /** Everything it printed: systemd-socket-activate's own lines, then the broker's. */
  output(): string;
  exited: Promise<number | null>;
}

/**
 * `systemd-socket-activate ARGS… node CLI broker --config CONFIG` (or another command made
 * from the config's path).
 */
function activate(args: string[], config: object, command?: (cfg: string) => string[]): Activator {
  const cfg = join(dir.path, `config-${children.length}.json`);
  writeFileSync(cfg, JSON.stringify({ cacheDir: join(dir.path, 'cache'), pool: { size: 0 }, ...config }));
  const argv = command ? command(cfg) : ['systemd-socket-activate', ...args, process.execPath, CLI, 'broker', '--config', cfg];
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.once('close', (code) => r(code))); // at 'close' its output is whole
  return { child, output: () => out, exited };
}

async function until<T>(what: string, probe: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const cmdlineOf = (pid: number): string[] => readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').slice(0, -1);

/** A socket path laid out like the unit's (…/run/virt-ebpf/broker.sock), its directory made with DirectoryMode. */
function socketPath(name: string): string {
  const d = join(dir.path, name, 'virt-ebpf');
  mkdirSync(d, { recursive: true, mode: unit.directoryMode });
  chmodSync(join(dir.path, name), 0o755);
  chmodSync(d, unit.directoryMode);
  return join(d, unit.listen.split('/').pop()!);
}

/**
 * The one `virt-ebpf:` line a refusing broker printed, checked to be its only one. The broker
 * is the activator's process itself (it execs), or with --accept a child of it, whose exit the
 * activator reports.
 */
async function refusal(a: Activator, opts: { accept?: boolean } = {}): Promise<string> {
  if (opts.accept) {
    await until(`the refusal: ${a.output()}`, () => /^virt-ebpf:/m.test(a.output()) && /exited with status 1|died with code 1|status=1/i.test(a.output()));
  } else {
    const code = await Promise.race([a.exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 30_000).unref())]);
    assert.equal(code, 1, `the broker exits 1 (within 30 s): ${a.output()}`);
  }
  const lines = a.output().split('\n').filter((l) => l.startsWith('virt-ebpf:'));
  assert.equal(lines.length, 1, `exactly one line from the broker: ${a.output()}`);
  assert.match(lines[0], /^virt-ebpf: socket activation: .* \(BROKER_ACTIVATION\); \S.*$/);
  return lines[0];
}

before(() => {
  needRoot('the broker loads BPF; peers drop to libvirt-qemu');
  chmodSync(dir.path, 0o755);
  assert.equal(unit.listen, '/run/virt-ebpf/broker.sock', 'the unit listens where the wrapper and hook connect');
});

after(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  dir.remove();
});

test('systemd-socket-activate with the unit\'s socket: the broker starts on the first connection and serves libvirt-qemu real BPF fds', async () => {
  const sock = socketPath('run');
  const a = activate(['-l', sock], { socket: sock });
  await until('the listening socket', () => existsSync(sock));
  // systemd gives a unit's socket its SocketMode= (systemd-socket-activate always makes 0644).
  chmodSync(sock, unit.socketMode);
  const st = statSync(sock);
  assert.ok(st.isSocket());
  assert.equal(st.mode & 0o7777, unit.socketMode, `mode ${(st.mode & 0o7777).toString(8)}, as SocketMode= says`);
  assert.equal(unit.user, undefined, 'the unit sets no SocketUser: the socket is root\'s');
  assert.equal(unit.group, undefined, 'the unit sets no SocketGroup');
  assert.deepEqual([st.uid, st.gid], [0, 0]);
  assert.equal(statSync(join(sock, '..')).mode & 0o7777, unit.directoryMode, 'its directory as DirectoryMode= says');
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(cmdlineOf(a.child.pid!)[0], 'systemd-socket-activate', 'no broker before anyone connects');
  assert.doesNotMatch(a.output(), /broker listening/);

  const hello = await served(QEMU_USER, sock, { op: 'hello' });
  assert.equal(hello.reply.ok, true);
  assert.equal(hello.reply.broker, 'virt-ebpfd');
  assert.equal(hello.reply.uid, QEMU_USER.uid, 'SO_PEERCRED works on the inherited socket');
  const argv = cmdlineOf(a.child.pid!);
  assert.deepEqual(argv.slice(1, 3), [CLI, 'broker'], `the same process is now the broker: ${argv.join(' ')}`);
  assert.match(a.output(), /listening socket from socket activation \{"fd":3,"path":"[^"]*\/run\/virt-ebpf\/broker\.sock"\}/);
  assert.doesNotMatch(a.output(), /warn/, 'nothing to warn about');

  const { reply, fds } = await served(QEMU_USER, sock, { op: 'exec-plan', emulator: QEMU, argv: ['-device', JSON.stringify({ driver: 'virtio-net-pci', rss: true, netdev: 'n0' })] });
  assert.equal(reply.fds, 4);
  assert.deepEqual(fds.map((f) => f.kind), ['prog', 'map', 'map', 'map'], 'a real program and its three maps, in the peer');
  assert.ok(fds.every((f) => (f.id ?? 0) > 0));

  a.child.kill('SIGTERM');
  assert.equal(await a.exited, 0, a.output());
});

test('a socket QEMU\'s account cannot write to: the broker serves root, warns with the fix, and libvirt-qemu is kept out by the kernel', async () => {
  const sock = socketPath('run-0755');
  const a = activate(['-l', sock], { socket: sock });
  await until('the listening socket', () => existsSync(sock));
  assert.equal(statSync(sock).mode & 0o7777, 0o644, 'systemd-socket-activate\'s own mode: only root may connect');
  const hello = await served(ROOT, sock, { op: 'hello' });
  assert.equal(hello.reply.uid, 0);
  await until('the warning', () => /activated socket .*: mode 0\d{3}, owner 0:0: QEMU running as an allowlisted account cannot connect.*SocketMode=0666/.test(a.output()));
  const denied = await peer(QEMU_USER, sock, { op: 'hello' });
  assert.equal(denied.ok, false);
  assert.match((denied as { message: string }).message, /EACCES|Permission denied/);
  a.child.kill('SIGTERM');
  assert.equal(await a.exited, 0, a.output());
});

test('LISTEN_FDNAMES: of two sockets the broker serves the one named "broker" and closes the other', async () => {
  const other = socketPath('run-other');
  const sock = socketPath('run-named');
  const a = activate(['-l', other, '-l', sock, `--fdname=other:${BROKER_FD_NAME}`], { socket: sock });
  await until('both sockets', () => existsSync(other) && existsSync(sock));
  chmodSync(sock, unit.socketMode);
  const hello = await served(ROOT, sock, { op: 'hello' });
  assert.equal(hello.reply.ok, true);
  assert.match(a.output(), /listening socket from socket activation \{"fd":4,"name":"broker","path":"[^"]*\/run-named\/virt-ebpf\/broker\.sock"\}/);
  const err = await new Promise<NodeJS.ErrnoException>((resolve) => {
    const s = net.connect(other);
    s.once('connect', () => {
      s.destroy();
      resolve(Object.assign(new Error('connected'), { code: 'CONNECTED' }));
    });
    s.once('error', resolve);
  });
  assert.equal(err.code, 'ECONNREFUSED', 'nobody listens on the other socket any more');
  a.child.kill('SIGTERM');
  assert.equal(await a.exited, 0, a.output());
});

test('two sockets, none named "broker": the broker refuses to start with one line', async () => {
  const one = socketPath('run-one');
  const two = socketPath('run-two');
  const a = activate(['-l', one, '-l', two, '--fdname=one:two'], { socket: one });
  await until('the sockets', () => existsSync(one) && existsSync(two));
  net.connect(one).on('error', () => undefined);
  assert.match(await refusal(a), /2 sockets were passed \(named one, two\) and none is named "broker".*FileDescriptorName=broker/);
});

/** Wake an activator by connecting over TCP (any error is the point of the test). */
/**
 * One connection to systemd-socket-activate's TCP socket, retried until it is taken: fd 3 shows
 * in /proc as soon as the socket exists, a moment before it listens.
 */
async function poke(port: number): Promise<void> {
  await until('a connection to the activated TCP socket', async () => {
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect(port, '127.0.0.1');
      c.unref(); // left open: systemd-socket-activate starts the broker on it
      c.once('connect', () => resolve(true)).once('error', () => resolve(false));
    });
    return ok || undefined;
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

test('refused with one line: an AF_INET socket, a datagram socket, a connection (Accept=yes), a file that is no socket', async () => {
  const port = await freePort();
  const tcp = activate(['-l', `127.0.0.1:${port}`], {});
  await until('the TCP socket', () => existsSync(`/proc/${tcp.child.pid}/fd/3`));
  await poke(port);
  assert.match(await refusal(tcp), /fd 3 is an AF_INET socket; the broker serves local peers on AF_UNIX only/);

  const dgramPath = socketPath('run-dgram');
  const dgram = activate(['--datagram', '-l', dgramPath], {});
  await until('the datagram socket', () => existsSync(dgramPath));
  const send = spawn(PYTHON, ['-c', 'import socket,sys; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b"x", sys.argv[1])', dgramPath]);
  await new Promise((r) => send.once('exit', r));
  assert.match(await refusal(dgram), /fd 3 is a datagram \(SOCK_DGRAM\) socket, not a stream/);

  const acceptPath = socketPath('run-accept');
  const accept = activate(['--accept', '-l', acceptPath], {});
  await until('the socket', () => existsSync(acceptPath));
  const conn = net.connect(acceptPath).on('error', () => undefined);
  assert.match(await refusal(accept, { accept: true }), /fd 3 is a connected stream, not a listening socket/);
  conn.destroy();
  accept.child.kill('SIGTERM');
  await accept.exited;

  // Not systemd at all: the variables name this process, and fd 3 is /dev/null.
  const file = activate([], {}, (cfg) => ['sh', '-c', `exec 3</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec "${process.execPath}" "${CLI}" broker --config "${cfg}"`]);
  assert.match(await refusal(file), /fd 3 is a character device, not a socket/);
});
