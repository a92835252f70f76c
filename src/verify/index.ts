/**
 * `virt-ebpf verify DOMAIN [--nic N] [--flows N] [--seed S] [--json]`: prove that a NIC's live
 * steering program sends flows where RSS says it must. For each crafted flow, the live program
 * runs in the kernel on an Ethernet frame (BPF_PROG_TEST_RUN, the same program QEMU attached to
 * the tap, with the maps the guest configured) and its queue is compared with the reference
 * (src/rss) computed from the same maps. Any disagreement, or maps changing under us, is a failure.
 */
import { VirtEbpfError } from '../errors';
import { parseArgs } from '../options';
import { openProgById, progTestRun } from '../bpf/live';
import { describeFlow, referenceQueue, type Flow, type Steering } from '../rss';
import { bar, classify, decodeRssView, readRssMaps, rssStateFromRaw, requireRootFor, selectQemus, type NicState, type RawRssMaps, type RssView, type DiscoveredNic, type QemuProcess } from '../status';
import { buildFrame, type FrameOptions } from './frame';
import { DEFAULT_SEED, generateFlows } from './flows';
import { VERIFY_USAGE } from './usage';

export { buildFrame, ETH_P_IP, ETH_P_IPV6, type FrameOptions } from './frame';
export { generateFlows, prng, DEFAULT_SEED } from './flows';
export { VERIFY_USAGE, VERIFY_SUMMARY } from './usage';

export const DEFAULT_FLOWS = 256;
const MAX_FLOWS = 1 << 16;

/** The live objects to check: what discovery found for a NIC. */
export interface VerifyTarget {
  progId: number;
  /** [configuration, key, indirection table] */
  mapIds: readonly [number, number, number];
  /** The tap's queue count, for the per-queue table (the tap takes the program's value modulo it). */
  queues?: number;
  /** Destination MAC of the crafted frames (the NIC's); any MAC works for steering. */
  mac?: string;
}

export interface FlowCheck {
  flow: Flow;
  /** What the live program returned. */
  live: number;
  reference: Steering;
  agree: boolean;
}

export interface QueueCount {
  queue: number;
  live: number;
  reference: number;
}

export interface ProgramVerification {
  progId: number;
  mapIds: readonly [number, number, number];
  state: NicState;
  /** One line on what the maps say (as `status` prints it). */
  summary: string;
  rss: RssView;
  checks: FlowCheck[];
  agreed: number;
  total: number;
  perQueue: QueueCount[];
  /** False when the maps changed while the flows ran (the guest reconfigured RSS): nothing was proven. */
  stable: boolean;
  elapsedMs: number;
}

function sameMaps(a: RawRssMaps, b: RawRssMaps): boolean {
  return a.config.equals(b.config) && a.keyValue.equals(b.keyValue) && a.table.join() === b.table.join();
}

function perQueue(checks: readonly FlowCheck[], queues = 0): QueueCount[] {
  const n = Math.max(queues, ...checks.map((c) => Math.max(c.live, c.reference.queue) + 1));
  const out = Array.from({ length: n }, (_, queue) => ({ queue, live: 0, reference: 0 }));
  for (const c of checks) {
    // A program value past the table of counts (e.g. 0xffffffff) would be a disagreement anyway.
    if (c.live < n) out[c.live].live++;
    out[c.reference.queue].reference++;
  }
  return out;
}

/**
 * Run `flows` through the live program and the reference. Synchronous (each run is one bpf()
 * call, microseconds). Retries once when the guest changes the maps during the run.
 */
export function verifyProgram(target: VerifyTarget, flows: readonly Flow[], frame: FrameOptions = {}): ProgramVerification {
  const started = performance.now();
  const prog = openProgById(target.progId);
  try {
    for (let attempt = 0; ; attempt++) {
      const before = readRssMaps(target.mapIds);
      const state = rssStateFromRaw(before);
      const checks = flows.map((flow, i): FlowCheck => {
        const live = progTestRun(prog.fd, buildFrame(flow, { dstMac: target.mac, ident: i + 1, ...frame })).retval;
        const reference = referenceQueue(flow, state);
        return { flow, live, reference, agree: live === reference.queue };
      });
      const after = readRssMaps(target.mapIds);
      const stable = sameMaps(before, after);
      if (!stable && attempt === 0) continue;
      const rss = decodeRssView(before);
      return {
        progId: target.progId,
        mapIds: target.mapIds,
        ...classify(rss, before.keyValue.every((b) => b === 0)),
        rss,
        checks,
        agreed: checks.filter((c) => c.agree).length,
        total: checks.length,
        perQueue: perQueue(checks, target.queues),
        stable,
        elapsedMs: Math.round(performance.now() - started),
      };
    }
  } finally {
    prog.close();
  }
}

