/**
 * Only QEMU is ever run, and never with root's power (issue: "a peer makes root execute any
 * root-owned binary"): an emulator path a peer names is checked against the allowlist of QEMU
 * system emulators before anything is executed; the probe of a real QEMU runs as libvirt's QEMU
 * account, with no capabilities and no_new_privs, as libvirt itself probes.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readCmdline } from '../../src/sys/proc';
import { QEMU, needRoot, tempDir } from '../harness';
import { BrokerProcess, QEMU_ACCOUNT, ROOT, assertServing, hostile, line, sleep, startBrokerProcess } from './support';
import { PROBE_ID_BASE, probeAccount } from '../../src/broker/daemon';

let b: BrokerProcess;
const scratch = tempDir();
/** A root-owned, not group/world-writable executable in one of the broker's emulator directories. */
const canary = `/usr/libexec/vebpf-canary-${process.pid}`;
const ranMarker = join(scratch.path, 'canary-ran');

before(async () => {
  needRoot('the broker runs as root; a canary goes into /usr/libexec');
  chmodSync(scratch.path, 0o777);
  writeFileSync(canary, `#!/bin/sh\necho "$(id -u) $*" >> '${ranMarker}'\nexit 1\n`, { mode: 0o755 });
  chmodSync(canary, 0o755);
  b = await startBrokerProcess({ pool: { size: 0 } });
});

after(async () => {
  await b?.stop();
  rmSync(canary, { force: true });
  scratch.remove();
});

for (const [op, who] of [['acquire', ROOT], ['prewarm', QEMU_ACCOUNT]] as const) {
  test(`${op} naming a root-owned non-QEMU binary in an emulator directory: refused, and the binary never runs`, async () => {
    rmSync(ranMarker, { force: true });
    for (let i = 0; i < 3; i++) {
      const r = await hostile(who, b.socket, 'ask', [line({ op, emulator: canary, count: 1 })]);
      assert.equal(r.reply?.ok, false, JSON.stringify(r));
      assert.match(r.reply.error.code, /^(BROKER_DENIED|EMULATOR_NOT_ALLOWED)$/);
    }
    assert.equal(existsSync(ranMarker), false, `root ran the peer's binary: ${existsSync(ranMarker) ? readFileSync(ranMarker, 'utf8') : ''}`);
    await assertServing(b, `${op} of a non-QEMU binary`);
  });
}

test('exec-plan naming a non-QEMU binary as the emulator: refused, never run', async () => {
  rmSync(ranMarker, { force: true });
  const argv = ['-device', JSON.stringify({ driver: 'virtio-net-pci', rss: true, netdev: 'n0' })];
  const r = await hostile(QEMU_ACCOUNT, b.socket, 'ask', [line({ op: 'exec-plan', emulator: canary, argv })]);
  assert.equal(r.reply?.ok, false, JSON.stringify(r));
  assert.equal(existsSync(ranMarker), false, 'root ran the peer\'s binary');
});

/** Status fields of a live process, or undefined once it is gone. */
function statusOf(pid: string): Record<string, string> | undefined {
  try {
    return Object.fromEntries(
      readFileSync(`/proc/${pid}/status`, 'utf8')
        .split('\n')
        .map((l) => l.split(':\t'))
        .filter((kv) => kv.length === 2),
    );
  } catch {
    return undefined;
  }
}

test('the probe of a real QEMU (cold cache) runs as a uid of its own — not root, not the QEMU account a guest may own — without capabilities, groups, and with no_new_privs', async () => {
  const seen: Array<Record<string, string>> = [];
  let watching = true;
  const watcher = (async () => {
    while (watching) {
      for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
        const argv = readCmdline(pid);
        if (!argv || !argv.includes('-machine') || !argv.includes('none') || !argv.some((a) => a.startsWith('socket,id=qmp,fd='))) continue;
        const st = statusOf(pid);
        if (st && !seen.some((s) => s.Pid === st.Pid)) seen.push(st);
      }
      await sleep(2);
    }
  })();
  const r = await hostile(QEMU_ACCOUNT, b.socket, 'ask', [line({ op: 'prewarm', emulator: QEMU, count: 1 })]);
  watching = false;
  await watcher;
  assert.equal(r.reply?.ok, true, JSON.stringify(r));
  assert.ok(seen.length >= 1, 'the probe process was not seen (the cache was not cold?)');
  for (const st of seen) {
    const [ruid, euid] = st.Uid.split('\t').map(Number);
    assert.ok(ruid >= PROBE_ID_BASE && ruid < PROBE_ID_BASE + 0x10000, `probe ran as uid ${st.Uid}`);
    assert.equal(euid, ruid);
    assert.notEqual(ruid, QEMU_ACCOUNT.uid, 'a guest-owned QEMU (that account) could ptrace the probe');
    assert.equal(st.CapEff, '0000000000000000', `probe had capabilities ${st.CapEff}`);
    assert.equal(st.CapPrm, '0000000000000000');
    assert.equal(st.NoNewPrivs, '1', 'probe ran without no_new_privs');
    assert.equal(st.Groups.trim(), '', `probe kept supplementary groups ${st.Groups}`);
    const gid = Number(st.Gid.split('\t')[0]);
    assert.ok(gid === ruid || gid === kvmGroup(), `probe ran as gid ${st.Gid}: neither its own nor /dev/kvm's group`);
    assert.notEqual(gid, 0);
  }
});

function kvmGroup(): number | undefined {
  try {
    return statSync('/dev/kvm').gid;
  } catch {
    return undefined;
  }
}

test('probeAccount: /dev/kvm opened through its group (0660) lends that group; root\'s group, a 0666 device or no device never do', () => {
  const kvm = probeAccount({ gid: 994, mode: 0o20660 });
  assert.ok(kvm.uid >= PROBE_ID_BASE && kvm.uid < PROBE_ID_BASE + 0x10000);
  assert.equal(kvm.gid, 994);
  for (const dev of [{ gid: 0, mode: 0o20660 }, { gid: 994, mode: 0o20606 }, null]) {
    const a = probeAccount(dev);
    assert.equal(a.gid, a.uid, JSON.stringify(dev));
  }
});
