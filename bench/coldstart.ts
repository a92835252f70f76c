/**
 * `node dist/bench/coldstart.js` (root; scripts/bench.sh runs it after the foundation bench):
 * the libvirt cold start, as printed tables with ratios against baselines measured in the
 * same run. No timed assertions anywhere.
 *
 *  a. `virsh start` until it returns, paired A A0 B C (order balanced over each 4 rounds): the same 1-RSS-NIC domain enabled (A,
 *     with the hot-plug shim; A0, enabled with --hotplug off),
 *     plain with rss=on as libvirt runs it today (B: our hook installed, it runs for every
 *     domain; C: our hook moved out of qemu.d and libvirtd told, i.e. no virt-ebpf at all; every
 *     start preceded by the same switch and settle). Ratio of medians and median of per-pair
 *     ratios. Then where the wrapper's time goes, process by process.
 *  b. fd handoff with a warm pool: a client's `acquire count=1` round trip (what the wrapper
 *     waits for between its request and its exec) and the broker's own `us` log field.
 *  c. 16 domains started at once, each with 1 RSS NIC, vs 16 plain ones: how many started, wall.
 *  s. the boot storm: 32 domains × 2 RSS NICs (and 16 × 1) started at once on a broker that
 *     systemd-socket-activate starts on the first connection (empty pool), with our hook and
 *     hook-less (`install --no-hook`), against the same domains without virt-ebpf (no hook of
 *     ours, libvirtd told): all started with their fds, wall, per-start median and p95, CPU.
 *     BENCH_STORM_ROUNDS rounds (default 2), the order rotating; BENCH_STORM picks the sizes;
 *     BENCH_STORM_V8=defaults runs its broker under V8's defaults.
 *
 *  h. what the host-wide mode costs a domain without an RSS NIC (one single-queue virtio NIC):
 *     `virsh start` of domains naming /usr/bin/qemu-system-x86_64 — under `install --host-wide`
 *     the host-wide wrapper, which asks the broker and preloads the hot-plug shim — against the
 *     same domains naming the packaged binary at its diverted name (no wrapper), paired and
 *     alternating; then 16 of each started at once. The install is put back as it was after.
 *  n. what our hook costs a domain that is not ours, and the hook-less mode (`install --no-hook`)
 *     that takes it away: see benchHookless.
 *
 * Uses an existing install and broker when there is one; otherwise installs (and uninstalls at
 * the end) and runs the installed broker as a child. BENCH_N=k multiplies the sample counts.
 */
import { spawn, spawnSync } from 'node:child_process';
import { cpus } from 'node:os';
import { chmodSync, existsSync, readFileSync, renameSync, writeFileSync, rmSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { brokerRequest, DEFAULT_SOCKET } from '../src/broker/client';
import { closeAll } from '../src/fdpass';
import { readManifest } from '../src/install/manifest';
import { DEFAULT_PATHS } from '../src/install/plan';
import { rescanHooks } from '../src/install/apply';
import { BrokerChild, INSTALLED_CLI, installForReal, uninstallForReal } from '../test/coldstart/fixture';
import { bpfFds, define, defineEnabled, domainXml, qemuPid, removeDomain, runAsync, testDomains, virsh, virshTry } from '../test/coldstart/libvirt';
import { medianWithInterval, stats, table, Stats } from './stats';
import { brokerNodeFlags } from './broker-v8';

const N = Number(process.env.BENCH_N ?? 1);
/** BENCH_COLDSTART=a,b,c picks sections (default all). */
const ONLY = new Set((process.env.BENCH_COLDSTART ?? 'a,b,c,s,h,n').split(','));
/** BENCH_STORM=32x2,16x1 (the default): the storms of section s, domains × RSS NICs each. */
const STORMS = (process.env.BENCH_STORM ?? '32x2,16x1').split(',').map((s) => s.split('x').map(Number) as [number, number]);
const PREFIX = `vebpf-bench-${process.pid}-`;
const REAL_QEMU = '/usr/bin/qemu-system-x86_64';
const WRAPPER = join(DEFAULT_PATHS.wrapperDir, 'qemu-system-x86_64');
const HOOK = DEFAULT_PATHS.hookFile;
const HOOK_ASIDE = `/etc/libvirt/hooks/virt-ebpf.bench-aside-${process.pid}`;

/** Orders of 4 kinds, a round each: every kind once per position and once after every other kind. */
const WILLIAMS_4 = [
  [0, 1, 3, 2],
  [1, 2, 0, 3],
  [2, 3, 1, 0],
  [3, 0, 2, 1],
];

const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;
const median = (xs: number[]) => stats(xs).median;
const TICK = 100; // USER_HZ: /proc's clock ticks per second on Linux
/** CPU-seconds all CPUs have spent busy since boot (everything /proc/stat counts but idle and iowait). */
function busyCpuSeconds(): number {
  const [, ...ticks] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/);
  const n = ticks.map(Number);
  return (n.slice(0, 8).reduce((a, b) => a + b, 0) - n[3] - n[4]) / TICK;
}
/** CPU-seconds a process has used (its threads, ended ones included), user and system. */
function processCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / TICK;
}
/** How busy the CPUs were in each round (CPU-seconds over wall time × CPUs), median of the rounds. */
const busy = (cpuSeconds: number[], wallMs: number[]) => `${median(cpuSeconds.map((c, i) => (100 * c) / ((wallMs[i] / 1000) * cpus().length))).toFixed(0)} %`;

