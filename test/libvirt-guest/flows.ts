/**
 * Real traffic through a live RSS program: UDP flows from host sockets bound to the tap's
 * address into the guest, counted per RX queue and compared with where `verify` says the NIC's
 * program sends each flow. Shared by the suites that run a guest (plain QEMU, under libvirt,
 * after a restore).
 *
 * Two counters, each exact: the guest's own (`ethtool -S`, where its driver has per-queue
 * packet counters: Linux 6.1 does, 6.12 reports them only as netlink queue statistics), and
 * QEMU's (the used index of each RX virtqueue: one entry per packet it put on that queue, read
 * with `x-query-virtio-queue-status` through libvirt). Every counter available is checked.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import type { GuestConsole, LibvirtGuest } from '../support/guest';
import type { StatusReport } from '../../src/status';
import { ip } from '../support/guest/tap';
import type { Flow } from '../../src/rss';
import { verifyProgram } from '../../src/verify';

export interface FlowCheck {
  console: GuestConsole;
  /** The guest's interface ("eth0"). */
  iface: string;
  /** The host side: the tap, the guest's MAC on it, the addresses on each end. */
  tap: string;
  mac: string;
  hostIp: string;
  guestIp: string;
  queues: number;
  /** The NIC's live program and maps (from status). */
  progId: number;
  mapIds: readonly number[];
  /** A libvirt domain, its NIC's device alias ("net0") and its libvirtd (default this host's): QEMU's counters are checked too. */
  domain?: { name: string; device: string; uri?: string };
}

export interface Counted {
  /** Which counter: 'guest' (ethtool -S) or 'qemu' (used index of each RX virtqueue). */
  by: 'guest' | 'qemu';
  delta: number[];
}

/** Packets QEMU has put on each RX virtqueue (queue q is virtqueue 2q), modulo 2^16. */
function qemuRxUsed(domain: { name: string; device: string; uri?: string }, queues: number): number[] {
  return Array.from({ length: queues }, (_, q) => {
    const cmd = { execute: 'x-query-virtio-queue-status', arguments: { path: `/machine/peripheral/${domain.device}/virtio-backend`, queue: 2 * q } };
    const r = spawnSync('virsh', ['-q', '-c', domain.uri ?? 'qemu:///system', 'qemu-monitor-command', domain.name, JSON.stringify(cmd)], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 0, `x-query-virtio-queue-status failed: ${r.stderr}`);
    const used = (JSON.parse(r.stdout) as { return: { 'used-idx': number } }).return['used-idx'];
    assert.ok(Number.isInteger(used), r.stdout);
    return used;
  });
}

export interface RxCounter {
  by: Counted['by'];
  read: () => Promise<number[]>;
  before: number[];
}

/** Every per-queue RX counter there is for this NIC (see the top of this file), read now. */
export async function rxCounters(o: Pick<FlowCheck, 'console' | 'iface' | 'queues' | 'domain'>): Promise<RxCounter[]> {
  const counters: RxCounter[] = [];
  const guestBefore = await o.console.rxPacketsPerQueue(o.iface);
  if (guestBefore.length > 0) counters.push({ by: 'guest', read: () => o.console.rxPacketsPerQueue(o.iface), before: guestBefore });
  if (o.domain) {
    const d = o.domain;
    counters.push({ by: 'qemu', read: async () => qemuRxUsed(d, o.queues), before: qemuRxUsed(d, o.queues) });
  }
  assert.ok(counters.length > 0, 'no per-queue counter: the guest has none in ethtool -S and the caller named no libvirt domain');
  return counters;
}

/** Each counter's per-queue delta once `total` packets are counted (or 20 s passed). */
export async function countedPerQueue(counters: readonly RxCounter[], total: number): Promise<Counted[]> {
  const counted: Counted[] = [];
  for (const c of counters) {
    let delta: number[] = [];
    const deadline = Date.now() + 20_000;
    do {
      const now = await c.read();
      delta = now.map((n, q) => (c.by === 'qemu' ? (n - c.before[q] + 0x10000) % 0x10000 : n - (c.before[q] ?? 0)));
    } while (delta.reduce((a, b) => a + b, 0) < total && Date.now() < deadline);
    counted.push({ by: c.by, delta });
  }
  return counted;
}

