/**
 * Everything a peer can make the broker hold is bounded, and a domain's QEMU cannot touch
 * another domain's reservation (issues: "unbounded resources from allowlisted peers", "one
 * domain's QEMU disturbs the others"). Pool size 0: whatever BPF object the broker holds is a
 * reservation or a leak.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { QEMU, needRoot } from '../harness';
import { BrokerProcess, QEMU_ACCOUNT, STRANGER, ask, assertServing, hostile, line, sleep, startBrokerProcess, until } from './support';

let b: BrokerProcess;
/** the group libvirt's qemu.conf names (Debian: libvirt-qemu), which the QEMU user is a member of */
const QEMU_GROUP = Number(
  readFileSync('/etc/group', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('libvirt-qemu:'))!
    .split(':')[2],
);
const ONE_RSS_NIC = ['-device', JSON.stringify({ driver: 'virtio-net-pci', rss: true, netdev: 'n0', id: 'net0' })];
const U1 = '11111111-2222-4333-8444-555555555501';
const U2 = '11111111-2222-4333-8444-555555555502';

before(async () => {
  needRoot('the broker runs as root; peers drop to other accounts');
  b = await startBrokerProcess({ pool: { size: 0 } });
  // Warm the probe cache: every test below is about what the broker holds, not about probing.
  assert.equal((await ask(b.socket, { v: 1, id: 1, op: 'prewarm', emulator: QEMU, count: 1 })).ok, true);
});

after(async () => {
  await b?.stop();
});

async function settle(): Promise<void> {
  // Loads run off the broker's main thread; give any in flight time to land.
  await sleep(300);
  await ask(b.socket, { v: 1, id: 1, op: 'status' });
}

test('the QEMU account cannot reserve contexts for made-up domains (only libvirt\'s hook, as root, reserves)', async () => {
  for (let i = 0; i < 10; i++) {
    const uuid = `00000000-0000-4000-8000-0000000000${String(i).padStart(2, '0')}`;
    await hostile(QEMU_ACCOUNT, b.socket, 'ask', [line({ op: 'prewarm', emulator: QEMU, count: 16, domain: { uuid } })]);
  }
  await settle();
  assert.deepEqual(b.bpfObjects(), { progs: 0, maps: 0 }, 'the broker holds contexts nobody will ever take');
});

test('exec-plan with more RSS devices than one request may carry is refused before anything is loaded', async () => {
  const argv: string[] = [];
  for (let i = 0; i < 40; i++) argv.push('-device', JSON.stringify({ driver: 'virtio-net-pci', rss: true, netdev: `n${i}`, id: `net${i}` }));
  const r = await hostile(QEMU_ACCOUNT, b.socket, 'ask', [line({ op: 'exec-plan', emulator: QEMU, argv })]);
  assert.equal(r.reply?.ok, false, `40 devices were planned: ${r.fds} fds handed out`);
  assert.equal(r.reply.error.code, 'BROKER_LIMIT');
  assert.equal(r.fds, 0);
});

test('prewarm racing release for the same domain leaves nothing behind', async () => {
  for (let round = 0; round < 5; round++) {
    const domain = { uuid: U1 };
    const warming = ask(b.socket, { v: 1, id: 1, op: 'prewarm', emulator: QEMU, count: 6, domain });
    await sleep(20 + round * 15);
    await ask(b.socket, { v: 1, id: 2, op: 'release', domain });
    await warming;
    await ask(b.socket, { v: 1, id: 3, op: 'release', domain });
  }
  await settle();
  assert.deepEqual(b.bpfObjects(), { progs: 0, maps: 0 }, 'contexts loaded into a released reservation were kept');
});

test('a QEMU cannot release another domain\'s reservation', async () => {
  assert.equal((await ask(b.socket, { v: 1, id: 1, op: 'prewarm', emulator: QEMU, count: 2, domain: { uuid: U1 } })).ok, true);
  assert.equal(b.bpfObjects().progs, 2);
  const r = await hostile(QEMU_ACCOUNT, b.socket, 'ask', [line({ op: 'release', domain: { uuid: U1 } })], { extraArgv: ['-uuid', U2] });
  assert.equal(r.reply?.ok, false, JSON.stringify(r));
  await settle();
  assert.equal(b.bpfObjects().progs, 2, 'the reservation of another domain was dropped');
  await ask(b.socket, { v: 1, id: 1, op: 'release', domain: { uuid: U1 } });
});

