/**
 * Which domain a QEMU-account peer runs: the `-uuid` in its /proc/PID/cmdline, read from real
 * processes whose command lines carry it in the spellings QEMU takes; and held for the life of
 * the process from its first connection (PeerDomains, real pidfds), so a process that writes
 * another uuid over its argv stays bound to its own domain.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { once } from 'node:events';
import { cmdlineUuid, MAX_HELD_PEERS, PeerDomains, processStart, uuidIn } from '../../src/broker/peer';
import { largeAllocations, tempDir } from '../harness';

const tmp = tempDir('virt-ebpf-peer-');
after(() => tmp.remove());

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

/**
 * A process whose argv carries `-uuid A` and, after it, the uuid B it writes over A in its own
 * argv memory (found through /proc/self/stat's arg_start) when told to on stdin: what a QEMU a
 * guest took over can do without starting a process.
 */
const REWRITER = `
import ctypes, sys
arg_start = int(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[45])
raw = open('/proc/self/cmdline', 'rb').read()
sys.stdout.write('ready\\n'); sys.stdout.flush()
sys.stdin.readline()
a, b = sys.argv[2].encode(), sys.argv[3].encode()
ctypes.memmove(arg_start + raw.index(b'\\0' + a + b'\\0') + 1, b, len(b))
sys.stdout.write('rewritten\\n'); sys.stdout.flush()
sys.stdin.readline()
`;

async function line(p: ChildProcess, want: string): Promise<void> {
  let got = '';
  while (!got.includes(want)) {
    const chunk = await Promise.race([
      once(p.stdout!, 'data').then(([c]) => (c as Buffer).toString()),
      once(p, 'exit').then(() => {
        throw new Error(`the rewriter exited before saying ${want}`);
      }),
    ]);
    got += chunk;
  }
}

/** The pidfds this process holds (other fds come and go with the test runner and children's pipes). */
const pidfds = () =>
  readdirSync('/proc/self/fd').filter((n) => {
    try {
      return readlinkSync(`/proc/self/fd/${n}`) === 'anon_inode:[pidfd]';
    } catch {
      return false;
    }
  }).length;

test('PeerDomains: a process that writes another uuid over its argv after its first connection stays bound to its own domain', { timeout: 30_000 }, async () => {
  const p = spawn('python3', ['-c', REWRITER, '-uuid', A, B], { stdio: ['pipe', 'pipe', 'inherit'] });
  const domains = new PeerDomains();
  try {
    await line(p, 'ready');
    assert.equal(domains.domainOf(p.pid!), A, 'first connection: the cmdline names A');
    p.stdin!.write('go\n');
    await line(p, 'rewritten');
    assert.equal(cmdlineUuid(p.pid!), B, 'the process now shows B in /proc/PID/cmdline');
    assert.equal(domains.domainOf(p.pid!), A, 'a later connection of the same process is still bound to A');
    p.kill('SIGKILL');
    await once(p, 'exit');
    // Ended: its pid is looked at afresh (no process: no domain), and its pidfd is closed.
    assert.equal(pidfds(), 1);
    assert.equal(domains.domainOf(p.pid!), undefined);
    assert.equal(domains.size, 0);
    assert.equal(pidfds(), 0);
  } finally {
    p.kill('SIGKILL');
    domains.clear();
  }
});

test('PeerDomains with a store: a restarted broker binds a process by what the broker before it read, not by the argv it rewrote since', { timeout: 30_000 }, async () => {
  const store = join(tmp.path, `store-${process.hrtime.bigint()}`);
  const p = spawn('python3', ['-c', REWRITER, '-uuid', A, B], { stdio: ['pipe', 'pipe', 'inherit'] });
  const first = new PeerDomains(MAX_HELD_PEERS, store);
  let second: PeerDomains | undefined;
  try {
    await line(p, 'ready');
    assert.equal(first.domainOf(p.pid!), A);
    assert.equal(readFileSync(join(store, String(p.pid)), 'utf8'), `${processStart(p.pid!)} ${A}\n`, 'kept with the process\'s start time');
    p.stdin!.write('go\n');
    await line(p, 'rewritten');
    first.clear(); // the broker stops; the store stays
    second = new PeerDomains(MAX_HELD_PEERS, store);
    assert.equal(second.domainOf(p.pid!), A, 'the broker after it binds the process to A, though its cmdline now says B');
    p.kill('SIGKILL');
    await once(p, 'exit');
    assert.equal(second.bound(), 0, 'the ended process is let go');
    assert.ok(!existsSync(join(store, String(p.pid))), 'and its kept binding removed');
  } finally {
    p.kill('SIGKILL');
    first.clear();
    second?.clear();
  }
});

test('PeerDomains store: a kept binding of another process that had the pid is not used, and bindings of ended processes go at start', { timeout: 30_000 }, async () => {
  const store = join(tmp.path, `store-${process.hrtime.bigint()}`);
  mkdirSync(store, { recursive: true });
  await withProcess(['-uuid', A], (pid) => {
    // What a broker kept for an earlier process with this pid: another start time, domain B.
    writeFileSync(join(store, String(pid)), `1 ${B}\n`);
    writeFileSync(join(store, String(2 ** 22 + 1)), `1 ${B}\n`); // a process that is gone
    mkdirSync(join(store, 'stray'), { recursive: true }); // an entry that is not a binding (it does not stop the broker)
    const domains = new PeerDomains(MAX_HELD_PEERS, store);
    try {
      assert.ok(!existsSync(join(store, String(2 ** 22 + 1))), 'a gone process\'s binding is removed at start');
      assert.ok(!existsSync(join(store, 'stray')), 'and the stray entry');
      assert.equal(domains.domainOf(pid), A, 'the process\'s own cmdline, not the earlier holder\'s binding');
      assert.equal(readFileSync(join(store, String(pid)), 'utf8'), `${processStart(pid)} ${A}\n`);
    } finally {
      domains.clear();
    }
  });
});

