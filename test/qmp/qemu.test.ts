/**
 * The QMP client against the real QEMU 10.0.2: commands, fd passing with SCM_RIGHTS (checked
 * in QEMU's own /proc fd table), events apart from replies, and framing limits.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, openSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { isVirtEbpfError } from '../../src/errors';
import { QmpClient, closefd, deviceListProperties, getfd, qomGet, queryCommands, queryVersion, quit, requestEbpf } from '../../src/qmp';
import { tempDir, watchFds } from '../harness';
import { LiveQemu, startQemu } from './live-qemu';

let qemu: LiveQemu;
let qmp: QmpClient;
let checkFds: () => void;
const files = tempDir('virt-ebpf-getfd-');

before(async () => {
  checkFds = watchFds();
  qemu = startQemu();
  qmp = await qemu.connect();
});

after(async () => {
  qmp?.close();
  await qemu?.stop();
  files.remove();
  checkFds();
});

/** What QEMU holds open, by target path. */
function qemuFdTargets(pid: number): string[] {
  const out: string[] = [];
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      out.push(readlinkSync(`/proc/${pid}/fd/${fd}`));
    } catch {
      /* closed meanwhile */
    }
  }
  return out;
}

test('greeting and query-version report QEMU 10.0.2', async () => {
  assert.deepEqual([qmp.greeting.version.major, qmp.greeting.version.minor, qmp.greeting.version.micro], [10, 0, 2]);
  const v = await queryVersion(qmp);
  assert.deepEqual([v.major, v.minor, v.micro], [10, 0, 2]);
  assert.match(v.package, /10\.0\.2/);
});

test('query-commands lists request-ebpf and getfd, and no helper-protocol command', async () => {
  const names = await queryCommands(qmp);
  assert.ok(names.includes('request-ebpf'));
  assert.ok(names.includes('getfd'));
  assert.ok(!names.includes('query-helper-paths'));
});

test('device-list-properties virtio-net-pci: ebpf-rss-fds is a list; unknown device is a QMP_COMMAND error', async () => {
  const props = await deviceListProperties(qmp, 'virtio-net-pci');
  assert.deepEqual(
    props.filter((p) => p.name === 'ebpf-rss-fds').map((p) => p.type),
    ['list'],
  );
  assert.equal(props.find((p) => p.name === 'rss')?.type, 'bool');
  await assert.rejects(deviceListProperties(qmp, 'no-such-device'), (e: unknown) => isVirtEbpfError(e, 'QMP_COMMAND') && typeof e.fields.class === 'string' && /no-such-device/.test(String(e.fields.desc)));
});

test('request-ebpf rss returns the ELF object; an unknown id is refused by QEMU', async () => {
  const obj = await requestEbpf(qmp, 'rss');
  assert.equal(obj.subarray(0, 4).toString('latin1'), '\x7fELF');
  assert.ok(obj.length > 15_000 && obj.length < 30_000, `object is ${obj.length} bytes`);
  await assert.rejects(requestEbpf(qmp, 'nope'), (e: unknown) => isVirtEbpfError(e, 'QMP_COMMAND') && e.fields.class === 'GenericError');
});

test('qom-get reads a property', async () => {
  assert.equal(await qomGet<string>(qmp, '/machine', 'type'), 'none-machine');
});

test('getfd passes a real fd with the command; closefd releases it in QEMU', async () => {
  const file = join(files.path, 'getfd-marker-a');
  writeFileSync(file, 'a');
  const fd = openSync(file, 'r');
  try {
    await getfd(qmp, 'marker-a', fd);
  } finally {
    closeSync(fd); // QEMU has its own copy now
  }
  assert.ok(qemuFdTargets(qemu.pid).includes(file), 'QEMU holds the passed fd');
  await closefd(qmp, 'marker-a');
  assert.ok(!qemuFdTargets(qemu.pid).includes(file), 'closefd released it');
  await assert.rejects(closefd(qmp, 'marker-a'), (e: unknown) => isVirtEbpfError(e, 'QMP_COMMAND') && /not found/.test(String(e.fields.desc)));
});

test('getfd without an fd is refused by QEMU: proof the fd really rides with our command', async () => {
  await assert.rejects(qmp.execute('getfd', { fdname: 'nothing' }), (e: unknown) => isVirtEbpfError(e, 'QMP_COMMAND') && /SCM_RIGHTS/.test(String(e.fields.desc)));
});

test('pipelined getfd commands: each fd lands under its own name', async () => {
  const names = ['p0', 'p1', 'p2', 'p3'];
  const paths = names.map((n) => join(files.path, `pipelined-${n}`));
  paths.forEach((p) => writeFileSync(p, p));
  const fds = paths.map((p) => openSync(p, 'r'));
  try {
    await Promise.all(names.map((n, i) => getfd(qmp, n, fds[i])));
  } finally {
    fds.forEach((f) => closeSync(f));
  }
  assert.ok(paths.every((p) => qemuFdTargets(qemu.pid).includes(p)));
  // Closing p2 must drop exactly the file sent with p2's command.
  await closefd(qmp, 'p2');
  const held = qemuFdTargets(qemu.pid);
  assert.deepEqual(
    paths.map((p) => held.includes(p)),
    [true, true, false, true],
  );
  for (const n of ['p0', 'p1', 'p3']) await closefd(qmp, n);
});

test('a reply longer than maxLineBytes: QMP_LINE_TOO_LONG on that connection only', async () => {
  // QEMU serves one monitor client at a time: free it for a second client first.
  qmp.close();
  const small = await qemu.connect({ maxLineBytes: 4096 });
  await assert.rejects(queryCommands(small), (e: unknown) => isVirtEbpfError(e, 'QMP_LINE_TOO_LONG'));
  assert.equal(small.closed, true);
  qmp = await qemu.connect();
  assert.ok((await queryCommands(qmp)).length > 100);
});

test('events stay apart from replies: cont → RESUME, stop → STOP, quit → SHUTDOWN, then QMP_CLOSED', async () => {
  const seen: string[] = [];
  qmp.onEvent((e) => seen.push(e.event));
  const resume = qmp.waitForEvent('RESUME', 5000);
  assert.deepEqual(await qmp.execute('cont'), {});
  assert.equal((await resume).event, 'RESUME');
  const stop = qmp.waitForEvent('STOP', 5000);
  assert.deepEqual(await qmp.execute('stop'), {});
  await stop;
  const exited = new Promise<number | null>((r) => qemu.proc.once('exit', (code) => r(code)));
  await quit(qmp);
  const shutdown = await qmp.waitForEvent('SHUTDOWN', 5000, true);
  assert.deepEqual(shutdown.data, { guest: false, reason: 'host-qmp-quit' });
  assert.deepEqual(seen, ['RESUME', 'STOP', 'SHUTDOWN']);
  await assert.rejects(qmp.execute('query-status'), (e: unknown) => isVirtEbpfError(e, 'QMP_CLOSED'));
  assert.equal(await exited, 0);
});
