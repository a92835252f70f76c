/**
 * Which steering is in effect, told from the host, against a real guest under libvirt (the real
 * `virt-ebpf install`, the installed broker as a child, the guest fixture enabled with
 * `virt-ebpf enable` and started by libvirtd through our wrapper). One domain, three NICs:
 *   net0  rss='on'                          → eBPF (certain: the program runs on the tap's frames)
 *   net1  rss='on' rss_hash_report='on'     → QEMU software RSS because the guest enabled hash report
 *   net2  no rss                            → none (certain)
 * The guest runs `ethtool -X` on eth0 and eth1; host UDP traffic flows into both taps while
 * `status` and `doctor` count program runs. Ground truth the product itself never uses: the
 * guest driver's own view of what it negotiated (its sysfs feature bits), and where QEMU's
 * software RSS puts net1's flows (QEMU's RX used index and the guest's per-queue counters
 * against the reference Toeplitz over the guest's own table and key). Nothing here
 * assumes one QEMU's property list: the hash-* properties are expected exactly where this
 * host's emulator probe lists them (QEMU >= 10.1). Runs unchanged in the matrix cells.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createSocket, type Socket } from 'node:dgram';
import { ensureFixture, parseEthtoolRss, startLibvirtGuest, type GuestFixture, type LibvirtGuest } from '../support/guest';
import { countedPerQueue, rxCounters, type Counted } from './flows';
import { ip } from '../support/guest/tap';
import { probeEmulator } from '../../src/emulator';
import { HASH_TYPES_LINUX_DEFAULT, referenceQueue, type Flow } from '../../src/rss';
import { MIN_FRAMES, STEERING_LABELS } from '../../src/steering';
import type { StatusReport } from '../../src/status';
import { readManifest } from '../../src/install/manifest';
import { DEFAULT_PATHS } from '../../src/install/plan';
import { needRoot, watchFds } from '../harness';
import { BrokerChild, installForReal, tearDownInstalled } from '../coldstart/fixture';
import { cli } from '../status/qemu';
import { libvirtdReachable } from '../libvirt/fixture';

const PREFIX = `vebpf-st-${process.pid}-`;
const NET = [
  { host: '10.199.82.1', guest: '10.199.82.2' },
  { host: '10.199.83.1', guest: '10.199.83.2' },
];
const QUEUES = 4;

const broker = new BrokerChild();
let fixture: GuestFixture;
let guest: LibvirtGuest;
let installedBefore = false;
let checkFds: () => void;
let sockets: Socket[] = [];

type Report = StatusReport;

before(async () => {
  needRoot('installs into system paths, runs the broker, starts a domain in the system libvirtd, adds host addresses');
  libvirtdReachable();
  checkFds = watchFds();
  fixture = await ensureFixture();
  installedBefore = Boolean(readManifest(DEFAULT_PATHS.manifest));
  installForReal();
  await broker.start();
  guest = await startLibvirtGuest({
    name: PREFIX + 'three',
    fixture,
    nics: [{ queues: QUEUES }, { queues: QUEUES, hashReport: true }, { queues: 2, rss: false }],
    // Channels first: an `ethtool -L` after `ethtool -X` would turn RSS off in QEMU.
    script: ['@channels0 vebpf_maxq eth0', '@channels1 vebpf_maxq eth1'],
    ip: `${NET[0].guest}/30`,
  });
  for (const [i, n] of NET.entries()) {
    await guest.addHostAddress(`${n.host}/30`, i);
    // eth1 has no address in the guest: no ARP, the frames still reach its driver's queues.
    await ip(['neigh', 'replace', n.guest, 'lladdr', guest.interfaces[i].mac, 'dev', guest.interfaces[i].tap, 'nud', 'permanent']);
  }
  sockets = await Promise.all(NET.map((n) => bound(n.host)));
  console.log(`# guest up in ${guest.bootMs} ms; taps ${guest.interfaces.map((i) => i.tap).join(' ')}`);
});

after(async () => {
  await Promise.all(sockets.map((s) => new Promise<void>((r) => s.close(() => r()))));
  await tearDownInstalled({ domains: [guest], broker, installedBefore });
  checkFds?.();
});

function bound(address: string): Promise<Socket> {
  const s = createSocket('udp4');
  return new Promise((resolve, reject) => s.bind({ address, port: 0 }, () => resolve(s)).once('error', reject));
}

/** UDP datagrams into both taps every 10 ms while `body` runs (what a busy guest would see). */
async function withTraffic<T>(body: () => Promise<T>): Promise<T> {
  let port = 0;
  const timer = setInterval(() => {
    port = (port + 1) % 1000;
    for (const [i, n] of NET.entries()) sockets[i].send(Buffer.from('steer'), 30000 + port, n.guest);
  }, 10);
  try {
    return await body();
  } finally {
    clearInterval(timer);
  }
}

