/**
 * Which domain a QEMU-account peer runs: the `-uuid` in its /proc/PID/cmdline, read from real
 * processes whose command lines carry it in the spellings QEMU takes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cmdlineUuid, uuidIn } from '../../src/broker/peer';
import { largeAllocations } from '../harness';

const A = '0b7c1d2e-3f40-4152-8637-48596a7b8c9d';
const B = 'ffffffff-0000-4000-8000-123456789abc';

/** A shell that stays (its `; :` keeps it from exec'ing sleep) with `args` after its script. */
async function withProcess(args: string[], check: (pid: number) => void): Promise<void> {
  const p = spawn('/bin/sh', ['-c', 'sleep 10; :', 'sh', ...args], { stdio: 'ignore' });
  try {
    await new Promise((r) => setTimeout(r, 50));
    check(p.pid!);
  } finally {
    p.kill('SIGKILL');
  }
}

test('cmdlineUuid: -uuid and --uuid, the last one wins, lower case', async () => {
  await withProcess(['-name', 'guest=x', '-uuid', A.toUpperCase()], (pid) => assert.equal(cmdlineUuid(pid), A));
  await withProcess(['--uuid', B], (pid) => assert.equal(cmdlineUuid(pid), B));
  await withProcess(['-uuid', A, '-uuid', B], (pid) => assert.equal(cmdlineUuid(pid), B));
});

test('cmdlineUuid: no uuid, a value that is not one, a -uuid with nothing after it, a gone process', async () => {
  await withProcess(['-name', 'guest=x'], (pid) => assert.equal(cmdlineUuid(pid), undefined));
  await withProcess(['-uuid', 'not-a-uuid'], (pid) => assert.equal(cmdlineUuid(pid), undefined));
  await withProcess(['x', '-uuid'], (pid) => assert.equal(cmdlineUuid(pid), undefined));
  await withProcess(['-uuid', ''], (pid) => assert.equal(cmdlineUuid(pid), undefined));
  assert.equal(cmdlineUuid(2 ** 22 + 1), undefined);
});

test('uuidIn: only the bytes given count, and the later of -uuid and --uuid wins', () => {
  const big = Buffer.alloc(4096);
  const real = Buffer.from('qemu\0-name\0guest=x\0');
  real.copy(big);
  // Bytes past the arguments (an earlier peer's, in a reused buffer) name another uuid.
  Buffer.from(`\0-uuid\0${A}\0`).copy(big, 1000);
  assert.equal(uuidIn(big.subarray(0, real.length)), undefined);
  assert.equal(uuidIn(big), A, 'the same bytes within the view are found');
  assert.equal(uuidIn(Buffer.from(`q\0--uuid\0${B}\0-uuid\0${A}\0`)), A);
  assert.equal(uuidIn(Buffer.from(`q\0-uuid\0${A}\0--uuid\0${B}\0`)), B);
  assert.equal(uuidIn(Buffer.from(`q\0-uuid\0${A}`)), undefined, 'a value without its NUL (the kernel always ends one) is not taken');
});

test('cmdlineUuid reads every peer into one buffer: a long command line does not leak into the next, shorter one', async () => {
  const filler = 'x'.repeat(8000);
  const big = await largeAllocations(64 * 1024, async () => {
    await withProcess([filler, '-uuid', A], (pid) => assert.equal(cmdlineUuid(pid), A));
    await withProcess(['-name', 'guest=x'], (pid) => assert.equal(cmdlineUuid(pid), undefined, 'the earlier peer’s -uuid, past this one’s bytes, is not read'));
    for (let i = 0; i < 5; i++) await withProcess(['-uuid', B], (pid) => assert.equal(cmdlineUuid(pid), B));
  });
  assert.ok(big <= 1, `${big} read buffers for 7 peers`);
});