function fmtRatio(x: number): string {
  return `${x.toFixed(3)}×`;
}

function brokerAnswers(socket = DEFAULT_SOCKET): boolean {
  try {
    brokerRequest({ op: 'hello' }, { socket, timeoutMs: 500 });
    return true;
  } catch {
    return false;
  }
}

/**
 * One start of an already-defined, shut-off domain: ms until `virsh start` returns; then destroy.
 * Every start (of every kind) begins with the broker idle and its pool full, as a start seconds
 * after the last one finds it: the refill a start causes waits until that start has settled
 * (src/broker/pool.ts) and is not charged to whichever start happens to come next.
 */
async function timedStart(name: string, check?: (pid: number) => void): Promise<number> {
  poolFull();
  const r = await runAsync('virsh', ['-q', '-c', 'qemu:///system', 'start', name]);
  if (r.status !== 0) throw new Error(`virsh start ${name} failed: ${r.stderr.trim()}`);
  check?.(qemuPid(name));
  virsh('destroy', name);
  return r.ms;
}

/**
 * The install's mode as `install --hook` / `--no-hook` leave it: the hook file in place or aside
 * and libvirtd told (it looks for hooks at its start and on SIGHUP only), and the manifest's
 * `hook` field the broker goes by (it reads the manifest again when it changes). `installed` is
 * the manifest as the install wrote it. `hook: 'absent'` is a host without our hook at all.
 */
async function hookMode(mode: 'hook' | 'hookless' | 'absent', installed: string): Promise<void> {
  const present = mode === 'hook';
  if (present !== existsSync(HOOK)) renameSync(present ? HOOK_ASIDE : HOOK, present ? HOOK : HOOK_ASIDE);
  const { hook: _, ...m } = JSON.parse(installed) as { hook?: string };
  writeFileSync(DEFAULT_PATHS.manifest, JSON.stringify(mode === 'hookless' ? { ...m, hook: 'off' } : m, null, 2) + '\n');
  rescanHooks();
  await new Promise((r) => setTimeout(r, 300));
}

