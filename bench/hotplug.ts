/**
 * `npm run bench`, hot-plug section: what the hot-plug shim (shims/qmp-preload.c, inside QEMU)
 * costs, against QEMU without it measured in the same run.
 *  - per command: query-status round trips to a plain QEMU vs to a QEMU with the shim
 *  - device_add of a virtio-net NIC with the shim: without rss (looked at, passed) vs with rss
 *    (broker acquire from a warm pool, fds into QEMU, the line rewritten as QEMU reads it), and
 *    QEMU's own cost of an rss device_add: a QEMU without virt-ebpf given the fds by `getfd`
 *    first (not timed), as a libvirt with the support would
 *  - memory per domain: the shim's mappings in QEMU, RSS and PSS
 * Root: the broker loads BPF, QEMU runs as libvirt-qemu like under libvirt. The broker runs in a
 * process of its own with the production logger, as the unit runs it (bench/broker-process.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { QmpClient } from '../src/qmp';
import { lookupUser } from '../src/sys/users';
import type { Tap } from '../test/support/guest/tap';
import { ask } from '../test/broker/support';
import { tempDir, QEMU } from '../test/harness';
import { addNetdev, shimMemoryKiB, startDomainQemu, until, type DomainQemu } from '../test/hotplug-shim/support';
import { medianWithInterval, sample, stats, table } from './stats';
import { probeEmulator } from '../src/emulator';
import { loadContext, type AcquiredContext } from '../src/context';
import { closeAll } from '../src/fdpass';
import { propertyValue } from '../src/argv';
import { brokerNodeFlags } from './broker-v8';

const N = Number(process.env.BENCH_N ?? 1);
/** device_adds of each kind, one per pcie-root-port (a device_del needs a guest to let go) */
const PORTS = Number(process.env.BENCH_HOTPLUG_N ?? 50);
/** BENCH_HOTPLUG_V8=defaults: the broker under V8's defaults instead of the unit's node flags (bench/broker-v8.ts) */
const V8_DEFAULTS = process.env.BENCH_HOTPLUG_V8 === 'defaults';
const BROKER_FLAGS = brokerNodeFlags(V8_DEFAULTS);

