/**
 * `npm run bench`: the speed targets of the foundation, as tables with ratios against a
 * baseline measured in the same run.
 *  - probe: cold (QEMU started, queried) vs warm (cache hit), against QEMU start + QMP greeting only
 *  - load: one RSS context (libbpf + kernel verifier), from bytes and from an object validated
 *    once, and that with the verifier on libuv's pool (the broker's loads), against `bpftool prog load` of the same object (the
 *    kernel's limit, as a whole process) and parse + validate only (pure)
 *  - handoff: 4 fds sent and received over a unix socket, against the same message without fds
 *  - cold broker: socket activation to the first reply, against bare Node answering one line
 *  - broker memory: a broker's RSS fresh, after a pool fill and after a burst of requests, against
 *    bare Node and against the same broker with V8's defaults
 *  - broker requests: what the broker's JavaScript costs a request, with its V8 settings and V8's defaults
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir, cpus } from 'node:os';
import { join } from 'node:path';
import { probeEmulator, PROBE_ARGS } from '../src/emulator';
import { rssObjectBytes } from '../src/emulator/caps';
import { loadRss, loadRssAsync, parseRssObject, validateRssObject } from '../src/bpf';
import { quietLibbpf } from '../src/bpf/libbpf';
import { TRIM_AFTER_MS } from '../src/broker/loader';
import { recvFds, sendFds } from '../src/fdpass';
import * as libc from '../src/sys/libc';
import { QmpClient, QmpTransport } from '../src/qmp';
import { brokerRequest } from '../src/broker/client';
import { brokerNodeFlags, V8_DEFAULT_FLAGS, V8_IDLE_MS } from './broker-v8';
import { medianWithInterval, sample, stats, table } from './stats';
import { processStatus } from '../test/harness';

const QEMU = process.env.VIRT_EBPF_TEST_QEMU ?? '/usr/bin/qemu-system-x86_64';
const N = Number(process.env.BENCH_N ?? 1);

async function qemuGreetingOnly(): Promise<void> {
  const [ours, theirs] = libc.socketpair();
  const child = spawn(QEMU, [...PROBE_ARGS], { stdio: ['ignore', 'ignore', 'ignore', theirs] });
  libc.close(theirs);
  const exited = new Promise((r) => child.once('exit', r));
  const c = await QmpClient.open(QmpTransport.fromFd(ours));
  await c.execute('quit').catch(() => undefined);
  await c.close();
  await exited;
}

const CLI = join(__dirname, '..', 'src', 'cli', 'main.js');
/** The least a socket-activated Node daemon can do: answer one line on the socket it inherits. */
const BARE_NODE = "require('net').createServer((s) => s.once('data', () => s.end('{}\\n'))).listen({ fd: 3 })";

function brokerConfig(dir: string): string {
  const file = join(dir, 'cold-broker.json');
  writeFileSync(file, JSON.stringify({ pool: { size: 0 }, cacheDir: join(dir, 'cold-cache') }));
  return file;
}

/** systemd-socket-activate listens; `command` is started on the first connect; ms to the first reply line. */
async function firstReply(dir: string, command: string[]): Promise<number> {
  const sock = join(dir, 'cold.sock');
  rmSync(sock, { force: true });
  const act = spawn('systemd-socket-activate', ['-l', sock, ...command], { stdio: 'ignore' });
  try {
    for (let i = 0; i < 500 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 5));
    // The file exists from the activator's bind(), a moment before its listen(): a connect in
    // between is refused, and is tried again (the clock starts at the connect that is taken).
    for (let attempt = 0; ; attempt++) {
      const t0 = process.hrtime.bigint();
      try {
        await new Promise<void>((resolve, reject) => {
          const c = net.connect(sock, () => c.write('{"v":1,"id":1,"op":"hello"}\n'));
          c.once('data', () => {
            c.destroy();
            resolve();
          });
          c.once('error', reject);
        });
        return Number(process.hrtime.bigint() - t0) / 1e6;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ECONNREFUSED' || attempt >= 100) throw e;
        await new Promise((r) => setTimeout(r, 2));
      }
    }
  } finally {
    act.kill('SIGTERM');
    await new Promise((r) => act.once('exit', r));
  }
}

interface Resident {
  rss: number;
  anon: number;
  file: number;
}