test('a QEMU cannot take another domain\'s reservation; the domain\'s own QEMU can', async () => {
  assert.equal((await ask(b.socket, { v: 1, id: 1, op: 'prewarm', emulator: QEMU, count: 2, domain: { uuid: U1 } })).ok, true);
  const plan = (uuid: string) => line({ op: 'exec-plan', emulator: QEMU, argv: ['-uuid', uuid, ...ONE_RSS_NIC] });
  const thief = await hostile(QEMU_ACCOUNT, b.socket, 'ask', [plan(U1)], { extraArgv: ['-uuid', U2] });
  assert.equal(thief.fds, 4, JSON.stringify(thief));
  await settle();
  assert.equal(b.bpfObjects().progs, 2, 'another domain\'s QEMU took from its reservation');
  const owner = await hostile(QEMU_ACCOUNT, b.socket, 'ask', [plan(U1)], { extraArgv: ['-uuid', U1] });
  assert.equal(owner.fds, 4, JSON.stringify(owner));
  await settle();
  assert.equal(b.bpfObjects().progs, 1, 'the domain\'s own QEMU took one of its two reserved contexts');
  await ask(b.socket, { v: 1, id: 1, op: 'release', domain: { uuid: U1 } });
  await settle();
  assert.deepEqual(b.bpfObjects(), { progs: 0, maps: 0 });
});

test('a member of the QEMU group who is not the QEMU user is not served (newgrp does not open the broker)', async () => {
  const r = await hostile({ uid: STRANGER.uid, gid: QEMU_GROUP }, b.socket, 'ask', [line({ op: 'hello' })]);
  assert.equal(r.reply?.ok, false, JSON.stringify(r));
  assert.equal(r.reply.error.code, 'BROKER_DENIED');
  await assertServing(b, 'a group-only peer');
});

test('reservations do not outlive a start that never comes', async () => {
  const short = await startBrokerProcess({ pool: { size: 0, reservationTtlMs: 2000 } });
  try {
    assert.equal((await ask(short.socket, { v: 1, id: 1, op: 'prewarm', emulator: QEMU, count: 1, domain: { uuid: U2 } })).ok, true);
    assert.equal(short.bpfObjects().progs, 1);
    await until('the unclaimed reservation to expire', () => short.bpfObjects().progs === 0, 15_000, 200);
    assert.deepEqual(short.bpfObjects(), { progs: 0, maps: 0 });
    const st = await ask(short.socket, { v: 1, id: 1, op: 'status' });
    assert.equal(st.reserved, 0, JSON.stringify(st));
  } finally {
    await short.stop();
  }
});

test('a QEMU gets at most contextsPerMinute (64) contexts a minute for its domain: asking again and again is refused', async () => {
  const U3 = '11111111-2222-4333-8444-555555555503';
  const argv = Array.from({ length: 16 }, (_, i) => ['-device', JSON.stringify({ driver: 'virtio-net-pci', rss: true, netdev: `n${i}`, id: `net${i}` })]).flat();
  const got: string[] = [];
  for (let i = 0; i < 5; i++) {
    const r = await hostile(QEMU_ACCOUNT, b.socket, 'ask', [line({ op: 'exec-plan', emulator: QEMU, argv: ['-uuid', U3, ...argv] })], { extraArgv: ['-uuid', U3] });
    got.push(r.reply?.ok ? `ok:${r.fds}` : r.reply?.error?.code);
  }
  assert.deepEqual(got, ['ok:64', 'ok:64', 'ok:64', 'ok:64', 'BROKER_LIMIT']);
  await settle();
  assert.deepEqual(b.bpfObjects(), { progs: 0, maps: 0 });
});