/** The broker in a process of its own (bench/broker-process.ts), on a socket QEMU's account can reach. */
async function brokerProcess(dir: string, config: Record<string, unknown>, hookEnv: { stateDir: string }): Promise<{ socket: string; close(): Promise<void> }> {
  const home = join(dir, 'broker');
  mkdirSync(home);
  chmodSync(home, 0o755);
  const socket = join(home, 'broker.sock');
  // Its log goes to a file, as with StandardOutput=file: a pipe to this process would wake the
  // process that times QEMU's replies at every line.
  const log = join(home, 'broker.log');
  const out = openSync(log, 'w');
  const child = spawn(process.execPath, [...BROKER_FLAGS, join(__dirname, 'broker-process.js'), JSON.stringify({ socket, ...config }), JSON.stringify(hookEnv), join(home, 'no-qemu.conf')], { stdio: ['ignore', out, 'pipe'] });
  closeSync(out);
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  let gone = false;
  void exited.then(() => (gone = true));
  try {
    await until('the broker process to listen', () => {
      if (gone) throw new Error(`the broker process exited during start-up: ${err.trim()}`);
      return readFileSync(log, 'utf8').includes('ready\n');
    }, 30_000, 20);
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  return {
    socket,
    async close() {
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
      child.kill('SIGKILL');
    },
  };
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench/hotplug: run as root (the broker loads BPF; QEMU runs as libvirt-qemu)');
  const dir = tempDir('virt-ebpf-bench-hp-');
  const stateDir = join(dir.path, 'domains');
  mkdirSync(stateDir, { recursive: true });
  const user = lookupUser('libvirt-qemu');
  // The contexts the QEMU without virt-ebpf gets by getfd.
  const { caps } = await probeEmulator(QEMU, { cacheDir: join(dir.path, 'cache') });
  const owned: AcquiredContext[] = [];
  for (let i = 0; i < PORTS; i++) owned.push(await loadContext(caps));
  const broker = await brokerProcess(dir.path, { pool: { size: 4 }, cacheDir: join(dir.path, 'cache') }, { stateDir });
  const taps: Tap[] = [];
  const qemus: DomainQemu[] = [];
  const clients: QmpClient[] = [];
  const out: string[] = [`broker: node ${BROKER_FLAGS.join(' ')}${V8_DEFAULTS ? " (V8's defaults)" : ' (as the unit runs it)'}`, ''];
  let plain: ChildProcess | undefined;
  try {
    // Plain QEMU: libvirt's monitor socket, no shim.
    const plainPath = join(dir.path, 'plain.monitor');
    plain = spawn(QEMU, ['-S', '-no-user-config', '-nodefaults', '-nographic', '-machine', 'q35,accel=tcg', '-m', '128',
      '-chardev', `socket,id=charmonitor,path=${plainPath},server=on,wait=off`, '-mon', 'chardev=charmonitor,id=monitor,mode=control'], { stdio: 'ignore' });
    await until('the plain monitor socket', () => existsSync(plainPath), 10_000, 20);
    const direct = await QmpClient.connect(plainPath);
    clients.push(direct);

    const domain = async (shim = true): Promise<{ q: DomainQemu; c: QmpClient }> => {
      const uuid = randomUUID();
      writeFileSync(join(stateDir, `${uuid}.json`), JSON.stringify({ name: `b-${uuid.slice(0, 8)}`, uuid, policy: 'strict', hotplug: true }));
      const q = await startDomainQemu({ dir: dir.path, uid: user.uid, gid: user.gid, uuid, name: `b-${uuid.slice(0, 8)}`, broker: broker.socket, stateDir, ports: PORTS, shim });
      qemus.push(q);
      const c = await QmpClient.connect(q.monitor);
      clients.push(c);
      return { q, c };
    };
    const a = await domain();

    // Per command, interleaved in blocks so drift hits both alike.
    const straight: number[] = [];
    const through: number[] = [];
    for (let block = 0; block < 10 * N; block++) {
      straight.push(...(await sample(100, () => direct.execute('query-status'), 5)));
      through.push(...(await sample(100, () => a.c.execute('query-status'), 5)));
    }
    out.push(
      table('QMP command latency (query-status round trip, client in this process)', [
        { name: "QEMU's monitor, direct", stats: stats(straight) },
        { name: 'QEMU with the hot-plug shim', stats: stats(through), baseline: "QEMU's monitor, direct" },
      ]),
    );

    // device_add: rss off vs on, PORTS of each (q35 hot-plugs into free root ports only).
    const b = await domain();
    // Fill the broker's pool first, as the hook's prepare does for a domain: the handoff is
    // measured, not a load (a load is in the foundation bench).
    await ask(broker.socket, { v: 1, id: 1, op: 'prewarm', emulator: QEMU, count: 4 });
    await until('the broker pool to fill', async () => {
      const st = await ask(broker.socket, { v: 1, id: 2, op: 'status' });
      return st.pools.some((p: { ready: number; target: number }) => p.ready >= p.target && p.target > 0);
    }, 30_000, 100);
    // QEMU without virt-ebpf, given a context's fds by getfd before its device_add.
    const own = await domain(false);
    const plainAdd: number[] = [];
    const rssAdd: number[] = [];
    const ownAdd: number[] = [];
    // The netdev_add before each: before an rss device_add the shim connects to the broker there.
    const netdevMs = { plain: [] as number[], rss: [] as number[], own: [] as number[] };
    for (let i = 1; i <= PORTS; i++) {
      for (const [c, kind, into] of [[a.c, 'plain', plainAdd], [b.c, 'rss', rssAdd], [own.c, 'own', ownAdd]] as const) {
        netdevMs[kind].push(await addNetdev(c, `hn${i}`, 2, taps));
        let fdProp = {};
        if (kind === 'own') {
          const ctx = owned[i - 1];
          const names = ctx.fds.map((_, k) => `rss-${i}-${k}`);
          try {
            for (const [k, f] of ctx.fds.entries()) await c.execute('getfd', { fdname: names[k] }, { fds: [f.fd] });
          } finally {
            closeAll(ctx.fds);
          }
          fdProp = { [ctx.descriptor.property.name]: propertyValue(ctx.descriptor.property, names) };
        }
        const t0 = process.hrtime.bigint();
        await c.execute('device_add', { driver: 'virtio-net-pci', mq: true, vectors: 6, ...(kind === 'plain' ? {} : { rss: true }), ...fdProp, netdev: `hn${i}`, id: `n${i}`, bus: `pci.${i}`, addr: '0x0' });
        into.push(Number(process.hrtime.bigint() - t0) / 1e6);
        await until('the broker pool to refill', async () => {
          const st = await ask(broker.socket, { v: 1, id: 3, op: 'status' });
          return st.pools.every((p: { ready: number; target: number }) => p.ready >= p.target);
        }, 30_000, 50);
      }
    }
    out.push(
      table('device_add of a virtio-net NIC, QEMU with the hot-plug shim', [
        { name: 'without rss (passed as it is)', stats: stats(plainAdd) },
        { name: 'with rss (broker device-plan + fds + splice)', stats: stats(rssAdd), baseline: 'without rss (passed as it is)' },
        { name: 'with rss, QEMU without virt-ebpf, fds given by getfd before', stats: stats(ownAdd), baseline: 'without rss (passed as it is)' },
      ]),
    );
    // Paired: the i-th rss device_add against the i-th plain one (the same root port, the same moment).
    const paired = medianWithInterval(rssAdd.map((x, i) => x / plainAdd[i]));
    out.push(`rss device_add against plain, median of ${rssAdd.length} paired ratios: ${paired.median.toFixed(3)}× (95 % interval ${paired.low.toFixed(3)}–${paired.high.toFixed(3)}; target ≤ 1.3×)\n`);
    // The NIC as libvirt adds it: netdev_add, then device_add (the shim's early connection is made in the first).
    const pairRss = rssAdd.map((x, i) => x + netdevMs.rss[i]);
    const pairPlain = plainAdd.map((x, i) => x + netdevMs.plain[i]);
    const pairs = medianWithInterval(pairRss.map((x, i) => x / pairPlain[i]));
    const netdevs = medianWithInterval(netdevMs.rss.map((x, i) => x / netdevMs.plain[i]));
    out.push(`netdev_add + device_add, rss against plain, median of ${pairRss.length} paired ratios: ${pairs.median.toFixed(3)}× (95 % interval ${pairs.low.toFixed(3)}–${pairs.high.toFixed(3)}); the netdev_add alone ${netdevs.median.toFixed(3)}× (${netdevs.low.toFixed(3)}–${netdevs.high.toFixed(3)}; medians ${stats(netdevMs.rss).median.toFixed(2)} against ${stats(netdevMs.plain).median.toFixed(2)} ms)\n`);
    // What of it is QEMU's own: the same rss device_add with its fds already in QEMU.
    const intrinsic = medianWithInterval(ownAdd.map((x, i) => x / plainAdd[i]));
    const ours = medianWithInterval(rssAdd.map((x, i) => x / ownAdd[i]));
    out.push(`QEMU's own rss device_add against plain: ${intrinsic.median.toFixed(3)}× (95 % interval ${intrinsic.low.toFixed(3)}–${intrinsic.high.toFixed(3)}); ours against QEMU's own: ${ours.median.toFixed(3)}× (${ours.low.toFixed(3)}–${ours.high.toFixed(3)})\n`);

    // Where the rss device_add's time goes, as the shim logged it.
    const parts = [...b.q.log().matchAll(/\(broker ([\d.]+) ms\)/g)];
    if (parts.length) {
      out.push(`rss device_add, median of ${parts.length}: the broker's device-plan ${stats(parts.map((m) => Number(m[1]))).median.toFixed(2)} ms; the rest is the round trip to the broker and QEMU realizing the device (QEMU's own share: the row without virt-ebpf)\n`);
    }
    const mem = shimMemoryKiB(a.q.pid);
    out.push(
      [
        'hot-plug shim memory per domain (KiB, its mappings inside QEMU; no process of its own)',
        '| | RSS | PSS |',
        '|---|---|---|',
        `| vebpf-qmp.so in QEMU | ${mem.rss} | ${mem.pss} |`,
        '',
      ].join('\n'),
    );
  } finally {
    plain?.kill('SIGKILL');
    try {
      for (const c of clients) c.close();
      for (const q of qemus) await q.kill();
      for (const t of taps) await t.remove();
      for (const c of owned) closeAll(c.fds);
    } finally {
      await broker.close(); // the root broker child goes whatever failed before
      dir.remove();
    }
  }
  process.stdout.write(out.join('\n') + '\n');
}

main().catch((e) => {
  process.stderr.write(`bench/hotplug: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
