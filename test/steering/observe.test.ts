/**
 * The host-side facts, read from a real QEMU 10 started by `virt-ebpf exec` as libvirt-qemu
 * with our eBPF fds and paused before any guest code (-S): its tap queues found by fd (one of four
 * attached: QEMU detaches the rest until a driver asks for them), the tap's vnet header as QEMU
 * set it at realize (no driver yet: 10 bytes), program runs counted exactly
 * while the window is open (runs made with BPF_PROG_TEST_RUN, which the kernel counts the same
 * way), and status's steering answer for that NIC. The guest-backed checks are in
 * test/libvirt-guest/steering.test.ts.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lookupUser } from '../../src/sys/users';
import { openProgById, progInfo, progTestRun } from '../../src/bpf';
import { collectStatus, observeStatus, trustedQemuUids } from '../../src/status';
import { HEADER_INITIAL, readTapHeader, sampleRuns, tapFdsOf, tapQueues } from '../../src/steering';
import { needRoot, watchFds } from '../harness';
import { startQemu, type TestQemu } from '../status/qemu';

let q: TestQemu;
let checkFds: () => void;

before(async () => {
  needRoot('starts QEMU as libvirt-qemu through virt-ebpf exec, duplicates its tap fd, counts BPF program runs');
  checkFds = watchFds();
  q = await startQemu('exec', { name: `vebpf-observe-${process.pid}` });
});

after(async () => {
  await q?.stop();
  checkFds?.();
});

const FRAME = Buffer.concat([Buffer.from('ffffffffffff525400000001', 'hex'), Buffer.from([0x08, 0x06]), Buffer.alloc(46)]);

test("QEMU's queues of the tap are found by fd, and the tap's vnet header reads as QEMU set it (10 bytes before a driver)", () => {
  const fds = tapFdsOf(q.pid, q.tap.name);
  assert.equal(fds.length, 4, 'one fd per queue');
  for (const fd of fds) assert.match(readFileSync(`/proc/${q.pid}/fdinfo/${fd}`, 'utf8'), new RegExp(`^iff:\\s+${q.tap.name}$`, 'm'));
  assert.deepEqual(readTapHeader(q.pid, q.tap.name), { bytes: HEADER_INITIAL });
  // QEMU detaches the tap's queues beyond the first at realize; a driver's `set queue pairs` attaches them.
  assert.equal(tapQueues(q.tap.name), 1, 'one queue attached before a driver asks for more');
  assert.deepEqual(readTapHeader(q.pid, 'vebpf-nosuch'), { error: 'QEMU holds no queue of vebpf-nosuch' });
  assert.deepEqual(readTapHeader(q.pid, undefined), { error: 'the tap is unknown' });
  assert.equal(tapFdsOf(q.pid, q.tap.name).length, 4, 'the duplicate was closed again; QEMU still holds its own');
});

test('program runs are counted for exactly the window, then statistics are off again', async () => {
  const nic = collectStatus(String(q.pid)).domains[0].nics[0];
  const progId = nic.ebpf!.progId;
  const prog = openProgById(progId);
  try {
    const window = sampleRuns([{ progId, tap: q.tap.name }], 400);
    await new Promise((r) => setTimeout(r, 100));
    for (let i = 0; i < 5; i++) progTestRun(prog.fd, FRAME);
    const fact = (await window).get(progId)!;
    assert.ok(!('error' in fact), JSON.stringify(fact));
    assert.equal(fact.runs, 5, 'the five runs inside the window');
    assert.equal(fact.frames, 0, 'QEMU is paused: the tap passed it nothing');
    assert.ok(fact.windowMs >= 390, `window ${fact.windowMs} ms`);

    const statsOn = readFileSync('/proc/sys/kernel/bpf_stats_enabled', 'utf8').trim() === '1';
    const after0 = progInfo(prog.fd).runCnt;
    progTestRun(prog.fd, FRAME);
    const after1 = progInfo(prog.fd).runCnt;
    if (statsOn) console.log('# kernel.bpf_stats_enabled is 1 on this host: runs are counted outside the window too');
    else assert.equal(after1, after0, 'no counting once the window is closed (kernel.bpf_stats_enabled untouched)');
    assert.equal(readFileSync('/proc/sys/kernel/bpf_stats_enabled', 'utf8').trim(), statsOn ? '1' : '0', 'the sysctl is never written');
  } finally {
    prog.close();
  }
  const missing = await sampleRuns([{ progId }], 10);
  assert.deepEqual(missing.get(progId), { error: 'the tap is unknown' });
});

test("status's steering for the paused QEMU: none (likely) — its driver has not negotiated — with the facts named", () => {
  const nic = collectStatus(String(q.pid)).domains[0].nics[0];
  const s = nic.steering!;
  assert.deepEqual([s.kind, s.confidence, s.guestHashReport], ['none', 'likely', 'not-offered']);
  assert.match(s.reason, /not negotiated its features/);
  assert.ok(s.evidence.some((e) => e === "tap vnet header 10 bytes (TUNGETVNETHDRSZ): the guest's driver has not set its features"), s.evidence.join('\n'));
  assert.ok(s.evidence.some((e) => e === 'tap queues attached: 1'), s.evidence.join('\n'));
  assert.equal(nic.hashReport, false);
});

test("a QEMU of an account other than root's or libvirt's QEMU account: its tap fds are never duplicated (its owner could swap them), and the answer says so", () => {
  const nic = collectStatus(String(q.pid), { trustedUids: new Set([0]) }).domains[0].nics[0];
  const s = nic.steering!;
  assert.ok(
    s.evidence.some((e) => e.startsWith("tap vnet header: unreadable (not read: this QEMU runs as neither root nor libvirt's QEMU account")),
    s.evidence.join('\n'),
  );
  assert.equal(trustedQemuUids().has(lookupUser('libvirt-qemu').uid), true, "libvirt's QEMU account (qemu.conf) is trusted by default");
});

test('status and doctor never run an emulator: one the probe cache does not know is reported as not probed yet, and the cache stays empty', async () => {
  const cacheDir = mkdtempSync(join(tmpdir(), 'vebpf-observe-cache-'));
  try {
    const report = await observeStatus(String(q.pid), { cacheDir, sampleMs: 0 });
    const emulator = report.domains[0].emulator!;
    assert.match(emulator.problem ?? '', /^not probed yet .*the broker probes it when a domain starts with it$/, JSON.stringify(emulator));
    assert.equal(emulator.version, undefined);
    assert.deepEqual(readdirSync(cacheDir), [], 'nothing was probed into the cache');
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
});
