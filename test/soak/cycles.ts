/**
 * Start/destroy cycles of one enabled domain under libvirt, with samples of what the broker
 * holds (test/soak for CI, bench/soak for `npm run bench`).
 */
import assert from 'node:assert/strict';
import { readdirSync, readlinkSync } from 'node:fs';
import { processStatus } from '../harness';
import type { BrokerChild } from '../coldstart/fixture';
import { bpfFds, defineEnabled, domainState, domainXml, qemuPid, virsh, virshTry } from '../coldstart/libvirt';

export interface Holding {
  progs: number;
  fds: number;
  rssKiB: number;
  /** of it, anonymous memory (RssAnon) and file pages (RssFile + RssShmem: node's binary, libraries) */
  anonKiB: number;
  fileKiB: number;
  /** the broker's threads (libuv's pool threads among them once a load or file work started them) */
  threads: number;
}

export interface Sample extends Holding {
  cycle: number;
}

/** What the broker process holds now: BPF programs, open fds, resident memory, threads. */
export function brokerHolds(broker: BrokerChild): Holding {
  const pid = broker.pid;
  assert.ok(pid, 'the broker is not running');
  let fds = 0;
  let progs = 0;
  for (const n of readdirSync(`/proc/${pid}/fd`)) {
    fds++;
    try {
      if (readlinkSync(`/proc/${pid}/fd/${n}`) === 'anon_inode:bpf-prog') progs++;
    } catch {
      /* closed meanwhile */
    }
  }
  return { progs, fds, ...processStatus(pid) };
}

export interface SoakResult {
  samples: Sample[];
  /** ms of each start (virsh start as a whole) */
  startMs: number[];
}

/**
 * `cycles` starts and destroys of a 1-RSS-NIC domain `name`; each start must leave QEMU with one
 * program and three maps. Samples after `warmUp` cycles, then every tenth of the run, then at
 * the end, each taken once the broker's refill after the last start has had time to settle.
 */
export async function soak(o: { broker: BrokerChild; name: string; cycles: number; scratch: string; warmUp: number }): Promise<SoakResult> {
  if (domainState(o.name) === 'undefined') defineEnabled(o.name, domainXml({ name: o.name, nics: [{ rss: true, queues: 2 }] }), o.scratch);
  const samples: Sample[] = [];
  const startMs: number[] = [];
  const every = Math.max(1, Math.floor(o.cycles / 10));
  for (let cycle = 1; cycle <= o.cycles; cycle++) {
    const t0 = Date.now();
    virsh('start', o.name);
    startMs.push(Date.now() - t0);
    const held = bpfFds(qemuPid(o.name)).map((f) => f.kind);
    assert.deepEqual(held, ['prog', 'map', 'map', 'map'], `cycle ${cycle}: QEMU holds ${held.join(',')}`);
    const d = virshTry('destroy', o.name);
    assert.equal(d.status, 0, `cycle ${cycle}: destroy failed: ${d.stderr.trim()}`);
    if (cycle === o.warmUp || (cycle > o.warmUp && cycle % every === 0) || cycle === o.cycles) {
      await new Promise((r) => setTimeout(r, 2_500)); // refills wait 1 s for starts to settle
      samples.push({ cycle, ...brokerHolds(o.broker) });
    }
  }
  return { samples, startMs };
}