async function statusJson(): Promise<Report> {
  const r = await cli(['status', guest.name, '--json']);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as Report;
}

const byMac = <T extends { mac?: string }>(list: readonly T[], i: number): T => {
  const hit = list.find((n) => n.mac === guest.interfaces[i].mac);
  assert.ok(hit, `NIC ${guest.interfaces[i].mac} is listed: ${JSON.stringify(list.map((n) => n.mac))}`);
  return hit;
};

/** Feature bits of virtio-net (the virtio spec): what a driver accepted is bit i = character i of its sysfs `features`. */
const VIRTIO_NET_F_HASH_REPORT = 57;
const VIRTIO_NET_F_RSS = 60;

/**
 * The features the guest's driver accepted for its NIC `eth`, as the guest's own sysfs lists
 * them. (QEMU's x-query-virtio-status would say the same, but QEMU 11.1.3 aborts on it: an
 * assertion in its QAPI output visitor.)
 */
async function driverFeatures(eth: string): Promise<string> {
  const out = (await guest.console.run(`cat /sys/class/net/${eth}/device/features`)).output;
  const bits = /^[01]{64,}$/m.exec(out)?.[0];
  assert.ok(bits, `the guest's ${eth} features: ${out}`);
  return bits;
}

test("the guest turns RSS on for eth0 and eth1 (its own ethtool), and the guest's driver says which NIC negotiated hash reporting", async () => {
  for (const eth of ['eth0', 'eth1']) await guest.console.run(`ethtool -X ${eth} equal ${QUEUES}`);
  const [eth0, eth1] = [await driverFeatures('eth0'), await driverFeatures('eth1')];
  assert.equal(eth0[VIRTIO_NET_F_HASH_REPORT], '0', 'eth0 (net0): QEMU did not offer hash reporting');
  assert.equal(eth1[VIRTIO_NET_F_HASH_REPORT], '1', "eth1 (net1): the guest's driver took hash reporting (rss_hash_report='on')");
  assert.deepEqual([eth0[VIRTIO_NET_F_RSS], eth1[VIRTIO_NET_F_RSS]], ['1', '1'], 'and both RSS');
});

test("status --json, traffic flowing: net0 eBPF (certain), net1 QEMU software RSS because the guest enabled hash report, net2 none (certain); hash-* properties exactly where the probe lists them", async () => {
  const report = await withTraffic(statusJson);
  assert.equal(report.domains.length, 1);
  const d = report.domains[0];
  const [net0, net1] = [byMac(d.nics, 0), byMac(d.nics, 1)];
  const net2 = byMac(d.plainNics, 2);

  const s0 = net0.steering!;
  assert.deepEqual([s0.kind, s0.label, s0.confidence], ['ebpf', 'eBPF', 'certain'], JSON.stringify(s0));
  assert.equal(s0.guestHashReport, 'not-offered');
  const ran = s0.evidence.find((e) => e.startsWith('program ran '));
  assert.match(ran ?? '', /^program ran [1-9]\d* times? while the tap passed \d+ frames? to QEMU/, s0.evidence.join('\n'));
  assert.equal(net0.hashReport, false);
  assert.equal(net0.state, 'active', 'and the maps hold the table eBPF steers by');

  const s1 = net1.steering!;
  assert.deepEqual([s1.kind, s1.label], ['software-hash-report', 'QEMU software RSS because the guest enabled hash report'], JSON.stringify(s1));
  assert.equal(s1.label, STEERING_LABELS['software-hash-report']);
  assert.equal(s1.confidence, 'likely', 'whether the guest sent an RSS configuration is not visible from the host (the next test shows it did)');
  assert.equal(s1.guestHashReport, 'negotiated');
  assert.ok(s1.evidence.some((e) => /^tap vnet header 20 bytes/.test(e)), s1.evidence.join('\n'));
  const idle = /^program ran 0 times while the tap passed (\d+) frames/.exec(s1.evidence.find((e) => e.startsWith('program ran ')) ?? '');
  assert.ok(idle && Number(idle[1]) >= MIN_FRAMES, `net1's program never ran while frames passed: ${s1.evidence.join('\n')}`);
  assert.match(s1.reason, /stays detached, as observed/);
  assert.equal(net1.hashReport, true);
  assert.equal(net1.state, 'unconfigured', 'QEMU wrote nothing to net1\'s maps: it never took the eBPF path');

  assert.deepEqual([net2.steering.kind, net2.steering.confidence], ['none', 'certain']);
  assert.match(net2.steering.reason, /rss is off/);

  const { caps } = await probeEmulator(d.emulator!.path, { useCache: false });
  const want = Object.keys(caps.hashProps).length ? caps.hashProps : undefined;
  for (const n of [net0, net1, net2]) assert.deepEqual(n.hashProperties, want, `hash-* of ${n.mac} (QEMU ${caps.version.major}.${caps.version.minor})`);
  console.log(`# QEMU ${caps.version.major}.${caps.version.minor}.${caps.version.micro}: hash-* properties ${want ? Object.keys(want).join(' ') : 'none'}`);
  for (const s of [s0, s1, net2.steering]) console.log(`# ${s.label} (${s.confidence}): ${s.evidence.join('; ')}`);
});

