/**
 * No peer stops the broker or locks others out (issue: "any local user stops the broker"):
 * the broker runs as the daemon does, in its own process; hostile peers (test/security/peers.py)
 * run as a local user the broker does not serve and as libvirt's QEMU account, which a guest
 * may own. After each attack the broker must still be running and answer.
 */
import { test, beforeEach, afterEach, before } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, rmSync } from 'node:fs';
import { QEMU, needRoot } from '../harness';
import { STALLED_LINE_MS } from '../../src/broker/admission';
import { MAX_PEER_LINE, MAX_PENDING_PER_PROCESS, MAX_PENDING_PER_UID } from '../../src/broker/protocol';
import { BrokerProcess, QEMU_ACCOUNT, ROOT, STRANGER, assertServing, hostile, line, startBrokerProcess, until } from './support';

let b: BrokerProcess;

before(() => needRoot('the broker runs as root; peers drop to other accounts'));

// A broker of its own for each attack: one that an attack stopped does not hide the next.
beforeEach(async () => {
  b = await startBrokerProcess({ pool: { size: 0 } });
});

afterEach(async () => {
  await b?.stop();
});

test('a user the broker does not serve connects and hangs up 200 times (half of them after shutdown(SHUT_RD)): the broker keeps serving', async () => {
  const r = await hostile(STRANGER, b.socket, 'hangup', ['200']);
  assert.equal(r.hangups, 200);
  await assertServing(b, '200 hang-ups of a refused peer');
});

test('an allowlisted peer floods 5000 hello lines without reading a reply: the broker keeps serving, and cuts that peer off', async () => {
  const r = await hostile(QEMU_ACCOUNT, b.socket, 'flood', ['5000', line({ op: 'hello' })]);
  assert.ok(r.sent > 0);
  await assertServing(b, 'a hello flood');
});

test('an allowlisted peer that hangs up before a slow reply (a cold probe, then fresh loads): the broker keeps serving', async () => {
  for (let i = 0; i < 5; i++) {
    const argv = [0, 1].flatMap((i) => ['-device', JSON.stringify({ driver: 'virtio-net-pci', rss: true, netdev: `n${i}`, id: `net${i}` })]);
    await hostile(QEMU_ACCOUNT, b.socket, 'leave', [line({ op: 'exec-plan', emulator: QEMU, argv })]);
  }
  // The replies go out once the loads are done: then the broker closes its copies of the fds.
  await until('the contexts of the abandoned replies to be closed, not kept', () => b.bpfObjects().progs === 0, 60_000, 200);
  await assertServing(b, 'five peers hung up before their exec-plan was answered');
});

test('a peer that breaks the protocol gets one error line and a closed connection; nothing after it on that connection is answered', async () => {
  const r = await hostile(QEMU_ACCOUNT, b.socket, 'transcript', [`this is not json\n${line({ op: 'hello' }, 9)}`]);
  assert.equal(r.lines.length, 1, JSON.stringify(r));
  assert.equal(r.lines[0].ok, false);
  assert.equal(r.lines[0].error.code, 'BROKER_PROTOCOL');
  assert.equal(r.eof, true, 'the broker closed the connection');
  await assertServing(b, 'protocol breaks');
});

test('a peer that never finishes its request line is cut off (no slow-loris hold on a connection slot)', async () => {
  const r = await hostile(QEMU_ACCOUNT, b.socket, 'slowloris', ['40'], { timeoutMs: 60_000 });
  assert.notEqual(r.cutAfter, null, 'the broker never closed a connection that sent an endless line one byte at a time');
  await assertServing(b, 'a slow-loris peer');
});

test('one QEMU process holding many idle connections locks out neither other QEMUs of the same account nor itself for long', async () => {
  const holding = hostile(QEMU_ACCOUNT, b.socket, 'hold', ['70', '8']);
  await new Promise((r) => setTimeout(r, 1500));
  // Another process of the same account (another domain's QEMU) is served meanwhile.
  const other = await hostile(QEMU_ACCOUNT, b.socket, 'ask', [line({ op: 'hello' })]);
  assert.equal(other.reply?.ok, true, `another QEMU of the same account was not served: ${JSON.stringify(other)}`);
  const h = await holding;
  assert.equal(h.closedByBroker, h.opened, `the broker kept ${h.opened - h.closedByBroker} of ${h.opened} idle connections of one process open`);
  await assertServing(b, 'idle connections');
});

test('QEMU-account processes that fill the account\'s slots with request lines they never finish do not lock a newcomer out', async () => {
  // A broker of its own with small caps: 4 processes × 2 connections fill the account's 8.
  await b.stop();
  b = await startBrokerProcess({ pool: { size: 0 }, limits: { maxConnectionsPerUid: 8, maxConnectionsPerProcess: 2 } });
  const pinners = [1, 2, 3, 4].map(() => hostile(QEMU_ACCOUNT, b.socket, 'pin', ['2', '4']));
  await new Promise((r) => setTimeout(r, STALLED_LINE_MS + 1_000));
  const r = await hostile(QEMU_ACCOUNT, b.socket, 'ask', [line({ op: 'hello' })]);
  assert.equal(r.reply?.ok, true, `a newcomer of the account was refused while its slots held unfinished lines: ${JSON.stringify(r)}`);
  const pinned = await Promise.all(pinners);
  assert.equal(pinned.reduce((n, p) => n + p.opened, 0), 8, 'the pinning connections were all admitted');
  assert.ok(pinned.some((p) => p.closedByBroker > 0), 'the newcomer took the slot of a stalled line');
  await assertServing(b, 'slots pinned by unfinished lines');
});

