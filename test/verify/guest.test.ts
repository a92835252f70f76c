/**
 * End to end with a real guest: the guest fixture's QEMU gets eBPF fds we loaded (ebpf-rss-fds),
 * the guest's virtio_net turns RSS on with ethtool, and
 *   - `status --json` shows exactly the table and key the guest's `ethtool -x` prints,
 *     for `equal 2`, `weight 3 1` and `equal 4`;
 *   - `verify` agrees with the reference on every flow;
 *   - UDP flows sent from the host into the tap land on the guest's queues (`ethtool -S`)
 *     exactly where verify's predictions for those flows say.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { loadRss, type RssContext } from '../../src/bpf';
import { bootGuest, ensureFixture, parseEthtoolRss, type BootedGuest } from '../support/guest';
import { collectStatus, runStatus, type StatusReport } from '../../src/status';
import { runVerify } from '../../src/verify';
import { needRoot, QEMU, watchFds } from '../harness';
import { rssObject } from '../bpf/fixture';
import { cli, fdinfoIds } from '../status/qemu';
import { assertFlowsLandWherePredicted } from '../libvirt-guest/flows';

const HOST_IP = '10.199.78.1';
const GUEST_IP = '10.199.78.2';
const QUEUES = 4;

let ctx: RssContext;
let guest: BootedGuest;
let checkFds: () => void;

before(async () => {
  needRoot('loads BPF, creates a tap, boots QEMU with our fds');
  checkFds = watchFds();
  const fixture = await ensureFixture();
  ctx = loadRss(await rssObject());
  guest = await bootGuest({
    fixture,
    qemu: QEMU,
    queues: QUEUES,
    // Channels first: an `ethtool -L` after `ethtool -X` would turn RSS off in QEMU.
    script: ['@channels vebpf_maxq eth0'],
    ip: `${GUEST_IP}/30`,
    tap: { hostIp: `${HOST_IP}/30` },
    ebpfRssFds: ctx.fds.map((f) => f.fd),
  });
  console.log(`# guest with our eBPF fds: boot to READY ${guest.bootMs} ms (TCG)`);
});

after(async () => {
  await guest?.close();
  ctx?.close();
  checkFds?.();
});

async function statusJson(): Promise<StatusReport['domains'][number]['nics'][number]> {
  const r = await cli(['status', String(guest.pid), '--json']);
  assert.equal(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout) as StatusReport;
  assert.equal(report.domains.length, 1);
  return report.domains[0].nics[0];
}

async function guestTable(): Promise<ReturnType<typeof parseEthtoolRss>> {
  return parseEthtoolRss((await guest.console.run('ethtool -x eth0')).output);
}

test('QEMU uses our program: status ties the NIC to the ids we loaded, not configured before ethtool -X', async () => {
  const fdsInQemu = [3, 4, 5, 6];
  assert.deepEqual(fdinfoIds(guest.pid, fdsInQemu), [ctx.progId, ...ctx.mapIds]);
  const nic = collectStatus(String(guest.pid)).domains[0].nics[0];
  assert.deepEqual(nic.ebpf, { source: 'fd-numbers', matchedBy: 'command-line', fds: fdsInQemu, progId: ctx.progId, mapIds: [...ctx.mapIds] });
  assert.equal(nic.state, 'unconfigured');
  assert.equal(nic.tap, guest.tap);
  assert.equal(nic.queues, QUEUES);
});

for (const setting of ['equal 2', 'weight 3 1', 'equal 4']) {
  test(`ethtool -X eth0 ${setting}: status --json shows exactly the guest's table and key; verify agrees 256/256`, async () => {
    await guest.console.run(`ethtool -X eth0 ${setting}`);
    const want = await guestTable();
    const nic = await statusJson();
    assert.equal(nic.state, 'active', nic.summary);
    assert.equal(nic.rss!.indirectionsLen, want.size);
    assert.deepEqual(nic.rss!.table, want.table);
    assert.equal(nic.rss!.key, want.key, 'the key as the guest set it (first word un-swapped)');
    assert.equal(nic.rss!.hashTypes, 0x3f, "Linux virtio_net's default hash types");
    const entries = nic.histogram!.map((h) => h.entries);
    assert.deepEqual(entries, [0, 1, 2, 3].map((q) => want.table.filter((x) => x === q).length));
    const v = await runVerify([String(guest.pid), '--flows', '256']);
    assert.equal(v.code, 0, v.stdout);
    assert.match(v.stdout, /: 256\/256 flows agree with the reference$/m);
  });
}

test('UDP flows from the host land on the guest queues exactly where verify predicts', async () => {
  // The table from the last step (equal 4) spreads flows over all four queues.
  const nic = collectStatus(String(guest.pid)).domains[0].nics[0];
  const { counted, predicted } = await assertFlowsLandWherePredicted({
    console: guest.console,
    iface: 'eth0',
    tap: guest.tap,
    mac: guest.mac,
    hostIp: HOST_IP,
    guestIp: GUEST_IP,
    queues: QUEUES,
    progId: nic.ebpf!.progId,
    mapIds: nic.ebpf!.mapIds,
  });
  for (const c of counted) console.log(`# rx per queue for 200 flows, counted by ${c.by}: ${c.delta.join(' ')}; verify predicted ${predicted.join(' ')}`);
});

test('status text for the running guest reads at a glance', async () => {
  const r = await runStatus([String(guest.pid)]);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /RSS {4}on: 128 table entries, default queue 0/);
  assert.match(r.stdout, /table {2}q0 █{8} +32 \(25%\)\n +q1 █{8} +32 \(25%\)\n +q2 █{8} +32 \(25%\)\n +q3 █{8} +32 \(25%\)/);
  console.log(r.stdout.trimEnd().replace(/^/gm, '# '));
});