/**
 * `n` destination ports spread over the whole 16-bit range. The Toeplitz hash is XOR-linear in
 * its input, so ports that differ only in their low bits (20000..20024) reach a queue index only
 * through a handful of key bits: with one guest key in ~64 those bits are zero and the queue
 * depends on the source port alone (a run saw 75,0,75,50 for 8 sockets). Ports that differ in
 * every bit make that ~1 in 100 000 (simulated over random keys).
 */
export function spreadPorts(n: number): number[] {
  return Array.from({ length: n }, (_, p) => 1024 + ((p * 2557) % 64000));
}

function bound(address: string): Promise<Socket> {
  const s = createSocket('udp4');
  return new Promise((resolve, reject) => s.bind({ address, port: 0 }, () => resolve(s)).once('error', reject));
}

/**
 * Send 200 flows (8 source ports × 25 destination ports, spread) and assert each queue got exactly
 * what the live program predicts, by every counter there is (at least one). Returns what was
 * counted, for the test's log line.
 */
export async function assertFlowsLandWherePredicted(o: FlowCheck): Promise<{ counted: Counted[]; predicted: number[] }> {
  await ip(['neigh', 'replace', o.guestIp, 'lladdr', o.mac, 'dev', o.tap, 'nud', 'permanent']);
  const sockets = await Promise.all(Array.from({ length: 8 }, () => bound(o.hostIp)));
  try {
    const dports = spreadPorts(25);
    const flows: Flow[] = sockets.flatMap((s) =>
      dports.map((dport): Flow => ({ family: 4, proto: 'udp', src: o.hostIp, dst: o.guestIp, sport: s.address().port, dport })),
    );
    const v = verifyProgram({ progId: o.progId, mapIds: o.mapIds as [number, number, number], queues: o.queues, mac: o.mac }, flows);
    assert.equal(v.agreed, flows.length, 'live program and reference agree on these flows');
    // The tap takes the program's value modulo its queue count.
    const predicted = new Array<number>(o.queues).fill(0);
    for (const c of v.checks) predicted[c.live % o.queues]++;
    assert.ok(predicted.every((n) => n > 0), `the flows spread over every queue: ${predicted}`);

    const counters = await rxCounters(o);
    for (const [i, f] of flows.entries()) {
      const s = sockets[Math.floor(i / 25)];
      await new Promise<void>((resolve, reject) => s.send(Buffer.from('flow'), f.dport!, o.guestIp, (e) => (e ? reject(e) : resolve())));
    }
    const counted = await countedPerQueue(counters, flows.length);
    for (const { by, delta } of counted) {
      assert.equal(delta.length, o.queues, `${by}: ${delta.length} RX queues counted`);
      // Exact everywhere except that the default queue (0) may also get the ARP reply the
      // guest's ICMP answers need (ARP is not IP: the program sends it to the default queue).
      for (let q = 1; q < o.queues; q++) assert.equal(delta[q], predicted[q], `${by}, queue ${q}: ${delta} vs ${predicted}`);
      assert.ok(delta[0] >= predicted[0] && delta[0] <= predicted[0] + 3, `${by}, queue 0: ${delta} vs ${predicted}`);
    }
    return { counted, predicted };
  } finally {
    await Promise.all(sockets.map((s) => new Promise<void>((r) => s.close(() => r()))));
  }
}

/**
 * The same for a libvirt guest's first NIC (its eth0), as `status --json` describes it, with
 * QEMU's counters too; the counts are logged under `label`.
 */
export async function assertLibvirtFlows(
  guest: LibvirtGuest,
  nic: StatusReport['domains'][number]['nics'][number],
  o: { hostIp: string; guestIp: string; queues: number; label: string },
): Promise<void> {
  const { tap, mac } = guest.interfaces[0];
  const { counted, predicted } = await assertFlowsLandWherePredicted({
    console: guest.console,
    iface: 'eth0',
    tap,
    mac,
    hostIp: o.hostIp,
    guestIp: o.guestIp,
    queues: o.queues,
    progId: nic.ebpf!.progId,
    mapIds: nic.ebpf!.mapIds,
    domain: { name: guest.name, device: nic.id!, uri: guest.host.uri },
  });
  for (const c of counted) console.log(`# ${o.label}: rx per queue for 200 flows through ${tap}, counted by ${c.by}: ${c.delta.join(' ')}; verify predicted ${predicted.join(' ')}`);
}