export interface NicVerification extends ProgramVerification {
  domain: { pid: number; name?: string; uuid?: string };
  nic: { id?: string; mac?: string; tap?: string; queues?: number };
  seed: number;
}

export function passed(v: ProgramVerification): boolean {
  return v.stable && v.agreed === v.total;
}

function nicLabel(n: DiscoveredNic): string {
  if (n.origin === 'unnamed-program') return n.ebpf ? `prog:${n.ebpf.progId}` : 'an unnamed program';
  return n.id ?? n.mac ?? n.tap ?? `device #${n.index}`;
}

/** By device id, MAC, tap or netdev; a NIC known only by its program (hot-plugged) as prog:ID. */
function matchesNic(n: DiscoveredNic, wanted: string): boolean {
  const w = wanted.toLowerCase();
  if (n.ebpf && w === `prog:${n.ebpf.progId}`) return true;
  return [n.id, n.mac, n.tap, n.netdev].some((x) => x !== undefined && x.toLowerCase() === w);
}

/** The NICs of one domain to verify: `--nic`, or every NIC that has eBPF. */
export function selectNics(q: QemuProcess, wanted?: string): DiscoveredNic[] {
  const name = q.domain.name ?? `pid ${q.pid}`;
  if (wanted !== undefined) {
    const n = q.nics.find((x) => matchesNic(x, wanted));
    if (!n) {
      throw new VirtEbpfError('NIC_NOT_FOUND', `domain ${name} has no RSS NIC "${wanted}" (it has ${q.nics.map(nicLabel).join(', ')})`, {
        remedy: 'name the NIC by its device id, MAC, tap name or netdev id as `virt-ebpf status` shows them (prog:ID for one known only by its program)',
      });
    }
    if (!n.ebpf) throw noEbpf(name, n);
    return [n];
  }
  const withEbpf = q.nics.filter((n) => n.ebpf);
  if (withEbpf.length === 0) throw noEbpf(name, q.nics[0]);
  return withEbpf;
}

function noEbpf(domain: string, n: DiscoveredNic): VirtEbpfError {
  return new VirtEbpfError('NIC_NO_EBPF', `NIC ${nicLabel(n)} of domain ${domain} has no eBPF steering program to verify${n.noEbpf ? `: ${n.noEbpf}` : n.problems.length ? `: ${n.problems[0]}` : ''}`, {
    remedy: 'start the domain with eBPF RSS (virt-ebpf xml enable, or virt-ebpf exec) and check `virt-ebpf status`',
  });
}

/** Verify the NICs of a running domain with `flows` seeded flows (or the flows given). */
export function verifyDomain(domain: string, opts: { nic?: string; flows?: number; seed?: number; flowList?: readonly Flow[] } = {}): NicVerification[] {
  const seed = opts.seed ?? DEFAULT_SEED;
  const flows = opts.flowList ?? generateFlows(opts.flows ?? DEFAULT_FLOWS, seed);
  const qemus = selectQemus(domain);
  if (qemus.length > 1) {
    throw new VirtEbpfError('USAGE', `"${domain}" matches ${qemus.length} QEMU processes (pids ${qemus.map((q) => q.pid).join(', ')})`, { remedy: 'name the domain by UUID or QEMU pid' });
  }
  const q = qemus[0];
  return selectNics(q, opts.nic).map((n) => ({
    domain: { pid: q.pid, ...(q.domain.name !== undefined ? { name: q.domain.name } : {}), ...(q.domain.uuid !== undefined ? { uuid: q.domain.uuid } : {}) },
    nic: { ...(n.id !== undefined ? { id: n.id } : { id: nicLabel(n) }), ...(n.mac !== undefined ? { mac: n.mac } : {}), ...(n.tap !== undefined ? { tap: n.tap } : {}), ...(n.backend ? { queues: n.backend.queues } : {}) },
    seed,
    ...verifyProgram({ progId: n.ebpf!.progId, mapIds: n.ebpf!.mapIds, queues: n.backend?.queues, mac: n.mac }, flows),
  }));
}

const SHOWN_DISAGREEMENTS = 10;