test('PeerDomains store: made where missing, its directory as the broker makes its socket\'s (peers must reach the socket through it)', () => {
  const run = join(tmp.path, `run-${process.hrtime.bigint()}`);
  const domains = new PeerDomains(MAX_HELD_PEERS, join(run, 'peers'));
  try {
    assert.equal(domains.store, join(run, 'peers'));
    assert.equal(statSync(run).mode & 0o777, 0o755, 'the socket\'s directory stays open to the QEMU account');
    assert.equal(statSync(join(run, 'peers')).mode & 0o777, 0o700);
  } finally {
    domains.clear();
  }
});

test('PeerDomains store: one that others may write is not used (it would let them bind a process to any domain)', async () => {
  const store = join(tmp.path, `store-${process.hrtime.bigint()}`);
  mkdirSync(store, { recursive: true });
  chmodSync(store, 0o777);
  await withProcess(['-uuid', A], (pid) => {
    writeFileSync(join(store, String(pid)), `${processStart(pid)} ${B}\n`); // planted
    const domains = new PeerDomains(MAX_HELD_PEERS, store);
    try {
      assert.equal(domains.store, undefined);
      assert.equal(domains.domainOf(pid), A, 'the process\'s own cmdline, not the planted binding');
    } finally {
      domains.clear();
    }
  });
});

test('PeerDomains is bounded: when full, an ended process goes first, else the one seen least recently; clear closes every pidfd', { timeout: 30_000 }, async () => {
  const domains = new PeerDomains(2);
  const live: ChildProcess[] = [];
  // sleep as the process itself (exec): a SIGKILL ends it, nothing is left behind.
  const run = (uuid: string) => {
    const p = spawn('/bin/sh', ['-c', 'exec sleep 30', 'sh', '-uuid', uuid], { stdio: 'ignore' });
    live.push(p);
    return p;
  };
  // The rewriter shows whether it is still held: held, it is A; read afresh, B.
  const kept = spawn('python3', ['-c', REWRITER, '-uuid', A, B], { stdio: ['pipe', 'pipe', 'inherit'] });
  live.push(kept);
  try {
    await line(kept, 'ready');
    const p1 = run(A);
    await new Promise((r) => setTimeout(r, 50));
    // (sleep, by its exec, shows no uuid: what matters of these processes is whether they are held.)
    assert.equal(domains.domainOf(kept.pid!), A);
    domains.domainOf(p1.pid!);
    kept.stdin!.write('go\n');
    await line(kept, 'rewritten');
    assert.equal(pidfds(), 2);
    // The rewriter is the one seen least recently; p1 ends: the next process takes p1's place.
    p1.kill('SIGKILL');
    await once(p1, 'exit');
    const p3 = run(B);
    await new Promise((r) => setTimeout(r, 50));
    domains.domainOf(p3.pid!);
    assert.equal(domains.domainOf(kept.pid!), A, 'the live process seen least recently was kept, the ended one let go');
    assert.equal(pidfds(), 2);
    // All live, p3 seen least recently: a fourth process pushes p3 out, not the rewriter.
    const p4 = run(B);
    await new Promise((r) => setTimeout(r, 50));
    domains.domainOf(p4.pid!);
    assert.equal(domains.size, 2);
    assert.equal(domains.domainOf(kept.pid!), A, 'the rewriter, seen more recently than p3, is still held');
    assert.equal(pidfds(), 2);
    domains.clear();
    assert.equal(pidfds(), 0);
  } finally {
    domains.clear();
    for (const p of live) p.kill('SIGKILL');
  }
});

test('PeerDomains lets go of ended processes when another comes in (a QEMU per start: the pidfds do not pile up), and before counting bound ones', { timeout: 30_000 }, async () => {
  const domains = new PeerDomains();
  const live: ChildProcess[] = [];
  const run = (uuid: string) => {
    const p = spawn('python3', ['-c', 'import sys; sys.stdin.read()', '-uuid', uuid], { stdio: ['pipe', 'ignore', 'ignore'] });
    live.push(p);
    return p;
  };
  try {
    for (let i = 0; i < 5; i++) {
      const p = run(i % 2 ? A : B);
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(domains.domainOf(p.pid!), i % 2 ? A : B);
      assert.equal(pidfds(), 1, `start ${i}: only the running process is held`);
      p.kill('SIGKILL');
      await once(p, 'exit');
    }
    const p = run(A);
    await new Promise((r) => setTimeout(r, 100));
    domains.domainOf(p.pid!);
    assert.equal(domains.bound(), 1);
    p.kill('SIGKILL');
    await once(p, 'exit');
    assert.equal(domains.bound(), 0);
    assert.equal(pidfds(), 0, 'counting let the ended one go');
  } finally {
    domains.clear();
    for (const p of live) p.kill('SIGKILL');
  }
});
