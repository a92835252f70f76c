/**
 * The steering decision on every combination of host-side facts that matters: the answer, how
 * sure it is, and that the facts it rests on are named. Pure; the guest-backed proof is
 * test/libvirt-guest/steering.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decideSteering, guestHashReport, steeringLine, STEERING_LABELS, type SteeringFacts } from '../../src/steering';

const base: SteeringFacts = { rss: true, hashReportOffered: false, vhost: false, program: true, header: { bytes: 12 }, tapQueues: 4, maps: 'configured' };
const traffic = (runs: number, frames = 50) => ({ runs, frames, windowMs: 1000 });

test('a NIC without rss: none, certain, whatever else is seen', () => {
  const s = decideSteering({ ...base, rss: false, program: false, runs: traffic(0) });
  assert.deepEqual([s.kind, s.label, s.confidence], ['none', 'none', 'certain']);
  assert.match(s.reason, /rss is off/);
  assert.match(s.evidence[0], /rss=off/);
});

test('the program ran on the tap\'s frames: eBPF, certain, with the counts as evidence', () => {
  const s = decideSteering({ ...base, runs: traffic(48, 50) });
  assert.deepEqual([s.kind, s.label, s.confidence], ['ebpf', 'eBPF', 'certain']);
  assert.ok(s.evidence.some((e) => /program ran 48 times while the tap passed 50 frames to QEMU in 1000 ms/.test(e)), s.evidence.join('\n'));
  assert.match(steeringLine(s), /^eBPF \(certain\): the tap runs the NIC's program/);
});

test('hash report negotiated (20-byte header): QEMU software RSS because the guest enabled hash report, likely', () => {
  for (const runs of [traffic(0), undefined, { error: 'x' }]) {
    const s = decideSteering({ ...base, hashReportOffered: true, header: { bytes: 20 }, runs, maps: 'unconfigured' });
    assert.equal(s.kind, 'software-hash-report');
    assert.equal(s.label, 'QEMU software RSS because the guest enabled hash report');
    assert.equal(s.confidence, 'likely', 'whether the guest sent its RSS configuration cannot be seen');
    assert.equal(s.guestHashReport, 'negotiated');
    assert.ok(s.evidence.some((e) => /20 bytes .*VIRTIO_NET_F_HASH_REPORT/.test(e)));
  }
  const seen = decideSteering({ ...base, hashReportOffered: true, header: { bytes: 20 }, runs: traffic(0) });
  assert.match(seen.reason, /stays detached, as observed/);
});

test('the header alone says what the guest negotiated, and only when QEMU offered hash reporting', () => {
  assert.equal(guestHashReport({ hashReportOffered: false, header: { bytes: 20 } }), 'not-offered');
  assert.equal(guestHashReport({ hashReportOffered: true, header: { bytes: 20 } }), 'negotiated');
  assert.equal(guestHashReport({ hashReportOffered: true, header: { bytes: 12 } }), 'not-negotiated');
  assert.equal(guestHashReport({ hashReportOffered: true, header: { bytes: 10 } }), 'driver-not-ready');
  assert.equal(guestHashReport({ hashReportOffered: true, header: { bytes: 24 } }), 'unknown');
  assert.equal(guestHashReport({ hashReportOffered: true, header: { error: 'EPERM' } }), 'unknown');
  assert.equal(guestHashReport({ hashReportOffered: true }), 'unknown');
});

test('program detached while frames pass, no hash report: none (the guest has not turned RSS on)', () => {
  const s = decideSteering({ ...base, runs: traffic(0, 51), maps: 'unconfigured' });
  assert.deepEqual([s.kind, s.confidence], ['none', 'likely']);
  assert.match(s.reason, /not attached/);
  // Even with a table left in the maps (ethtool -L after ethtool -X detaches and keeps them).
  assert.equal(decideSteering({ ...base, runs: traffic(0, 51), maps: 'configured' }).kind, 'none');
});

test('too few frames to tell: the maps decide, as likely', () => {
  assert.deepEqual(
    [decideSteering({ ...base, runs: traffic(0, 2) }).kind, decideSteering({ ...base, runs: traffic(0, 2) }).confidence],
    ['ebpf', 'likely'],
  );
  const idle = decideSteering({ ...base, runs: traffic(0, 0), maps: 'unconfigured' });
  assert.deepEqual([idle.kind, idle.confidence], ['none', 'likely']);
  const counted = decideSteering({ ...base, runs: { error: 'BPF run statistics unavailable' }, maps: 'configured' });
  assert.deepEqual([counted.kind, counted.confidence], ['ebpf', 'likely']);
  assert.ok(counted.evidence.some((e) => /not counted \(BPF run statistics unavailable\)/.test(e)));
});

test('an unreadable header with QEMU offering hash reporting: unknown rather than a guess', () => {
  const s = decideSteering({ ...base, hashReportOffered: true, header: { error: 'no queue' }, runs: traffic(0, 40) });
  assert.deepEqual([s.kind, s.label, s.confidence], ['unknown', 'unknown', 'unknown']);
  // Without hash=on the command line excludes hash reporting: the same observation is an answer.
  assert.equal(decideSteering({ ...base, header: { error: 'no queue' }, runs: traffic(0, 40) }).kind, 'none');
  assert.equal(decideSteering({ ...base, hashReportOffered: true, header: { error: 'x' }, maps: 'unreadable' }).kind, 'unknown');
});

test('no program: software RSS without vhost, none with vhost', () => {
  const sw = decideSteering({ ...base, program: false, maps: undefined });
  assert.deepEqual([sw.kind, sw.label, sw.confidence], ['software-no-ebpf', STEERING_LABELS['software-no-ebpf'], 'likely']);
  const vh = decideSteering({ ...base, program: false, vhost: true, maps: undefined });
  assert.deepEqual([vh.kind, vh.confidence], ['none', 'certain']);
  const early = decideSteering({ ...base, program: false, vhost: true, header: { bytes: 10 }, maps: undefined });
  assert.deepEqual([early.kind, early.confidence], ['none', 'certain'], 'vhost without a program: certain even before the driver negotiated');
});

test('a program QEMU may hold but that could not be tied to the NIC or used: unknown, never "QEMU holds no eBPF program"', () => {
  const s = decideSteering({ ...base, program: undefined, maps: undefined, runs: traffic(0) });
  assert.deepEqual([s.kind, s.confidence], ['unknown', 'unknown']);
  assert.match(s.reason, /could not be tied to it or used/);
  assert.ok(s.evidence[0].includes('an eBPF program that could not be tied to the NIC or used'), s.evidence[0]);
});

test('one tap queue attached or a driver not ready: nothing is steered', () => {
  assert.deepEqual([decideSteering({ ...base, tapQueues: 1 }).kind, decideSteering({ ...base, tapQueues: 1 }).confidence], ['none', 'certain']);
  const early = decideSteering({ ...base, header: { bytes: 10 }, maps: 'unconfigured' });
  assert.deepEqual([early.kind, early.confidence], ['none', 'likely']);
  assert.match(early.reason, /not negotiated its features/);
});

test('runs observed win over a contradicting header, and say so', () => {
  const s = decideSteering({ ...base, hashReportOffered: true, header: { bytes: 20 }, runs: traffic(10) });
  assert.deepEqual([s.kind, s.confidence], ['ebpf', 'certain']);
  assert.match(s.reason, /although the guest negotiated hash reporting/);
});
