/**
 * Acceptance for `virt-ebpf exec`: real QEMU 10.0.2 running as an unprivileged user on real
 * multiqueue taps (vhost=off) holds 1 bpf-prog + 3 bpf-map fds per RSS NIC, names them in its
 * command line, and QMP shows the device realized.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, ChildProcess } from 'node:child_process';
import { chownSync, readFileSync, readdirSync, readlinkSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { QmpClient, qomGet } from '../../src/qmp';
import { createTap, Tap } from '../support/guest/tap';
import { lookupUser } from '../../src/sys/users';
import { QEMU, REPO, needRoot, tempDir } from '../harness';

const CLI = join(REPO, 'dist/src/cli/main.js');
const QEMU_USER = 'libvirt-qemu';

export function fdKinds(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let t: string;
    try {
      t = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    const k = t.startsWith('anon_inode:') ? t.slice('anon_inode:'.length) : t.startsWith('socket:') ? 'socket' : t.startsWith('pipe:') ? 'pipe' : t;
    out[k] = (out[k] ?? 0) + 1;
  }
  return out;
}

async function connectRetry(path: string): Promise<QmpClient> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      return await QmpClient.connect(path, { timeoutMs: 2000 });
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

const cleanup: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const c of cleanup.reverse()) await c();
});

function run(args: string[], env: NodeJS.ProcessEnv = process.env): { proc: ChildProcess; out: () => string; exited: Promise<number | null> } {
  const proc = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((r) => proc.once('close', (c) => r(c))); // at 'close' its output is whole
  cleanup.push(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL');
      await exited;
    }
  });
  return { proc, out: () => out, exited };
}

async function rssVm(nics: number, dir: string): Promise<{ pid: number; qmp: QmpClient; taps: Tap[]; cmdline: string[]; stop(): Promise<void> }> {
  const taps: Tap[] = [];
  for (let i = 0; i < nics; i++) {
    const tap = await createTap({ user: QEMU_USER });
    taps.push(tap);
    cleanup.push(() => tap.remove());
  }
  const sock = join(dir, `qmp-${nics}.sock`);
  const args = ['exec', '--user', QEMU_USER, '--', QEMU, '-machine', 'q35', '-accel', 'tcg', '-nodefaults', '-display', 'none', '-S', '-qmp', `unix:${sock},server=on,wait=off`];
  taps.forEach((t, i) => {
    args.push('-netdev', `tap,id=n${i},ifname=${t.name},script=no,downscript=no,vhost=off,queues=4`);
    // one NIC in key=value form, the others in libvirt's JSON form
    args.push('-device', i === 0 ? `virtio-net-pci,netdev=n${i},mq=on,vectors=10,rss=on,id=net${i}` : JSON.stringify({ driver: 'virtio-net-pci', netdev: `n${i}`, mq: true, vectors: 10, rss: true, id: `net${i}` }));
  });
  // one more NIC without rss: must stay untouched
  args.push('-netdev', 'user,id=plain', '-device', 'virtio-net-pci,netdev=plain,id=plain0');
  const r = run(args);
  const pid = r.proc.pid!;
  const qmp = await connectRetry(sock).catch((e) => {
    throw new Error(`QEMU did not come up: ${String(e)}\n${r.out()}`);
  });
  const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  return {
    pid,
    qmp,
    taps,
    cmdline,
    async stop() {
      await qmp.close();
      r.proc.kill('SIGKILL');
      await r.exited;
    },
  };
}

for (const nics of [1, 2]) {
  test(`exec: unprivileged QEMU holds 1 prog + 3 maps per RSS NIC (${nics} NIC${nics > 1 ? 's' : ''}) and realizes the devices`, async () => {
    needRoot('loads BPF, creates taps, drops to libvirt-qemu');
    const d = tempDir();
    cleanup.push(() => d.remove());
    const qemuUser = lookupUser(QEMU_USER);
    chownSync(d.path, qemuUser.uid, qemuUser.gid); // QEMU creates its QMP socket there after dropping to that user
    const vm = await rssVm(nics, d.path);
    try {
      const status = readFileSync(`/proc/${vm.pid}/status`, 'utf8');
      assert.match(status, new RegExp(`^Uid:\\s+${qemuUser.uid}\\s+${qemuUser.uid}\\s+${qemuUser.uid}\\s+${qemuUser.uid}$`, 'm'), 'QEMU runs as libvirt-qemu (real, effective, saved, fs)');
      assert.match(status, /^CapEff:\s+0+$/m, 'QEMU has no capabilities');
      const kinds = fdKinds(vm.pid);
      assert.equal(kinds['bpf-prog'] ?? 0, nics, `bpf-prog fds: ${JSON.stringify(kinds)}`);
      assert.equal(kinds['bpf-map'] ?? 0, 3 * nics, `bpf-map fds: ${JSON.stringify(kinds)}`);
      const devices = vm.cmdline.filter((a, i) => vm.cmdline[i - 1] === '-device');
      const rssDevices = devices.filter((d) => d.includes('ebpf-rss-fds')).map((d) => JSON.parse(d));
      assert.equal(rssDevices.length, nics);
      for (const dev of rssDevices) {
        const fds: string[] = dev['ebpf-rss-fds'];
        assert.equal(fds.length, 4);
        const targets = fds.map((n) => readlinkSync(`/proc/${vm.pid}/fd/${n}`));
        assert.deepEqual(targets, ['anon_inode:bpf-prog', 'anon_inode:bpf-map', 'anon_inode:bpf-map', 'anon_inode:bpf-map'], 'property order: program, configuration, key, table');
        assert.equal(dev.mq, true, 'key=value converted with typed booleans');
      }
      assert.ok(devices.includes('virtio-net-pci,netdev=plain,id=plain0'), 'the NIC without rss is untouched');
      for (let i = 0; i < nics; i++) {
        assert.equal(await qomGet(vm.qmp, `/machine/peripheral/net${i}`, 'realized'), true);
      }
      for (const t of vm.taps) assert.ok(existsSync(`/sys/class/net/${t.name}`));
    } finally {
      await vm.stop();
    }
  });
}

function oneLineError(out: string, code: string, remedyHint: RegExp): void {
  const lines = out.trim().split('\n');
  assert.equal(lines.length, 1, `one line expected, got:\n${out}`);
  assert.match(lines[0], new RegExp(`^virt-ebpf: .*\\(${code}\\); `));
  assert.match(lines[0], remedyHint);
}

test('exec: bad input ends in one line with a remedy, and nothing runs', async () => {
  needRoot('runs exec as root and as nobody');
  const d = tempDir();
  cleanup.push(() => d.remove());
  const cases: Array<{ args: string[]; code: string; hint: RegExp; uid?: number }> = [
    { args: ['exec', '--', join(d.path, 'no-such-qemu')], code: 'EMULATOR_NOT_FOUND', hint: /install|path/i },
    { args: ['exec', '--user', 'no-such-user-x', '--', QEMU], code: 'NO_SUCH_USER', hint: /existing account/ },
    { args: ['exec', '--', QEMU, '-device', '{"driver":'], code: 'ARGV_INVALID', hint: /fix the -device JSON/ },
    { args: ['exec', '--bogus', '--', QEMU], code: 'USAGE', hint: /virt-ebpf help/ },
    { args: ['exec', '--', QEMU, '-version'], code: 'NOT_ROOT', hint: /as root/, uid: 65534 },
  ];
  for (const c of cases) {
    const proc = spawn(process.execPath, [CLI, ...c.args], { stdio: ['ignore', 'pipe', 'pipe'], uid: c.uid, gid: c.uid });
    let out = '';
    proc.stdout.on('data', (x) => (out += x));
    proc.stderr.on('data', (x) => (out += x));
    const code = await new Promise<number | null>((r) => proc.once('close', r)); // its output whole
    assert.notEqual(code, 0, `${c.args.join(' ')} must fail`);
    oneLineError(out, c.code, c.hint);
  }
});

test('exec: Debian 12\'s own QEMU 7.2 is refused as needing QEMU >= 9.0', async () => {
  needRoot('probes an unpacked QEMU 7.2');
  const { execFileSync } = await import('node:child_process');
  const qemu72 = execFileSync('bash', [join(REPO, 'scripts/fetch-qemu72.sh')], { encoding: 'utf8' }).trim().split('\n').pop()!;
  assert.ok(existsSync(qemu72), `fetch-qemu72.sh gave ${qemu72}`);
  const d = tempDir();
  cleanup.push(() => d.remove());
  const r = run(['exec', '--cache-dir', d.path, '--', qemu72, '-machine', 'none', '-nodefaults', '-display', 'none', '-S', '-netdev', 'user,id=n0', '-device', 'virtio-net-pci,netdev=n0,rss=on']);
  const code = await r.exited;
  assert.equal(code, 1);
  oneLineError(r.out(), 'EMULATOR_UNSUPPORTED', /QEMU >= 9\.0/);
  assert.match(r.out(), /9\.0/);
});
