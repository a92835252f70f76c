/**
 * The fake helper-protocol emulator speaks QMP the way QEMU does, on every monitor form a
 * probe or libvirt uses. The raw tests pin the wire format (bytes as QEMU 10 sends them);
 * the last one drives it with our own QMP client.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, renameSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { deviceListProperties, QmpClient, queryCommands, queryHelperPaths, queryVersion, quit } from '../../src/qmp';
import { isVirtEbpfError } from '../../src/errors';
import * as libc from '../../src/sys/libc';
import { needRoot, tempDir, watchFds } from '../harness';
import { buildHelperDoubles, processesMentioning, type HelperDoubles } from './doubles';

let doubles: HelperDoubles;
let checkFds: () => void;
const tmp = tempDir('virt-ebpf-fake-emu-');
const children = new Set<ChildProcess>();

before(async () => {
  needRoot('the doubles are built root-owned');
  doubles = await buildHelperDoubles();
  checkFds = watchFds();
});

after(async () => {
  for (const c of children) {
    c.kill('SIGKILL');
    await exited(c);
  }
  tmp.remove();
  checkFds();
  assert.deepEqual(processesMentioning(doubles.dir), []);
});

function startEmulator(args: string[], extraFd?: number): ChildProcess {
  const c = spawn(doubles.emulator, ['-S', '-no-user-config', '-nodefaults', '-nographic', '-machine', 'none', ...args], {
    stdio: extraFd === undefined ? ['ignore', 'ignore', 'pipe'] : ['ignore', 'ignore', 'pipe', extraFd],
  });
  children.add(c);
  c.on('exit', () => children.delete(c));
  return c;
}

function exited(c: ChildProcess): Promise<number | null> {
  if (c.exitCode !== null || c.signalCode !== null) return Promise.resolve(c.exitCode);
  return new Promise((resolve) => c.once('exit', (code) => resolve(code)));
}

/** wait=off: the socket appears some time after start, like QEMU's */
async function connect(path: string, timeoutMs = 10_000): Promise<net.Socket> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect(path, () => resolve(s));
        s.once('error', reject);
      });
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** Minimal line reader: QEMU ends every JSON line with CRLF. */
function lines(sock: net.Socket): { next(): Promise<string>; send(o: unknown): void } {
  let buf = '';
  const waiters: ((l: string) => void)[] = [];
  const queued: string[] = [];
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => {
    buf += d;
    for (let i = buf.indexOf('\r\n'); i >= 0; i = buf.indexOf('\r\n')) {
      const l = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const w = waiters.shift();
      if (w) w(l);
      else queued.push(l);
    }
  });
  return {
    next: () => (queued.length ? Promise.resolve(queued.shift()!) : new Promise((r) => waiters.push(r))),
    send: (o) => sock.write(`${JSON.stringify(o)}\n`),
  };
}

async function rawSession(path: string, c: ChildProcess): Promise<void> {
  const sock = await connect(path);
  const q = lines(sock);
  assert.equal(
    await q.next(),
    '{"QMP": {"version": {"qemu": {"micro": 50, "minor": 1, "major": 6}, "package": "v6.1.0-helper-protocol"}, "capabilities": ["oob"]}}',
  );
  q.send({ execute: 'query-helper-paths' });
  assert.equal(await q.next(), '{"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with \'qmp_capabilities\'"}}');
  q.send({ execute: 'qmp_capabilities', id: 1 });
  assert.equal(await q.next(), '{"return": {}, "id": 1}');
  q.send({ execute: 'query-version', id: 'v' });
  assert.deepEqual(JSON.parse(await q.next()), { return: { qemu: { micro: 50, minor: 1, major: 6 }, package: 'v6.1.0-helper-protocol' }, id: 'v' });
  q.send({ execute: 'query-commands' });
  const names = (JSON.parse(await q.next()) as { return: { name: string }[] }).return.map((x) => x.name);
  assert.ok(names.includes('query-helper-paths'));
  assert.ok(!names.includes('request-ebpf'));
  q.send({ execute: 'device-list-properties', arguments: { typename: 'virtio-net-pci' } });
  const props = (JSON.parse(await q.next()) as { return: { name: string; type: string }[] }).return;
  assert.deepEqual(props.find((p) => p.name === 'ebpf_rss_fds'), { name: 'ebpf_rss_fds', type: 'str' });
  assert.equal(props.find((p) => p.name === 'ebpf-rss-fds'), undefined);
  q.send({ execute: 'device-list-properties', arguments: { typename: 'nosuch' } });
  assert.equal(await q.next(), '{"error": {"class": "DeviceNotFound", "desc": "Device \'nosuch\' not found"}}');
  q.send({ execute: 'query-helper-paths', id: 7 });
  assert.equal(await q.next(), `{"return": [{"name": "qemu-ebpf-rss-helper", "path": ${JSON.stringify(doubles.helpers.good)}}], "id": 7}`);
  q.send({ execute: 'request-ebpf', arguments: { id: 'rss' }, id: 8 });
  assert.equal(await q.next(), '{"id": 8, "error": {"class": "CommandNotFound", "desc": "The command request-ebpf has not been found"}}');
  q.send({ execute: 'quit' });
  assert.match(await q.next(), /^\{"timestamp": \{"seconds": \d+, "microseconds": \d+\}, "event": "SHUTDOWN", "data": \{"guest": false, "reason": "host-qmp-quit"\}\}$/);
  assert.equal(await q.next(), '{"return": {}}');
  assert.equal(await exited(c), 0);
  sock.destroy();
}