test("net1's flows land on the guest queues where QEMU's software RSS puts them (the reference over the guest's own table and key) while its program never runs", async () => {
  const { tap } = guest.interfaces[1];
  const rss = parseEthtoolRss((await guest.console.run('ethtool -x eth1')).output);
  const state = {
    config: { redirect: true, populateHash: false, hashTypes: HASH_TYPES_LINUX_DEFAULT, indirectionsLen: rss.size, defaultQueue: 0 },
    key: Buffer.from(rss.key!, 'hex'),
    table: rss.table,
  };
  const flows: Flow[] = Array.from({ length: 160 }, (_, p): Flow => ({ family: 4, proto: 'udp', src: NET[1].host, dst: NET[1].guest, sport: sockets[1].address().port, dport: 21000 + p }));
  const predicted = new Array<number>(QUEUES).fill(0);
  for (const f of flows) predicted[referenceQueue(f, state).queue]++;
  assert.ok(predicted.filter((n) => n > 0).length > 1, `the flows spread over several queues: ${predicted}`);

  /** Sends every flow once; each per-queue counter there is (the guest's, QEMU's) over that round. */
  const round = async (): Promise<Counted[]> => {
    const counters = await rxCounters({ console: guest.console, iface: 'eth1', queues: QUEUES, domain: { name: guest.name, device: 'net1' } });
    for (const f of flows) await new Promise<void>((resolve, reject) => sockets[1].send(Buffer.from('flow'), f.dport!, NET[1].guest, (e) => (e ? reject(e) : resolve())));
    return countedPerQueue(counters, flows.length);
  };
  const show = (counted: Counted[]) => counted.map((c) => `${c.by} ${c.delta.join(' ')}`).join(', ');
  // A first round wakes every queue of a guest under TCG (its NAPI and ring refills); the second is measured.
  console.log(`# ${tap}: warm-up round, rx per queue ${show(await round())}`);
  const counted = await round();
  console.log(`# ${tap}: rx per queue ${show(counted)}, software RSS reference ${predicted.join(' ')}`);
  for (const { by, delta } of counted) assert.deepEqual(delta, predicted, `${by}: every flow on the queue the RSS table gives: QEMU steers net1 in software`);
});

test('status (text) and doctor say it in one line per NIC; doctor suggests the fix for the hash-report NIC', async () => {
  const text = await withTraffic(() => cli(['status', guest.name]));
  assert.equal(text.code, 0, text.stderr);
  const steer = text.stdout.split('\n').filter((l) => /^ {4}steer {2}/.test(l));
  assert.equal(steer.length, 3, text.stdout);
  assert.match(steer[0], /^ {4}steer {2}eBPF \(certain\): /);
  assert.match(steer[1], /^ {4}steer {2}QEMU software RSS because the guest enabled hash report \(likely\): /);
  assert.match(steer[2], /^ {4}steer {2}none \(certain\): rss is off/);
  console.log(text.stdout.trimEnd().replace(/^/gm, '# '));

  const doc = await withTraffic(() => cli(['doctor', '--json'], { timeoutMs: 120_000 }));
  const results = JSON.parse(doc.stdout) as Array<{ name: string; verdict: string; detail: string; fix?: string }>;
  const mine = results.filter((r) => r.name.startsWith(`steering ${guest.name} `));
  assert.equal(mine.length, 3, JSON.stringify(results.filter((r) => r.name.startsWith('steering'))));
  const [d0, d1, d2] = ['net0', 'net1', 'net2'].map((n) => mine.find((r) => r.name === `steering ${guest.name} ${n}`)!);
  assert.deepEqual([d0.verdict, d1.verdict, d2.verdict], ['ok', 'warn', 'ok']);
  assert.match(d0.detail, /^eBPF \(certain\): /);
  assert.match(d1.detail, /^QEMU software RSS because the guest enabled hash report \(likely\): /);
  assert.match(d1.fix!, /remove rss_hash_report='on'/);
  assert.match(d2.detail, /^none \(certain\): /);
});

test("virt-ebpf enable on this domain warns about net1's rss_hash_report='on' in one line on stderr, and still succeeds", async () => {
  const r = await cli(['enable', guest.name]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /eBPF RSS is already enabled; definition unchanged/);
  const warnings = r.stderr.split('\n').filter((l) => l.startsWith('virt-ebpf: warning:'));
  assert.equal(warnings.length, 1, r.stderr);
  assert.match(warnings[0], new RegExp(`interface 1 \\(${guest.interfaces[1].mac}\\) has rss_hash_report='on': .*steer in software instead of with eBPF`, 'i'));
});
