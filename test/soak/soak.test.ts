/**
 * The soak: an enabled domain started and destroyed again and again through libvirt with the
 * installed broker (`VIRT_EBPF_SOAK_CYCLES`, 200 in CI; `npm run bench` runs 1 000). Every start
 * gets its program and maps; what the broker holds afterwards — BPF objects, open fds, resident
 * memory — is what it held after the warm-up, and leaks would show as growth.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { needRoot, tempDir } from '../harness';
import { readManifest } from '../../src/install/manifest';
import { DEFAULT_PATHS } from '../../src/install/plan';
import { BrokerChild, installForReal } from '../coldstart/fixture';
import { cli, removeDomain, testDomains, waitFor } from '../coldstart/libvirt';
import { brokerHolds, soak } from './cycles';

const CYCLES = Number(process.env.VIRT_EBPF_SOAK_CYCLES ?? 200);
const PREFIX = `vebpf-soak-${process.pid}-`;
const broker = new BrokerChild();
let scratch: { path: string; remove(): void };

before(async () => {
  needRoot('installs into system paths and starts domains in the system libvirtd');
  scratch = tempDir('vebpf-soak-');
  installForReal();
  await broker.start();
});

after(async () => {
  for (const n of testDomains(PREFIX)) removeDomain(n);
  await broker.stop();
  if (readManifest(DEFAULT_PATHS.manifest)) cli('uninstall', '--force');
  scratch?.remove();
});

test(`${CYCLES} start/destroy cycles: every start gets its fds; the broker's BPF objects, fds and memory stay flat`, { timeout: 3_600_000 }, async (t) => {
  const r = await soak({ broker, name: `${PREFIX}vm`, cycles: CYCLES, scratch: scratch.path, warmUp: 20 });
  t.diagnostic(`soak: ${r.samples.map((s) => `cycle ${s.cycle}: ${s.progs} progs, ${s.fds} fds, ${(s.rssKiB / 1024).toFixed(1)} MiB`).join('; ')}`);
  const first = r.samples[0];
  const half = Math.ceil(r.samples.length / 2);
  // V8's heap grows and shrinks in steps of megabytes: compare the highest point of each half.
  const peak = (xs: typeof r.samples) => Math.max(...xs.map((x) => x.rssKiB));
  const [early, late] = [peak(r.samples.slice(0, half)), peak(r.samples.slice(half))];
  await waitFor('the broker to hold its pool again', 30_000, () => brokerHolds(broker).progs === 2);
  const end = brokerHolds(broker);
  assert.equal(end.progs, 2, 'the broker holds its pool (2) and nothing else');
  assert.ok(end.fds <= first.fds + 2, `the broker's open fds grew from ${first.fds} to ${end.fds}`);
  // 8 MiB between the halves: a leak of 80 KiB a cycle over 200 cycles.
  assert.ok(late - early < 8 * 1024, `the broker's resident memory peaked at ${early} KiB in the first half and ${late} KiB in the second`);
});