test('unfinished request lines: one process holds one line at most, an account MAX_PENDING_PER_UID; past that, BROKER_LIMIT, and whole lines are still served', async () => {
  const size = MAX_PEER_LINE - 1024; // each line alone is within the per-line limit
  // One process alone, 4 connections each with an almost full line: it holds one. Meanwhile
  // another process's request of 100 KiB (more than one read) arrives whole: it is answered
  // (BROKER_PROTOCOL: a hello takes no "pad"), not refused for a cap.
  const alone = hostile(QEMU_ACCOUNT, b.socket, 'bulk', ['4', String(size), '3'], { timeoutMs: 60_000 });
  await new Promise((r) => setTimeout(r, 1_000));
  const big = await hostile(QEMU_ACCOUNT, b.socket, 'transcript', [line({ op: 'hello', pad: 'x'.repeat(100 * 1024) })]);
  assert.equal(big.lines[0]?.error?.code, 'BROKER_PROTOCOL', `another process's long request: ${JSON.stringify(big.lines[0]?.error)}`);
  const one = await alone;
  assert.ok(one.opened - one.refused <= MAX_PENDING_PER_PROCESS / size, `one process held ${one.opened - one.refused} lines: ${JSON.stringify(one)}`);
  // 10 processes × 2 connections, each with an almost full line: 40 MiB offered.
  const holders = Array.from({ length: 10 }, () => hostile(QEMU_ACCOUNT, b.socket, 'bulk', ['2', String(size), '4'], { timeoutMs: 60_000 }));
  await new Promise((r) => setTimeout(r, 2_000));
  const newcomer = await hostile(QEMU_ACCOUNT, b.socket, 'ask', [line({ op: 'hello' })]);
  assert.equal(newcomer.reply?.ok, true, `a whole request line of the account was refused: ${JSON.stringify(newcomer)}`);
  const runs = await Promise.all(holders);
  for (const r of runs) assert.ok(r.opened - r.refused <= MAX_PENDING_PER_PROCESS / size, `one process held ${r.opened - r.refused} lines: ${JSON.stringify(r)}`);
  const held = runs.reduce((n, r) => n + r.opened - r.refused, 0);
  assert.ok(held * size <= MAX_PENDING_PER_UID, `${held} lines of ${size} bytes were held at once; the account's cap is ${MAX_PENDING_PER_UID}`);
  assert.ok(held >= 4, `only ${held} lines were held: the caps refused more than they should`);
  assert.ok(runs.flatMap((r) => r.codes).includes('BROKER_LIMIT'), `no line was refused for a cap: ${JSON.stringify(runs)}`);
  await assertServing(b, 'unfinished lines over the caps');
});

test('users the broker does not serve, with command lines of 150 000 arguments, connecting in a loop: root is still answered at once', async () => {
  const huge = Array<string>(150_000).fill('');
  const attackers = [1, 2, 3, 4].map(() => hostile(STRANGER, b.socket, 'hangup', ['400'], { extraArgv: huge, timeoutMs: 120_000 }));
  const slowest: number[] = [];
  for (let i = 0; i < 20; i++) {
    const t0 = Date.now();
    assert.ok(await b.answers(), `root was not answered while refused users connected (round ${i})`);
    slowest.push(Date.now() - t0);
    await new Promise((r) => setTimeout(r, 100));
  }
  await Promise.all(attackers);
  assert.ok(Math.max(...slowest) < 1_000, `root waited up to ${Math.max(...slowest)} ms for a hello`);
});

test('a peer that sends hundreds of requests and hangs up: what it left unread is not handled (the broker goes idle)', async () => {
  const plan = line({ op: 'exec-plan', emulator: QEMU, argv: ['-device', JSON.stringify({ driver: 'virtio-net-pci', rss: true, netdev: 'n0' })] });
  assert.equal((await hostile(ROOT, b.socket, 'ask', [line({ op: 'prewarm', emulator: QEMU, count: 1 })])).reply?.ok, true, 'probed');
  await hostile(QEMU_ACCOUNT, b.socket, 'flood', ['500', plan]);
  await new Promise((r) => setTimeout(r, 500));
  const cpu0 = b.cpuSeconds();
  await new Promise((r) => setTimeout(r, 3_000));
  const used = b.cpuSeconds() - cpu0;
  assert.ok(used < 1, `the broker worked ${used.toFixed(2)} s of the 3 s after its peer left`);
  await assertServing(b, 'a peer that left 500 requests behind');
});

test('the socket path removed while a peer keeps a connection busy: the broker listens there again', async () => {
  const keeper = hostile(ROOT, b.socket, 'slowloris', ['12'], { timeoutMs: 60_000 });
  await new Promise((r) => setTimeout(r, 500));
  rmSync(b.socket);
  await until('the broker to listen on its socket again', () => existsSync(b.socket), 8_000, 100);
  await assertServing(b, 'the socket path removed');
  await keeper;
});