test('-qmp unix:PATH,server=on,wait=off', async () => {
  const path = join(tmp.path, 'qmp.sock');
  const c = startEmulator(['-qmp', `unix:${path},server=on,wait=off`]);
  await rawSession(path, c);
  assert.equal(existsSync(path), false, 'the socket is removed on quit');
});

test('-chardev socket,path=… + -mon chardev=…,mode=control (libvirt style)', async () => {
  const path = join(tmp.path, 'mon.sock');
  const c = startEmulator(['-chardev', `socket,id=charmonitor,path=${path},server=on,wait=off`, '-mon', 'chardev=charmonitor,id=monitor,mode=control']);
  await rawSession(path, c);
});

test('-chardev socket,fd=N: a listening socket pre-opened by the caller', async () => {
  // Make a listening socket reachable under a path we control, then hand only the fd over.
  const bound = join(tmp.path, 'pre.sock');
  const path = join(tmp.path, 'pre-renamed.sock');
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(bound, r));
  const fd = libc.dupCloexec((server as unknown as { _handle: { fd: number } })._handle.fd);
  renameSync(bound, path); // Node unlinks `bound` when the server closes; the socket stays at `path`
  await new Promise<void>((r) => server.close(() => r()));
  try {
    const c = startEmulator(['-chardev', 'socket,id=charmonitor,fd=3,server=on,wait=off', '-mon', 'chardev=charmonitor,id=monitor,mode=control'], fd);
    await rawSession(path, c);
  } finally {
    libc.close(fd);
  }
});

test('our QMP client probes it as a helper-protocol emulator', async () => {
  const path = join(tmp.path, 'client.sock');
  const c = startEmulator(['-qmp', `unix:${path},server=on,wait=off`]);
  (await connect(path)).destroy(); // wait for the socket
  const qmp = await QmpClient.connect(path, { timeoutMs: 5_000 });
  try {
    assert.deepEqual(await queryVersion(qmp), { major: 6, minor: 1, micro: 50, package: 'v6.1.0-helper-protocol' });
    const cmds = await queryCommands(qmp);
    assert.ok(cmds.includes('query-helper-paths') && !cmds.includes('request-ebpf'));
    const prop = (await deviceListProperties(qmp, 'virtio-net-pci')).find((p) => p.name === 'ebpf_rss_fds');
    assert.equal(prop?.type, 'str');
    assert.deepEqual(await queryHelperPaths(qmp), [{ name: 'qemu-ebpf-rss-helper', path: doubles.helpers.good }]);
    await assert.rejects(qmp.execute('request-ebpf', { id: 'rss' }), (e: unknown) => isVirtEbpfError(e, 'QMP_COMMAND') && e.fields.class === 'CommandNotFound');
    await quit(qmp);
  } finally {
    qmp.close();
  }
  assert.equal(await exited(c), 0);
});