async function benchStart(scratch: string, out: string[]): Promise<void> {
  const A = PREFIX + 'a';
  const A0 = PREFIX + 'a0';
  const B = PREFIX + 'b';
  defineEnabled(A, domainXml({ name: A, nics: [{ rss: true }] }), scratch);
  defineEnabled(A0, domainXml({ name: A0, nics: [{ rss: true }] }), scratch, { hotplug: 'off' });
  define(domainXml({ name: B, nics: [{ rss: true }] }), scratch);
  const assertEbpf = (pid: number) => {
    if (bpfFds(pid).length !== 4) throw new Error(`the enabled domain's QEMU does not hold 4 BPF fds`);
  };
  const assertPlain = (pid: number) => {
    if (bpfFds(pid).length !== 0) throw new Error('the plain domain holds BPF fds');
  };
  const a: number[] = [];
  const a0: number[] = [];
  const b: number[] = [];
  const c: number[] = [];
  // C is a host without virt-ebpf: our hook out of qemu.d and libvirtd told (it caches whether a
  // hook exists). Every start, whatever its kind, is preceded by the same switch and settle, so
  // each kind pays the same.
  const installed = readFileSync(DEFAULT_PATHS.manifest, 'utf8');
  const hooked = (on: boolean) => hookMode(on ? 'hook' : 'absent', installed);
  // The order follows a Williams square: over 4 rounds each kind runs once in each position
  // and comes right after each other kind exactly once, so what one start leaves behind (its
  // destroy, the refill an enabled start causes, the broker's work) falls on each kind alike.
  // (A plain rotation, A A0 B C / A0 B C A / …, had A never follow A or A0 but B always.)
  const kinds = [
    async () => (await hooked(true), a.push(await timedStart(A, assertEbpf))),
    async () => (await hooked(true), a0.push(await timedStart(A0, assertEbpf))),
    async () => (await hooked(true), b.push(await timedStart(B, assertPlain))),
    async () => (await hooked(false), c.push(await timedStart(B, assertPlain))),
  ];
  try {
    // Warm-up: libvirt probes each emulator once (capability cache), the broker probes QEMU.
    for (const k of kinds) await k();
    for (const x of [a, a0, b, c]) x.length = 0;
    for (let i = 0; i < 12 * N; i++) {
      for (const k of WILLIAMS_4[i % WILLIAMS_4.length]) await kinds[k]();
    }
  } finally {
    await hooked(true);
    writeFileSync(DEFAULT_PATHS.manifest, installed);
  }
  const perPair = (x: number[], y: number[]) => median(x.map((v, i) => v / y[i]));
  const interval = (x: number[], y: number[]) => {
    const m = medianWithInterval(x.map((v, i) => v / y[i]));
    return `${fmtRatio(m.median)} (95 % interval ${m.low.toFixed(3)}–${m.high.toFixed(3)})`;
  };
  out.push(
    table('a. `virsh start` → returns, 1 RSS NIC (4 queues), TCG, A A0 B C in a balanced order (Williams square)', [
      { name: 'C: plain rss=on, no virt-ebpf hook (today)', stats: stats(c) },
      { name: 'B: plain rss=on, virt-ebpf hook installed', stats: stats(b), baseline: 'C: plain rss=on, no virt-ebpf hook (today)' },
      { name: 'A0: enabled, --hotplug off (wrapper + broker + hook)', stats: stats(a0), baseline: 'C: plain rss=on, no virt-ebpf hook (today)' },
      { name: 'A: enabled, hot-plug on (+ hot-plug shim)', stats: stats(a), baseline: 'C: plain rss=on, no virt-ebpf hook (today)' },
    ]),
    `median of per-pair ratios: A/C ${fmtRatio(perPair(a, c))}, A0/C ${fmtRatio(perPair(a0, c))}, A/A0 ${fmtRatio(perPair(a, a0))}, A/B ${fmtRatio(perPair(a, b))}, B/C ${fmtRatio(perPair(b, c))}; ` +
      `ratio of medians: A/C ${fmtRatio(median(a) / median(c))}, A/B ${fmtRatio(median(a) / median(b))} (target A/C ≤ 1.05×)`,
    `per-pair A/C ${interval(a, c)}; A0/C ${interval(a0, c)}; B/C ${interval(b, c)} (bootstrap of the median)`,
    '',
  );
  removeDomain(A);
  removeDomain(A0);
}

