/**
 * The soak (root: the system libvirtd, `virt-ebpf install`, the installed broker): an enabled
 * 1-RSS-NIC domain started and destroyed `BENCH_SOAK_CYCLES` times (default 1 000). Prints what
 * the broker holds at each tenth of the run against what it held after the warm-up (cycle 20):
 * BPF programs, open fds, resident memory (also once idle after the run), and the start time of
 * the last hundred starts against the first hundred.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BrokerChild, installForReal } from '../test/coldstart/fixture';
import { cli, removeDomain, testDomains } from '../test/coldstart/libvirt';
import { brokerHolds, soak } from '../test/soak/cycles';
import { TRIM_AFTER_MS } from '../src/broker/loader';
import { V8_IDLE_MS } from './broker-v8';

const CYCLES = Number(process.env.BENCH_SOAK_CYCLES ?? 1000);

const mib = (kib: number) => `${(kib / 1024).toFixed(1)} MiB`;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function main(): Promise<void> {
  const prefix = `vebpf-bench-soak-${process.pid}-`;
  const scratch = mkdtempSync(join(tmpdir(), 'vebpf-bench-soak-'));
  installForReal();
  const broker = new BrokerChild();
  await broker.start();
  try {
    const r = await soak({ broker, name: `${prefix}vm`, cycles: CYCLES, scratch, warmUp: 20 });
    // Idle after the run: the pool's refill, the C heap's trim (TRIM_AFTER_MS after the last
    // load), and V8 giving back what its heap grew by (V8_IDLE_MS, as in `npm run bench`).
    const idleMs = Math.max(TRIM_AFTER_MS + 5_000, V8_IDLE_MS);
    await new Promise((res) => setTimeout(res, idleMs));
    const idle = brokerHolds(broker);
    const base = r.samples[0];
    const lines = [
      `## soak: ${CYCLES} start/destroy cycles of an enabled 1-RSS-NIC domain (installed broker, pool 2)`,
      '',
      '| cycle | broker BPF programs | broker fds | broker threads | broker RSS | of it anonymous / file | RSS vs cycle 20 |',
      '|---|---|---|---|---|---|---|',
      ...[...r.samples, { ...idle, cycle: `idle ${idleMs / 1000} s after the run (pool refilled, C heap trimmed)` }].map(
        (s) => `| ${s.cycle} | ${s.progs} | ${s.fds} | ${s.threads} | ${mib(s.rssKiB)} | ${mib(s.anonKiB)} / ${mib(s.fileKiB)} | ${(s.rssKiB / base.rssKiB).toFixed(3)}× |`,
      ),
      '',
      `start time, first 100 starts (baseline): median ${median(r.startMs.slice(0, 100)).toFixed(0)} ms; last 100: median ${median(r.startMs.slice(-100)).toFixed(0)} ms (${(median(r.startMs.slice(-100)) / median(r.startMs.slice(0, 100))).toFixed(3)}×)`,
      '',
    ];
    process.stdout.write(lines.join('\n'));
  } finally {
    for (const n of testDomains(prefix)) removeDomain(n);
    await broker.stop();
    cli('uninstall', '--force');
    rmSync(scratch, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`soak bench failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
