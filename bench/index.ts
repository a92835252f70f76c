/**
 * `npm run bench`: the speed targets of the foundation, as tables with ratios against a
 * baseline measured in the same run.
 *  - probe: cold (QEMU started, queried) vs warm (cache hit), against QEMU start + QMP greeting only
 *  - load: one RSS context (libbpf + kernel verifier), against parse + validate only (pure)
 *  - handoff: 4 fds sent and received over a unix socket, against the same message without fds
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { join } from 'node:path';
import { probeEmulator, PROBE_ARGS } from '../src/emulator';
import { rssObjectBytes } from '../src/emulator/caps';
import { loadRss, parseRssObject } from '../src/bpf';
import { recvFds, sendFds } from '../src/fdpass';
import * as libc from '../src/sys/libc';
import { QmpClient, QmpTransport } from '../src/qmp';
import { sample, stats, table } from './stats';

const QEMU = process.env.VIRT_EBPF_TEST_QEMU ?? '/usr/bin/qemu-system-x86_64';
const N = Number(process.env.BENCH_N ?? 1);

async function qemuGreetingOnly(): Promise<void> {
  const [ours, theirs] = libc.socketpair();
  const child = spawn(QEMU, [...PROBE_ARGS], { stdio: ['ignore', 'ignore', 'ignore', theirs] });
  libc.close(theirs);
  const exited = new Promise((r) => child.once('exit', r));
  const c = await QmpClient.open(QmpTransport.fromFd(ours));
  await c.execute('quit').catch(() => undefined);
  await c.close();
  await exited;
}

async function main(): Promise<void> {
  const out: string[] = [`virt-ebpf benchmarks — ${new Date().toISOString()} — ${cpus().length}× ${cpus()[0]?.model ?? '?'} — node ${process.version}`, ''];
  const cache = mkdtempSync(join(tmpdir(), 'virt-ebpf-bench-'));
  try {
    // probe
    const base = await sample(10 * N, qemuGreetingOnly);
    const cold = await sample(10 * N, () => probeEmulator(QEMU, { useCache: false }));
    await probeEmulator(QEMU, { cacheDir: cache });
    const warm = await sample(200 * N, () => probeEmulator(QEMU, { cacheDir: cache }));
    out.push(
      table('probe', [
        { name: 'QEMU start + QMP greeting + quit', stats: stats(base) },
        { name: 'probe, cold (no cache)', stats: stats(cold), baseline: 'QEMU start + QMP greeting + quit' },
        { name: 'probe, warm (cache hit)', stats: stats(warm), baseline: 'probe, cold (no cache)' },
      ]),
    );

    // load
    const { caps } = await probeEmulator(QEMU, { cacheDir: cache });
    const bytes = rssObjectBytes(caps);
    const parse = await sample(200 * N, () => parseRssObject(bytes));
    const load = await sample(20 * N, () => loadRss(bytes).close());
    out.push(
      table('context load (one RSS NIC)', [
        { name: 'parse + validate ELF (pure)', stats: stats(parse) },
        { name: 'load: libbpf + verifier, 4 fds', stats: stats(load), baseline: 'parse + validate ELF (pure)' },
      ]),
    );

    // handoff
    const ctx = loadRss(bytes);
    const [a, b] = libc.socketpair();
    try {
      const fds = ctx.fds.map((f) => f.fd);
      const plain = await sample(2000 * N, () => {
        sendFds(a, [], Buffer.from('x'));
        recvFds(b, 8);
      }, 50);
      const withFds = await sample(2000 * N, () => {
        sendFds(a, fds, Buffer.from('x'));
        recvFds(b, 8).fds.forEach((f) => f.close());
      }, 50);
      out.push(
        table('fd handoff over AF_UNIX (send + receive, same process)', [
          { name: '1-byte message, no fds', stats: stats(plain) },
          { name: '1-byte message + 4 BPF fds', stats: stats(withFds), baseline: '1-byte message, no fds' },
        ]),
      );
    } finally {
      libc.close(a);
      libc.close(b);
      ctx.close();
    }
  } finally {
    rmSync(cache, { recursive: true, force: true });
  }
  process.stdout.write(out.join('\n') + '\n');
}

main().catch((e) => {
  process.stderr.write(`bench failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