/** Wall time of a command, n times (processes: the wrapper and the hook as libvirt runs them). */
function timeProcess(n: number, cmd: string, args: string[], input?: string, beforeEach?: () => void): Stats {
  const xs: number[] = [];
  for (let i = 0; i < n + 2; i++) {
    beforeEach?.();
    const t0 = process.hrtime.bigint();
    const r = spawnSync(cmd, args, { input, stdio: [input === undefined ? 'ignore' : 'pipe', 'ignore', 'pipe'], timeout: 30_000 });
    const t = ms(t0);
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr?.toString().trim()}`);
    if (i >= 2) xs.push(t);
  }
  return stats(xs);
}

/** Until every pool of the default broker is back to its target (no refill load running). */
function poolFull(): void {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const r = brokerRequest({ op: 'status' }, { timeoutMs: 5000 }).reply;
    if (r.op === 'status' && r.pools.every((p) => p.ready >= p.target)) return;
    if (Date.now() > deadline) throw new Error('the broker pool never filled');
    spawnSync('sleep', ['0.01']);
  }
}

async function benchWrapperParts(out: string[]): Promise<void> {
  const n = 20 * N;
  // A virtio-net device with rss on, and -version: QEMU exits during option parsing, so the
  // row measures exactly the wrapper's own path (start, broker round trip, fd setup, exec).
  const dev = JSON.stringify({ driver: 'virtio-net-pci', rss: true, id: 'net0' });
  const args = ['-machine', 'none', '-device', dev, '-version'];
  const rows = [
    { name: 'QEMU -version (direct)', stats: timeProcess(n, REAL_QEMU, ['-version']) },
    { name: 'wrapper, no rss: pass-through (shim execs QEMU as asked)', stats: timeProcess(n, WRAPPER, ['-version']), baseline: 'QEMU -version (direct)' },
    { name: 'node -e 0 (what the wrapper shim was first)', stats: timeProcess(n, process.execPath, ['-e', '0']) },
    { name: 'python3 -I -S -c pass (what it was next)', stats: timeProcess(n, '/usr/bin/python3', ['-I', '-S', '-c', 'pass']), baseline: 'node -e 0 (what the wrapper shim was first)' },
    { name: 'wrapper, rss device: exec-plan + exec QEMU', stats: timeProcess(n, WRAPPER, args, undefined, poolFull), baseline: 'QEMU -version (direct)' },
  ];
  out.push(table('a\'. where the wrapper\'s time goes (one process each, wall time)', rows));
  const name = PREFIX + 'hookprobe';
  const xml = virsh('dumpxml', '--inactive', name);
  const plainXml = virsh('dumpxml', '--inactive', PREFIX + 'b');
  // Each prepare reserves a context for the domain; release it first, as a stop would, and let
  // the pool refill (it waits for the start to settle) so each prepare finds one ready.
  const release = () => {
    spawnSync(HOOK, [name, 'release', 'end', '-'], { input: xml, timeout: 30_000 });
    poolFull();
  };
  const hookRows = [
    { name: 'hook, domain not enabled (prepare begin)', stats: timeProcess(n, HOOK, [PREFIX + 'b', 'prepare', 'begin', '-'], plainXml) },
    { name: 'hook, event it ignores (start begin)', stats: timeProcess(n, HOOK, [name, 'start', 'begin', '-'], xml), baseline: 'hook, domain not enabled (prepare begin)' },
    { name: 'hook, prepare begin (enabled: reserve)', stats: timeProcess(n, HOOK, [name, 'prepare', 'begin', '-'], xml, release), baseline: 'hook, domain not enabled (prepare begin)' },
  ];
  release();
  out.push(table("a''. the libvirt hook (libvirt runs it at prepare, start, started, stopped, release for every domain)", hookRows));
}

async function benchHandoff(out: string[]): Promise<void> {
  // A broker of our own with a pool large enough that no acquire waits for a load.
  const dir = mkdtempSync(join(tmpdir(), 'vebpf-bench-'));
  const socket = join(dir, 'broker.sock');
  const config = join(dir, 'config.json');
  const target = 8;
  writeFileSync(config, JSON.stringify({ socket, pool: { size: target }, log: { level: 'info' } }));
  const broker = new BrokerChild({ socket, args: ['--config', config] });
  await broker.start();
  try {
    const ready = async () => {
      await new Promise((res) => setImmediate(res)); // let the broker's log lines in
      const deadline = Date.now() + 30_000;
      for (;;) {
        const r = brokerRequest({ op: 'status' }, { socket, timeoutMs: 5000 }).reply;
        if (r.op === 'status' && r.pools.some((p) => p.ready >= target)) return;
        if (Date.now() > deadline) throw new Error('the broker pool never filled');
        await new Promise((res) => setTimeout(res, 10));
      }
    };
    const acquire = () => {
      const t0 = process.hrtime.bigint();
      const r = brokerRequest({ op: 'acquire', emulator: REAL_QEMU, count: 1 }, { socket, timeoutMs: 10_000 });
      const t = ms(t0);
      if (r.fds.length !== 4) throw new Error(`acquire gave ${r.fds.length} fds`);
      closeAll(r.fds);
      return t;
    };
    acquire(); // first request: the broker probes (cached) and fills the pool
    const hello: number[] = [];
    const warm: number[] = [];
    const n = 200 * N;
    for (let i = 0; i < n; i++) {
      await ready();
      const t0 = process.hrtime.bigint();
      brokerRequest({ op: 'hello' }, { socket, timeoutMs: 5000 });
      hello.push(ms(t0));
      warm.push(acquire());
    }
    await new Promise((res) => setTimeout(res, 200));
    const logged = broker.handoffMicros().slice(-n).map((us) => us / 1000);
    // Back to back: the pool drains and refills (libbpf loads block the broker) meanwhile.
    await ready();
    const busy: number[] = [];
    for (let i = 0; i < 3 * target; i++) busy.push(acquire());
    out.push(
      table(`b. fd handoff, acquire count=1 (4 fds), pool.size=${target}`, [
        { name: 'client round trip, hello (no fds)', stats: stats(hello) },
        { name: 'client round trip, acquire, warm pool', stats: stats(warm), baseline: 'client round trip, hello (no fds)' },
        { name: "broker's own `us`, warm pool", stats: stats(logged) },
        { name: 'client round trip, back to back (refill running)', stats: stats(busy), baseline: 'client round trip, acquire, warm pool' },
      ]),
      'target: p99 ≤ 2 ms with a warm pool',
      '',
    );
  } finally {
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function benchParallel(scratch: string, out: string[]): Promise<void> {
  const k = 16;
  const enabled = Array.from({ length: k }, (_, i) => `${PREFIX}par-e${i}`);
  const plain = Array.from({ length: k }, (_, i) => `${PREFIX}par-p${i}`);
  for (const name of enabled) defineEnabled(name, domainXml({ name, nics: [{ rss: true }] }), scratch);
  for (const name of plain) define(domainXml({ name, nics: [{ rss: true }] }), scratch);
  const wave = async (names: string[], want: number) => {
    const t0 = process.hrtime.bigint();
    const rs = await Promise.all(names.map((n) => runAsync('virsh', ['-q', '-c', 'qemu:///system', 'start', n], { timeoutMs: 300_000 })));
    const wall = ms(t0);
    let ok = 0;
    const errors: string[] = [];
    rs.forEach((r, i) => {
      if (r.status !== 0) {
        errors.push(`${names[i]}: ${r.stderr.trim().split('\n').pop()}`);
        return;
      }
      if (bpfFds(qemuPid(names[i])).length === want) ok++;
      else errors.push(`${names[i]}: ${bpfFds(qemuPid(names[i])).length} BPF fds, expected ${want}`);
    });
    for (const n of names) virshTry('destroy', n);
    return { ok, wall, errors, perStart: stats(rs.map((r) => r.ms)) };
  };
  const p = await wave(plain, 0);
  const e = await wave(enabled, 4);
  out.push(
    table(`c. ${k} domains started at once (each 1 RSS NIC, 128 MiB, TCG): per-start time`, [
      { name: `${k} plain rss=on`, stats: p.perStart },
      { name: `${k} enabled`, stats: e.perStart, baseline: `${k} plain rss=on` },
    ]),
    `started as expected: plain ${p.ok}/${k} (${((100 * p.ok) / k).toFixed(0)} %), enabled ${e.ok}/${k} (${((100 * e.ok) / k).toFixed(0)} %, target 100 %); ` +
      `wall: plain ${p.wall.toFixed(0)} ms, enabled ${e.wall.toFixed(0)} ms (${fmtRatio(e.wall / p.wall)})`,
    ...[...p.errors, ...e.errors].map((x) => `  failed: ${x}`),
    '',
  );
  for (const n of [...enabled, ...plain]) removeDomain(n);
}

/** BENCH_STORM_V8=defaults: the storm's broker under V8's defaults instead of the unit's node flags (bench/broker-v8.ts). */
const STORM_DEFAULTS = process.env.BENCH_STORM_V8 === 'defaults';
const STORM_NODE_FLAGS = brokerNodeFlags(STORM_DEFAULTS);

/** The broker as a boot starts it: systemd-socket-activate holds the socket, the first connect starts it (in its own process: `fn` gets its pid). */
async function coldBroker<T>(fn: (pid: number) => Promise<T>): Promise<T> {
  rmSync(DEFAULT_SOCKET, { force: true });
  const act = spawn('systemd-socket-activate', ['-l', DEFAULT_SOCKET, process.execPath, ...STORM_NODE_FLAGS, INSTALLED_CLI, 'broker'], { stdio: 'ignore' });
  try {
    for (let i = 0; i < 500 && !existsSync(DEFAULT_SOCKET); i++) await new Promise((r) => setTimeout(r, 10));
    chmodSync(DEFAULT_SOCKET, 0o666); // what our socket unit's SocketMode=0666 does: QEMU's account must connect
    return await fn(act.pid!);
  } finally {
    act.kill('SIGTERM');
    await new Promise((r) => act.once('exit', r));
  }
}

async function benchStorm(scratch: string, out: string[], k: number, nics: number): Promise<void> {
  const enabled = Array.from({ length: k }, (_, i) => `${PREFIX}storm${k}x${nics}-e${i}`);
  const plain = Array.from({ length: k }, (_, i) => `${PREFIX}storm${k}x${nics}-p${i}`);
  const spec = { nics: Array.from({ length: nics }, () => ({ rss: true, queues: 2 })) };
  for (const name of enabled) defineEnabled(name, domainXml({ name, ...spec }), scratch);
  for (const name of plain) define(domainXml({ name, ...spec }), scratch);
  const wave = async (names: string[], want: number, brokerPid?: number) => {
    const cpu0 = busyCpuSeconds();
    const t0 = process.hrtime.bigint();
    const rs = await Promise.all(names.map((n) => runAsync('virsh', ['-q', '-c', 'qemu:///system', 'start', n], { timeoutMs: 600_000 })));
    const wall = ms(t0);
    const cpu = busyCpuSeconds() - cpu0;
    const broker = brokerPid === undefined ? 0 : processCpuSeconds(brokerPid);
    const ok = rs.filter((r, i) => r.status === 0 && bpfFds(qemuPid(names[i])).length === want).length;
    for (const n of names) virshTry('destroy', n);
    return { ok, wall, perStart: rs.map((r) => r.ms), cpu, broker };
  };
  const rounds = Number(process.env.BENCH_STORM_ROUNDS ?? 2);
  // Without virt-ebpf (no hook of ours, libvirtd told); enabled with the hook (the default
  // install); enabled hook-less (install --no-hook). Each round in another order.
  const KINDS = ['plain', 'enabled', 'hookless'] as const;
  type Kind = (typeof KINDS)[number];
  const walls: Record<Kind, number[]> = { plain: [], enabled: [], hookless: [] };
  const starts: Record<Kind, number[]> = { plain: [], enabled: [], hookless: [] };
  const cpu: Record<Kind, number[]> = { plain: [], enabled: [], hookless: [] };
  const brokerCpu: Record<Kind, number[]> = { plain: [], enabled: [], hookless: [] };
  const ok: Record<Kind, number> = { plain: 0, enabled: 0, hookless: 0 };
  const installed = readFileSync(DEFAULT_PATHS.manifest, 'utf8');
  try {
    for (let r = 0; r < rounds; r++) {
      for (const kind of [...KINDS.slice(r % 3), ...KINDS.slice(0, r % 3)]) {
        await hookMode(kind === 'plain' ? 'absent' : kind === 'enabled' ? 'hook' : 'hookless', installed);
        const w = kind === 'plain' ? await wave(plain, 0) : await coldBroker((pid) => wave(enabled, 4 * nics, pid));
        walls[kind].push(w.wall);
        starts[kind].push(...w.perStart);
        cpu[kind].push(w.cpu);
        brokerCpu[kind].push(w.broker);
        ok[kind] += w.ok;
      }
    }
  } finally {
    await hookMode('hook', installed);
    writeFileSync(DEFAULT_PATHS.manifest, installed);
  }
  const p95 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.ceil(0.95 * xs.length) - 1];
  const line = (kind: 'enabled' | 'hookless', name: string) => {
    const wallRatio = medianWithInterval(walls[kind].map((x, i) => x / walls.plain[i]));
    return (
      `${name}: started with their ${4 * nics} fds ${ok[kind]}/${k * rounds} (target 100 %); wall: without ${stats(walls.plain).median.toFixed(0)} ms, ${kind} ${stats(walls[kind]).median.toFixed(0)} ms, ` +
      `per-round ratio ${fmtRatio(wallRatio.median)} (target ≤ 1.10×); per-start p95 ${p95(starts.plain).toFixed(0)} vs ${p95(starts[kind]).toFixed(0)} ms (${fmtRatio(p95(starts[kind]) / p95(starts.plain))}, target ≤ 1.15×); ` +
      `CPU ${median(cpu[kind]).toFixed(1)} s (${busy(cpu[kind], walls[kind])} busy), of which the broker ${median(brokerCpu[kind]).toFixed(1)} s (its loads and start-up); ` +
      `a saturated machine cannot finish it before ${fmtRatio(median(brokerCpu[kind].map((b, i) => (cpu.plain[i] + b) / cpu.plain[i])))} of the wall without`
    );
  };
  out.push(
    table(`s. boot storm: ${k} domains × ${nics} RSS NICs at once, broker socket-activated on the first connection${STORM_DEFAULTS ? ` under V8's defaults (node ${STORM_NODE_FLAGS.join(' ')})` : ''} (per-start, ${rounds} rounds)`, [
      { name: `${k}×${nics} without virt-ebpf`, stats: stats(starts.plain) },
      { name: `${k}×${nics} enabled, cold broker`, stats: stats(starts.enabled), baseline: `${k}×${nics} without virt-ebpf` },
      { name: `${k}×${nics} enabled, hook-less, cold broker`, stats: stats(starts.hookless), baseline: `${k}×${nics} without virt-ebpf` },
    ]),
    `CPU while the starts ran without virt-ebpf (all ${cpus().length} CPUs, /proc/stat; medians of the rounds): ${median(cpu.plain).toFixed(1)} s (${busy(cpu.plain, walls.plain)} busy)`,
    line('enabled', 'with the hook'),
    line('hookless', 'hook-less (install --no-hook)'),
    '',
  );
  for (const n of [...enabled, ...plain]) removeDomain(n);
}

async function benchHostWide(scratch: string, out: string[]): Promise<void> {
  const r = spawnSync(process.execPath, [INSTALLED_CLI, 'install', '--host-wide'], { encoding: 'utf8' });
  if (r.status !== 0) {
    out.push(`h. host-wide mode: not measured: install --host-wide failed: ${r.stderr.trim()}`, '');
    return;
  }
  try {
    const DIVERTED = `${REAL_QEMU}.distrib`;
    const k = 16;
    const wrapped = Array.from({ length: k }, (_, i) => `${PREFIX}hw-w${i}`);
    const direct = Array.from({ length: k }, (_, i) => `${PREFIX}hw-d${i}`);
    for (const name of wrapped) define(domainXml({ name, emulator: REAL_QEMU, nics: [{ rss: false, queues: 1 }] }), scratch);
    for (const name of direct) define(domainXml({ name, emulator: DIVERTED, nics: [{ rss: false, queues: 1 }] }), scratch);
    const once = async (name: string): Promise<number> => {
      const t0 = process.hrtime.bigint();
      const s = await runAsync('virsh', ['-q', '-c', 'qemu:///system', 'start', name], { timeoutMs: 120_000 });
      const t = ms(t0);
      virshTry('destroy', name);
      if (s.status !== 0) throw new Error(`virsh start ${name}: ${s.stderr.trim()}`);
      return t;
    };
    await once(wrapped[0]);
    await once(direct[0]);
    const n = 20 * N;
    const a: number[] = [];
    const b: number[] = [];
    for (let i = 0; i < n; i++) {
      if (i % 2) {
        b.push(await once(direct[0]));
        a.push(await once(wrapped[0]));
      } else {
        a.push(await once(wrapped[0]));
        b.push(await once(direct[0]));
      }
    }
    const paired = medianWithInterval(a.map((x, i) => x / b[i]));
    const wave = async (names: string[]) => {
      const t0 = process.hrtime.bigint();
      const rs = await Promise.all(names.map((x) => runAsync('virsh', ['-q', '-c', 'qemu:///system', 'start', x], { timeoutMs: 300_000 })));
      const wall = ms(t0);
      for (const x of names) virshTry('destroy', x);
      return { wall, ok: rs.filter((x) => x.status === 0).length, perStart: rs.map((x) => x.ms) };
    };
    const wd = await wave(direct);
    const ww = await wave(wrapped);
    out.push(
      table(`h. host-wide mode, a domain without an RSS NIC (1 single-queue virtio NIC, 128 MiB, TCG): virsh start, n = ${n} paired`, [
        { name: 'packaged QEMU, no wrapper', stats: stats(b) },
        { name: 'host-wide wrapper', stats: stats(a), baseline: 'packaged QEMU, no wrapper' },
      ]),
      `paired ratio ${fmtRatio(paired.median)} (95 % ${fmtRatio(paired.low)}–${fmtRatio(paired.high)}); ${k} at once: without ${wd.ok}/${k} in ${wd.wall.toFixed(0)} ms (per-start median ${stats(wd.perStart).median.toFixed(0)} ms), ` +
        `host-wide ${ww.ok}/${k} in ${ww.wall.toFixed(0)} ms (per-start median ${stats(ww.perStart).median.toFixed(0)} ms, wall ${fmtRatio(ww.wall / wd.wall)})`,
      '',
    );
    for (const x of [...wrapped, ...direct]) removeDomain(x);
  } finally {
    spawnSync(process.execPath, [INSTALLED_CLI, 'install', '--no-host-wide'], { stdio: 'ignore' }); // back to the install without the diversion
  }
}

/**
 * n. What our hook costs the host's domains, and the hook-less mode (`install --no-hook`) that
 * avoids it: every start is preceded by putting the hook file in place or aside and a SIGHUP
 * (libvirtd looks for hooks at start and on SIGHUP only), then a settle pause, whatever the
 * kind, so each kind pays the same. C: a domain not ours, no hook (as on a host without
 * virt-ebpf, and as every domain not ours runs on a hook-less host: no file of ours on its
 * path). B: the same domain with our hook installed. AH / AN: an enabled domain (1 RSS NIC)
 * with the hook, and hook-less (the broker reads its settings at exec-plan). Williams square.
 */
async function benchHookless(scratch: string, out: string[]): Promise<void> {
  const D = PREFIX + 'n-plain';
  const E = PREFIX + 'n-enabled';
  define(domainXml({ name: D, nics: [{ rss: true }] }), scratch);
  defineEnabled(E, domainXml({ name: E, nics: [{ rss: true }] }), scratch);
  const installed = readFileSync(DEFAULT_PATHS.manifest, 'utf8');
  const hook = (on: boolean) => hookMode(on ? 'hook' : 'hookless', installed);
  const assertFds = (want: number) => (pid: number) => {
    if (bpfFds(pid).length !== want) throw new Error(`QEMU holds ${bpfFds(pid).length} BPF fds, not ${want}`);
  };
  const xs: number[][] = [[], [], [], []];
  const kinds = [
    async () => (await hook(false), xs[0].push(await timedStart(D, assertFds(0)))),
    async () => (await hook(true), xs[1].push(await timedStart(D, assertFds(0)))),
    async () => (await hook(true), xs[2].push(await timedStart(E, assertFds(4)))),
    async () => (await hook(false), xs[3].push(await timedStart(E, assertFds(4)))),
  ];
  try {
    for (const k of kinds) await k(); // warm-up: capabilities, the broker's probe
    xs.forEach((x) => (x.length = 0));
    for (let i = 0; i < 12 * N; i++) for (const k of WILLIAMS_4[i % WILLIAMS_4.length]) await kinds[k]();
  } finally {
    await hook(true);
    writeFileSync(DEFAULT_PATHS.manifest, installed);
  }
  const [c, b, ah, an] = xs;
  const base = 'C: not ours, no hook (no virt-ebpf; every domain not ours on a hook-less host)';
  const interval = (x: number[], y: number[]) => {
    const m = medianWithInterval(x.map((v, i) => v / y[i]));
    return `${fmtRatio(m.median)} (95 % ${m.low.toFixed(3)}–${m.high.toFixed(3)})`;
  };
  out.push(
    table(`n. the hook's cost and the hook-less mode: virsh start, 1 RSS NIC (4 queues), TCG, ${c.length} rounds in a Williams square`, [
      { name: base, stats: stats(c) },
      { name: 'B: not ours, our hook installed', stats: stats(b), baseline: base },
      { name: 'AH: enabled, with the hook', stats: stats(ah), baseline: base },
      { name: 'AN: enabled, hook-less (install --no-hook)', stats: stats(an), baseline: base },
    ]),
    `median of per-pair ratios: B/C ${interval(b, c)}; AH/C ${interval(ah, c)}; AN/C ${interval(an, c)}; AN/AH ${interval(an, ah)} (target: a domain not ours ≤ 1.01×)`,
    '',
  );
  removeDomain(D);
  removeDomain(E);
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the cold-start bench needs root (system libvirtd, install, broker)');
  const out: string[] = [`virt-ebpf cold-start benchmarks — ${new Date().toISOString()} — ${cpus().length}× ${cpus()[0]?.model ?? '?'} — node ${process.version}`, ''];
  const scratch = mkdtempSync(join(tmpdir(), 'vebpf-bench-xml-'));
  const installedHere = !readManifest(DEFAULT_PATHS.manifest) || !existsSync(INSTALLED_CLI);
  if (installedHere) installForReal();
  const broker = new BrokerChild();
  const ownBroker = !brokerAnswers();
  try {
    if (ownBroker) await broker.start();
    if (ONLY.has('a')) {
      await benchStart(scratch, out);
      process.stdout.write(out.splice(0).join('\n') + '\n'); // the main table even if a later section fails
      const probe = PREFIX + 'hookprobe';
      defineEnabled(probe, domainXml({ name: probe, nics: [{ rss: true }] }), scratch);
      await benchWrapperParts(out);
      removeDomain(probe);
      removeDomain(PREFIX + 'b');
    }
    if (ONLY.has('c')) await benchParallel(scratch, out);
    if (ONLY.has('s')) {
      if (ownBroker) await broker.stop(); // the storm starts its own, cold
      for (const [k, nics] of STORMS) await benchStorm(scratch, out, k, nics);
      if (ownBroker) await broker.start();
    }
    if (ownBroker && ONLY.has('a')) {
      await new Promise((res) => setTimeout(res, 200));
      const us = broker.handoffMicros().map((x) => x / 1000);
      if (us.length) out.push(table("broker's own `us` over every start above (prepare reserved the contexts)", [{ name: 'handed out', stats: stats(us) }]));
    }
    if (ONLY.has('b')) await benchHandoff(out);
    if (ONLY.has('h')) await benchHostWide(scratch, out);
    if (ONLY.has('n')) await benchHookless(scratch, out);
  } finally {
    for (const n of testDomains(PREFIX)) removeDomain(n);
    if (existsSync(HOOK_ASIDE)) renameSync(HOOK_ASIDE, HOOK);
    if (ownBroker) await broker.stop();
    if (installedHere) uninstallForReal();
    else rescanHooks();
    rmSync(scratch, { recursive: true, force: true });
  }
  process.stdout.write(out.join('\n') + '\n');
}

main().catch((e) => {
  process.stderr.write(`bench: ${(e as Error)?.stack ?? String(e)}\n`);
  process.exitCode = 1;
});