/** What an agreement does not prove when steering is not active. */
const STATE_CAVEATS: Partial<Record<NicState, string>> = {
  unconfigured: 'the guest has not configured RSS: every flow takes the default-queue path, so only that path was compared',
  'redirect-off': 'steering is off: every flow takes the default-queue path, so only that path was compared',
  software: 'hash reporting is on: QEMU detaches this program and steers in software; the program was checked as it would steer',
};

function steeringText(s: Steering): string {
  const how = s.path === 'table' ? `entry ${s.index}` : s.path === 'past-table' ? `index ${s.index} past the table → default` : s.path === 'no-hash' ? 'no hash → default' : 'steering off → default';
  return `q${s.queue} (${s.input ? `${s.input} ` : ''}hash 0x${s.hash.toString(16).padStart(8, '0')}, ${how})`;
}

export function formatVerification(v: NicVerification): string {
  const who = `${v.domain.name ?? `pid ${v.domain.pid}`} ${v.nic.id ?? v.nic.mac ?? ''}`.trim();
  const verdict = !v.stable
    ? 'RSS changed while verifying: nothing proven, run again'
    : v.agreed === v.total
      ? `${v.agreed}/${v.total} flows agree with the reference`
      : `${v.total - v.agreed} of ${v.total} flows DISAGREE with the reference (${v.agreed}/${v.total} agree)`;
  const out = [`${who} (prog ${v.progId}, seed ${v.seed}, ${v.elapsedMs} ms): ${verdict}`];
  out.push(`  RSS    ${v.summary}`);
  const total = Math.max(v.total, 1);
  const qw = Math.max(...v.perQueue.map((q) => `q${q.queue}`.length));
  const nw = Math.max(...v.perQueue.map((q) => String(Math.max(q.live, q.reference)).length));
  out.push(`  flows per queue (live program | reference):`);
  for (const q of v.perQueue) {
    out.push(`    ${`q${q.queue}`.padEnd(qw)} ${bar(q.live / total).padEnd(33)}${String(q.live).padStart(nw)} | ${String(q.reference).padStart(nw)}${q.live === q.reference ? '' : '  ≠'}`);
  }
  const bad = v.checks.filter((c) => !c.agree);
  for (const c of bad.slice(0, SHOWN_DISAGREEMENTS)) out.push(`  ≠ ${describeFlow(c.flow)}: live q${c.live}, reference ${steeringText(c.reference)}`);
  if (bad.length > SHOWN_DISAGREEMENTS) out.push(`  … and ${bad.length - SHOWN_DISAGREEMENTS} more`);
  const caveat = STATE_CAVEATS[v.state];
  if (caveat) out.push(`  note: ${caveat}`);
  if (v.nic.queues !== undefined && v.checks.some((c) => c.live >= v.nic.queues!)) {
    out.push(`  note: the tap has ${v.nic.queues} queues and takes the program's value modulo ${v.nic.queues}`);
  }
  return out.join('\n');
}

export function verificationJson(vs: readonly NicVerification[]): string {
  return JSON.stringify(
    vs.map((v) => ({
      ...v,
      passed: passed(v),
      checks: v.checks.map((c) => ({ flow: c.flow, live: c.live, reference: c.reference.queue, hash: c.reference.hash, agree: c.agree })),
    })),
    null,
    2,
  );
}

function intOption(v: string | undefined, name: string, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) {
    throw new VirtEbpfError('USAGE', `verify: --${name} must be a whole number from ${min} to ${max}, got "${v}"`, { remedy: `usage: ${VERIFY_USAGE}` });
  }
  return Number(v);
}

/** The CLI entry: exit code 0 when every flow agrees on every NIC, else 1. */
export async function runVerify(argv: readonly string[]): Promise<{ stdout: string; code: number }> {
  const a = parseArgs(argv, { flags: ['json'], values: ['nic', 'flows', 'seed'] }, 'verify');
  if (a.positional.length !== 1) throw new VirtEbpfError('USAGE', 'verify needs exactly one DOMAIN', { remedy: `usage: ${VERIFY_USAGE}` });
  requireRootFor('verify');
  const results = verifyDomain(a.positional[0], {
    nic: a.values.get('nic'),
    flows: intOption(a.values.get('flows'), 'flows', 1, MAX_FLOWS),
    seed: intOption(a.values.get('seed'), 'seed', 0, 0xffffffff),
  });
  const text = a.flags.has('json') ? verificationJson(results) : results.map(formatVerification).join('\n\n');
  return { stdout: text + '\n', code: results.every(passed) ? 0 : 1 };
}