/** VmRSS, RssAnon and RssFile of a process, in MiB. */
function resident(pid: number): Resident {
  const s = processStatus(pid);
  return { rss: s.rssKiB / 1024, anon: s.anonKiB / 1024, file: s.fileKiB / 1024 };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** When the memory after a pool fill is read: after the C heap's trim that follows the last load, and once idle. */
const FILLED_AFTER_MS = TRIM_AFTER_MS + 2000;
const IDLE_AFTER_MS = Math.max(V8_IDLE_MS, FILLED_AFTER_MS);
/** When the memory after the burst of requests is read again. */
const QUIET_AFTER_MS = V8_IDLE_MS;

/** The broker as the unit runs it, and with V8's defaults (bench/broker-v8.ts). */
const BROKER_V8 = [
  { name: 'virt-ebpf broker (node flags as the unit gives them)', flags: brokerNodeFlags(false) },
  { name: `virt-ebpf broker, V8 defaults (node ${V8_DEFAULT_FLAGS.join(' ')})`, flags: brokerNodeFlags(true) },
];

/** Stop a child (SIGTERM) and wait for its end. */
function stopChild(child: ChildProcess): Promise<unknown> {
  return new Promise((r) => (child.exitCode !== null ? r(null) : (child.once('exit', r), child.kill())));
}

interface BrokerMemory {
  fresh: Resident;
  filled: Resident;
  idle: Resident;
  burst: Resident;
  quiet: Resident;
}

/**
 * What a broker holds: started (no request yet); after its pool filled and the C heap's trim
 * that follows the last load (TRIM_AFTER_MS); idle (IDLE_AFTER_MS after the pool filled, see
 * V8_IDLE_MS); right after a burst of 5 000 requests (a status each, one connection each); and
 * QUIET_AFTER_MS after the burst.
 */
async function brokerMemory(dir: string, nodeFlags: string[]): Promise<BrokerMemory> {
  const sock = join(dir, 'mem.sock');
  const config = join(dir, 'mem-broker.json');
  writeFileSync(config, JSON.stringify({ socket: sock, cacheDir: join(dir, 'mem-cache'), pool: { size: 2 } }));
  rmSync(sock, { force: true });
  const broker = spawn(process.execPath, [...nodeFlags, CLI, 'broker', '--config', config], { stdio: 'ignore' });
  try {
    for (let i = 0; i < 500 && !existsSync(sock); i++) await sleep(10);
    await sleep(1500);
    const fresh = resident(broker.pid!);
    brokerRequest({ op: 'prewarm', emulator: QEMU, count: 2 }, { socket: sock, timeoutMs: 60_000 });
    for (let i = 0; i < 600; i++) {
      const { reply } = brokerRequest({ op: 'status' }, { socket: sock });
      const pools = reply.op === 'status' ? reply.pools : [];
      if (pools.some((p) => p.ready >= 2)) break;
      await sleep(100);
    }
    const poolFilled = Date.now();
    await sleep(FILLED_AFTER_MS); // the C heap's trim after the last load
    const filled = resident(broker.pid!);
    await sleep(poolFilled + IDLE_AFTER_MS - Date.now());
    const idle = resident(broker.pid!);
    for (let i = 0; i < 5000; i++) brokerRequest({ op: 'status' }, { socket: sock });
    const burst = resident(broker.pid!);
    await sleep(QUIET_AFTER_MS);
    return { fresh, filled, idle, burst, quiet: resident(broker.pid!) };
  } finally {
    await stopChild(broker);
  }
}

/** Bare Node listening on a socket: the floor of any Node daemon. */
async function bareNodeMemory(dir: string): Promise<Resident> {
  const bareSock = join(dir, 'bare.sock');
  rmSync(bareSock, { force: true });
  const bareNode = spawn(process.execPath, ['-e', `require('net').createServer(() => {}).listen(${JSON.stringify(bareSock)})`], { stdio: 'ignore' });
  try {
    for (let i = 0; i < 500 && !existsSync(bareSock); i++) await sleep(10);
    await sleep(1500);
    return resident(bareNode.pid!);
  } finally {
    await stopChild(bareNode);
  }
}

function memoryTable(bare: Resident[], brokers: BrokerMemory[][]): string {
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const rss = (runs: Resident[]) => med(runs.map((r) => r.rss));
  const bareRss = rss(bare);
  const row = (name: string, runs: Resident[], ratio: string) =>
    `| ${name} | ${rss(runs).toFixed(1)} MiB | ${med(runs.map((r) => r.anon)).toFixed(1)} MiB | ${med(runs.map((r) => r.file)).toFixed(1)} MiB | ${ratio} |`;
  const rows = [row('Node listening on a socket (baseline)', bare, '—')];
  const phases: Array<[keyof BrokerMemory, string]> = [
    ['fresh', 'started, no request yet'],
    ['filled', `pool of 2 filled, C heap trimmed (${FILLED_AFTER_MS / 1000} s after)`],
    ['idle', `pool of 2 filled, idle ${IDLE_AFTER_MS / 1000} s`],
    ['burst', 'right after 5 000 requests'],
    ['quiet', `${QUIET_AFTER_MS / 1000} s after them`],
  ];
  for (const [phase, what] of phases) {
    const [lean, stock] = brokerRuns(brokers, phase);
    const ratio = `${(rss(lean) / bareRss).toFixed(2)}× bare Node; ${(rss(lean) / rss(stock)).toFixed(2)}× V8 defaults`;
    rows.push(row(`${BROKER_V8[0].name}, ${what}`, lean, ratio), row(`${BROKER_V8[1].name}, ${what}`, stock, `${(rss(stock) / bareRss).toFixed(2)}× bare Node`));
  }
  return [
    `### broker resident memory (median of ${bare.length} brokers each; RSS = anonymous + file-backed, the node binary's pages included)`,
    '',
    '| process | RSS | anonymous | file | ratio (RSS) |',
    '|---|---|---|---|---|',
    ...rows,
    '',
  ].join('\n');
}

/** The runs of each V8 variant at one phase. */
function brokerRuns(brokers: BrokerMemory[][], phase: keyof BrokerMemory): Resident[][] {
  return BROKER_V8.map((_, v) => brokers.map((round) => round[v][phase]));
}

/** A command line of libvirt's shape (11.x, QEMU 10) with a virtio-net NIC without rss: exec-plan plans it and hands out nothing. */
function libvirtArgv(i: number): string[] {
  const uuid = `0b3f1c7e-2d6e-4e0b-9d9f-${(0x6c1f2a8e0000 + i).toString(16).padStart(12, '0')}`;
  return [
    QEMU, '-name', `guest=bench-${i},debug-threads=on`, '-S',
    '-object', `{"qom-type":"secret","id":"masterKey0","format":"raw","file":"/var/lib/libvirt/qemu/domain-${i}-bench-${i}/master-key.aes"}`,
    '-machine', 'pc-q35-10.0,usb=off,dump-guest-core=off,memory-backend=pc.ram,acpi=on', '-accel', 'tcg', '-cpu', 'qemu64',
    '-m', '{"size":134217728}', '-object', '{"qom-type":"memory-backend-ram","id":"pc.ram","size":134217728}', '-overcommit', 'mem-lock=off',
    '-smp', '2,sockets=2,cores=1,threads=1', '-uuid', uuid, '-no-user-config', '-nodefaults',
    '-chardev', 'socket,id=charmonitor,fd=25,server=on,wait=off', '-mon', 'chardev=charmonitor,id=monitor,mode=control',
    '-rtc', 'base=utc', '-no-shutdown', '-boot', 'strict=on',
    '-device', '{"driver":"pcie-root-port","port":8,"chassis":1,"id":"pci.1","bus":"pcie.0","multifunction":true,"addr":"0x1"}',
    '-device', '{"driver":"pcie-root-port","port":9,"chassis":2,"id":"pci.2","bus":"pcie.0","addr":"0x1.0x1"}',
    '-netdev', '{"type":"tap","fds":"27:28","vhost":false,"id":"hostnet0"}',
    '-device', '{"driver":"virtio-net-pci","mq":true,"vectors":6,"netdev":"hostnet0","id":"net0","mac":"52:54:00:12:34:56","bus":"pci.1","addr":"0x0"}',
    '-chardev', 'pty,id=charserial0', '-device', '{"driver":"isa-serial","chardev":"charserial0","id":"serial0","index":0}',
    '-audiodev', '{"id":"audio1","driver":"none"}', '-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
    '-msg', 'timestamp=on',
  ];
}

/**
 * Round trips of requests whose cost is the broker's own JavaScript, each on a new connection
 * as its peers make them: hello; exec-plan of a libvirt command line without an RSS NIC (the
 * planning only); the hook's release of an enabled domain (the domain XML parsed; another
 * name each time, as every start's XML differs). Two brokers, one per V8 variant, asked in
 * turn: per-request ratios are paired.
 */
async function brokerRequestCosts(dir: string): Promise<string> {
  const xml = readFileSync(join(__dirname, '..', '..', 'test', 'fixtures', 'xml', 'one-rss-nic.enabled.xml'), 'utf8');
  const brokers = BROKER_V8.map((v, k) => {
    const sock = join(dir, `req-${k}.sock`);
    const config = join(dir, `req-${k}.json`);
    writeFileSync(config, JSON.stringify({ socket: sock, cacheDir: join(dir, 'mem-cache'), pool: { size: 0 } }));
    rmSync(sock, { force: true });
    return { sock, child: spawn(process.execPath, [...v.flags, CLI, 'broker', '--config', config], { stdio: 'ignore' }) };
  });
  const kinds: Array<[string, (i: number) => Parameters<typeof brokerRequest>[0]]> = [
    ['hello', () => ({ op: 'hello' })],
    ['exec-plan, no RSS NIC (planning only)', (i) => ({ op: 'exec-plan', emulator: QEMU, argv: libvirtArgv(i) })],
    ['hook release of an enabled domain (its XML parsed)', (i) => ({ op: 'hook', event: 'release', name: `bench-${i}`, xml: xml.replace('<name>vebpf-test-one-rss-nic</name>', `<name>bench-${i}</name>`) })],
  ];
  try {
    for (const b of brokers) for (let i = 0; i < 500 && !existsSync(b.sock); i++) await sleep(10);
    const times = kinds.map(() => brokers.map(() => [] as number[]));
    const WARM = 200;
    for (let i = 0; i < WARM + 300 * N; i++) {
      kinds.forEach(([, body], k) => {
        const order = i % 2 === 0 ? [0, 1] : [1, 0];
        for (const b of order) {
          const t0 = process.hrtime.bigint();
          const { reply } = brokerRequest(body(i), { socket: brokers[b].sock, timeoutMs: 10_000 });
          const t = Number(process.hrtime.bigint() - t0) / 1e6;
          if ('error' in reply) throw new Error(`${kinds[k][0]}: ${JSON.stringify(reply)}`);
          if (i >= WARM) times[k][b].push(t);
        }
      });
    }
    const rows = kinds.map(([name], k) => {
      const [lean, stock] = times[k];
      const r = medianWithInterval(lean.map((x, i) => x / stock[i]));
      return `| ${name} | ${stats(lean).median.toFixed(3)} ms | ${stats(stock).median.toFixed(3)} ms | ${r.median.toFixed(3)}× (${r.low.toFixed(3)}–${r.high.toFixed(3)}) |`;
    });
    return [
      `### broker requests: round trip on a new connection, after ${WARM} of each (median of ${300 * N}; the two brokers asked in turn)`,
      '',
      `| request | ${BROKER_V8[0].name} | ${BROKER_V8[1].name} | paired ratio (95 % interval) |`,
      '|---|---|---|---|',
      ...rows,
      '',
    ].join('\n');
  } finally {
    await Promise.all(brokers.map(({ child }) => stopChild(child)));
  }
}

async function main(): Promise<void> {
  const out: string[] = [`virt-ebpf benchmarks — ${new Date().toISOString()} — ${cpus().length}× ${cpus()[0]?.model ?? '?'} — node ${process.version}`, ''];
  const cache = mkdtempSync(join(tmpdir(), 'virt-ebpf-bench-'));
  try {
    // probe
    const base = await sample(10 * N, qemuGreetingOnly);
    const cold = await sample(10 * N, () => probeEmulator(QEMU, { useCache: false }));
    await probeEmulator(QEMU, { cacheDir: cache });
    const warm = await sample(200 * N, () => probeEmulator(QEMU, { cacheDir: cache }));
    out.push(
      table('probe', [
        { name: 'QEMU start + QMP greeting + quit', stats: stats(base) },
        { name: 'probe, cold (no cache)', stats: stats(cold), baseline: 'QEMU start + QMP greeting + quit' },
        { name: 'probe, warm (cache hit)', stats: stats(warm), baseline: 'probe, cold (no cache)' },
      ]),
    );

    // load (libbpf without its print callback, as in the broker: the pool's threads load too)
    quietLibbpf();
    const { caps } = await probeEmulator(QEMU, { cacheDir: cache });
    const bytes = rssObjectBytes(caps);
    const parse = await sample(200 * N, () => parseRssObject(bytes));
    // From bytes, from an object validated once, and that object with the verifier on a thread of
    // libuv's pool (the broker's loads), in rotating triples (the kernel's state is the same for
    // the three of a triple).
    const validated = validateRssObject(bytes);
    const load: number[] = [];
    const loadValidated: number[] = [];
    const loadOffThread: number[] = [];
    const ways: Array<[number[], () => Promise<unknown>]> = [
      [load, async () => loadRss(bytes).close()],
      [loadValidated, async () => loadRss(validated).close()],
      [loadOffThread, async () => (await loadRssAsync(validated, 0)).close()],
    ];
    for (let i = 0; i < 3 + 40 * N; i++) {
      for (let k = 0; k < ways.length; k++) {
        const [into, run] = ways[(i + k) % ways.length];
        const t0 = process.hrtime.bigint();
        await run();
        if (i >= 3) into.push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
    }
    const paired = medianWithInterval(loadValidated.map((v, i) => v / load[i]));
    const offThread = medianWithInterval(loadOffThread.map((v, i) => v / loadValidated[i]));
    // The kernel's limit for the same object: bpftool loading it as a whole process (its own
    // start-up included), pinned and unpinned again.
    const obj = join(cache, 'rss.bpf.o');
    writeFileSync(obj, bytes);
    const pin = '/sys/fs/bpf/virt-ebpf-bench';
    const bpftool = await sample(20 * N, () => {
      const r = spawnSync('bpftool', ['prog', 'load', obj, pin, 'type', 'socket'], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`bpftool prog load failed: ${r.stderr.trim()}`);
      rmSync(pin, { force: true });
    });
    out.push(
      table('context load (one RSS NIC)', [
        { name: 'parse + validate ELF (pure)', stats: stats(parse) },
        { name: 'bpftool prog load, same object (a whole process)', stats: stats(bpftool) },
        { name: 'load: parse + validate, libbpf + verifier, 4 fds', stats: stats(load), baseline: 'bpftool prog load, same object (a whole process)' },
        { name: 'load of an object validated once', stats: stats(loadValidated), baseline: 'bpftool prog load, same object (a whole process)' },
        { name: 'the same, the verifier on libuv\'s pool (the broker\'s loads)', stats: stats(loadOffThread), baseline: 'bpftool prog load, same object (a whole process)' },
      ]),
      `validated once against parsed at each load, paired: median ratio ${paired.median.toFixed(3)}× (95 % interval ${paired.low.toFixed(3)}–${paired.high.toFixed(3)}, n = ${load.length})`,
      `on libuv's pool against on the calling thread, paired: median ratio ${offThread.median.toFixed(3)}× (95 % interval ${offThread.low.toFixed(3)}–${offThread.high.toFixed(3)}, n = ${loadOffThread.length})`,
      '',
    );

    // handoff
    const ctx = loadRss(bytes);
    const [a, b] = libc.socketpair();
    try {
      const fds = ctx.fds.map((f) => f.fd);
      const plain = await sample(2000 * N, () => {
        sendFds(a, [], Buffer.from('x'));
        recvFds(b, 8);
      }, 50);
      const withFds = await sample(2000 * N, () => {
        sendFds(a, fds, Buffer.from('x'));
        recvFds(b, 8).fds.forEach((f) => f.close());
      }, 50);
      out.push(
        table('fd handoff over AF_UNIX (send + receive, same process)', [
          { name: '1-byte message, no fds', stats: stats(plain) },
          { name: '1-byte message + 4 BPF fds', stats: stats(withFds), baseline: '1-byte message, no fds' },
        ]),
      );
    } finally {
      libc.close(a);
      libc.close(b);
      ctx.close();
    }
    // cold broker: socket-activated, the time from a peer's connect to the broker's first reply
    const coldBroker: number[] = [];
    const bare: number[] = [];
    for (let i = 0; i < 10 * N; i++) {
      bare.push(await firstReply(cache, [process.execPath, '-e', BARE_NODE]));
      coldBroker.push(await firstReply(cache, [process.execPath, CLI, 'broker', '--config', brokerConfig(cache)]));
    }
    out.push(
      table('cold broker: connect to first reply, started by systemd-socket-activate on the connect', [
        { name: 'Node answering one line on fd 3 (no module of ours)', stats: stats(bare) },
        { name: 'virt-ebpf broker: hello', stats: stats(coldBroker), baseline: 'Node answering one line on fd 3 (no module of ours)' },
      ]),
    );
    // Alternating the variants, so that drift on the host hits both alike.
    const bareMemory: Resident[] = [];
    const brokers: BrokerMemory[][] = [];
    for (let i = 0; i < 3 * N; i++) {
      bareMemory.push(await bareNodeMemory(cache));
      const round: BrokerMemory[] = [];
      for (const v of BROKER_V8) round.push(await brokerMemory(cache, v.flags));
      brokers.push(round);
    }
    out.push(memoryTable(bareMemory, brokers));
    out.push(await brokerRequestCosts(cache));
  } finally {
    rmSync(cache, { recursive: true, force: true });
  }
  process.stdout.write(out.join('\n') + '\n');
}

main().catch((e) => {
  process.stderr.write(`bench failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
