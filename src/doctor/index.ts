/**
 * Runs every doctor check and renders the verdicts. The checks that need the host's state
 * (libbpf, emulators, libvirt, what install left, the broker) live here; kernel facts in
 * checks.ts.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { CheckResult, commandOutput, kernelChecks, sha256File, Check } from './checks';
import { libvirtQemuAccount } from '../broker/config';
import { brokerRequest, DEFAULT_SOCKET } from '../broker/client';
import { DEFAULT_PATHS } from '../install/plan';
import { readManifest, staleWrappers } from '../install/manifest';
import { isVirtEbpfError } from '../errors';
import { scanHotplugQemus } from './hotplug-shim';
import { steeringLine, type Steering, type SteeringKind } from '../steering';

export { type CheckResult } from './checks';

export interface DoctorOptions {
  cacheDir: string;
  socket?: string;
  manifest?: string;
  /** the libvirt hook's path (default the install's) */
  hookFile?: string;
  emulators?: string[];
}

function hostChecks(opts: DoctorOptions): Check[] {
  const manifestPath = opts.manifest ?? DEFAULT_PATHS.manifest;
  const hookFile = opts.hookFile ?? DEFAULT_PATHS.hookFile;
  return [
    async () => {
      try {
        const { libbpf } = await import('../bpf/libbpf');
        libbpf();
        return { name: 'libbpf', verdict: 'ok', detail: 'libbpf.so.1 loads', needed: true };
      } catch (e) {
        return { name: 'libbpf', verdict: 'fail', detail: (e as Error).message, fix: 'apt-get install libbpf1', needed: true };
      }
    },
    async () => {
      const { missingBuiltC } = await import('../install/host');
      const { sourceRoot } = await import('../install/runtime');
      const missing = missingBuiltC(sourceRoot());
      return missing.length === 0
        ? { name: 'shims', verdict: 'ok', detail: `${join(sourceRoot(), 'dist/shims')}: wrapper, hook and hot-plug shims and the broker's niced load are built`, needed: true }
        : { name: 'shims', verdict: 'fail', detail: `${missing[0]} is missing: enabled domains cannot start with their fds`, fix: 'npm run build in the checkout (needs gcc, libc6-dev), then virt-ebpf install', needed: true };
    },
    async () => {
      const { listEmulatorsOnPath, probeEmulator } = await import('../emulator');
      const paths = opts.emulators ?? listEmulatorsOnPath();
      if (paths.length === 0) {
        return { name: 'emulators', verdict: 'fail', detail: 'no qemu-system-* on PATH', fix: 'apt-get install -t bookworm-backports qemu-system-x86', needed: true };
      }
      const out: CheckResult[] = [];
      for (const p of paths) {
        try {
          const { caps } = await probeEmulator(p, { cacheDir: opts.cacheDir });
          out.push({
            name: `emulator ${p}`,
            verdict: caps.supported ? 'ok' : 'warn',
            detail: caps.supported ? `QEMU ${caps.version.major}.${caps.version.minor}.${caps.version.micro}: ${caps.protocol}, ${caps.property?.name}` : `unsupported: ${caps.reason}`,
            fix: caps.supported ? undefined : 'point domains with RSS NICs at a supported emulator (see the ok lines)',
            needed: false,
          });
        } catch (e) {
          out.push({ name: `emulator ${p}`, verdict: 'warn', detail: (e as Error).message, needed: false });
        }
      }
      if (!out.some((r) => r.verdict === 'ok')) out.push({ name: 'supported emulator', verdict: 'fail', detail: 'none of the emulators can take eBPF RSS fds', fix: 'install QEMU >= 9.0 (bookworm-backports)', needed: true });
      return out;
    },
    () => {
      const v = commandOutput('libvirtd', ['--version']);
      const acct = libvirtQemuAccount();
      return {
        name: 'libvirt',
        verdict: v ? 'ok' : 'warn',
        detail: v ? `${v}; QEMU runs as ${acct.user}:${acct.group}` : 'libvirtd not found',
        fix: v ? undefined : 'apt-get install -t bookworm-backports libvirt-daemon-system (virt-ebpf exec works without it)',
        needed: false,
      };
    },
    () => {
      let m;
      try {
        m = readManifest(manifestPath);
      } catch (e) {
        return { name: 'install', verdict: 'fail', detail: (e as Error).message, fix: 'run `virt-ebpf install` again', needed: true };
      }
      if (!m) return { name: 'install', verdict: 'warn', detail: 'hook and wrappers not installed (libvirt domains cannot use eBPF RSS)', fix: 'virt-ebpf install', needed: false };
      const out: CheckResult[] = [];
      for (const e of m.entries) {
        const sum = sha256File(e.path);
        const state = sum === undefined ? 'missing' : sum === e.sha256 ? 'current' : e.kind === 'config' ? 'edited (yours)' : 'modified';
        const bad = state === 'missing' || state === 'modified';
        out.push({ name: `${e.kind} ${e.path}`, verdict: bad ? 'fail' : 'ok', detail: state, fix: bad ? 'virt-ebpf install (rewrites it)' : undefined, needed: bad && e.kind !== 'apparmor' && e.kind !== 'apt' });
      }
      if (m.hook === 'off') {
        const left = existsSync(hookFile);
        out.push({
          name: 'libvirt hook',
          verdict: left ? 'warn' : 'ok',
          detail: left
            ? `install --no-hook, but ${hookFile} is there (edited, so install kept it) and libvirt runs it for every domain`
            : "none (install --no-hook): the broker reads an enabled domain's settings from libvirt when its QEMU starts; no strict refusal before the start, no migrate/restore rewrite",
          fix: left ? `remove ${hookFile} if it is not yours, then: virt-ebpf install` : undefined,
          needed: false,
        });
      }
      const stale = staleWrappers(manifestPath);
      out.push({
        name: 'wrapper capability freshness',
        verdict: stale.length ? 'fail' : 'ok',
        detail: stale.length ? `changed since their wrapper was written: ${stale.map((s) => s.real).join(', ')} (libvirt would use stale capabilities)` : 'every wrapper matches its QEMU',
        fix: stale.length ? 'virt-ebpf refresh' : undefined,
        needed: true,
      });
      return out;
    },
    () => {
      const socket = opts.socket ?? DEFAULT_SOCKET;
      try {
        const { reply } = brokerRequest({ op: 'hello' }, { socket, timeoutMs: 3000 });
        return { name: 'broker', verdict: 'ok', detail: `${socket}: ${reply.op === 'hello' ? `${reply.broker} ${reply.version}` : 'answers'}`, needed: true };
      } catch (e) {
        return {
          name: 'broker',
          verdict: existsSync(manifestPath) ? 'fail' : 'warn',
          detail: isVirtEbpfError(e) ? e.message : String(e),
          fix: 'systemctl enable --now virt-ebpfd.socket, or run `virt-ebpf broker` as root',
          needed: existsSync(manifestPath),
        };
      }
    },
    hotplugShimCheck,
    () => steeringChecks(opts.cacheDir),
  ];
}

const STEERING_FIX: Partial<Record<SteeringKind, (domain: string, s: Steering) => string>> = {
  'software-hash-report': (d) => `remove rss_hash_report='on' from the NIC's <driver> (virsh edit ${d}) and restart the domain: QEMU runs eBPF only for guests without hash reporting`,
  'software-no-ebpf': (d) => `see \`virt-ebpf status ${d}\` and the domain log for why QEMU got no eBPF fds; start the domain again with the broker running`,
  none: (_d, s) =>
    s.reason.startsWith('only one tap queue')
      ? 'in the guest: `ethtool -L IFACE combined QUEUES` (the guest uses one queue pair), then `ethtool -X IFACE equal QUEUES`'
      : 'in the guest: `ethtool -X IFACE equal QUEUES` (Linux before 6.11 turns RSS on only then), and give it a vCPU per queue pair',
  unknown: (d) => `run \`virt-ebpf status ${d}\` while traffic flows to the guest`,
};

/**
 * One line per NIC of every running QEMU with an RSS NIC: which steering is in effect (eBPF,
 * QEMU's software RSS, none), how sure, and why (src/steering). Informative: never needed.
 */
export async function steeringChecks(cacheDir?: string, sampleMs?: number): Promise<CheckResult[]> {
  if (process.getuid?.() !== 0) {
    return [{ name: 'steering', verdict: 'warn', detail: "not checked: reading QEMU's taps and BPF programs needs root", fix: 'run `virt-ebpf doctor` as root', needed: false }];
  }
  const { observeStatus } = await import('../status');
  let report: Awaited<ReturnType<typeof observeStatus>>;
  try {
    report = await observeStatus(undefined, { ...(cacheDir ? { cacheDir } : {}), ...(sampleMs !== undefined ? { sampleMs } : {}) });
  } catch (e) {
    return [{ name: 'steering', verdict: 'warn', detail: `not checked: ${(e as Error).message}`, fix: 'run `virt-ebpf status` to see the error in full', needed: false }];
  }
  if (report.domains.length === 0) return [{ name: 'steering', verdict: 'ok', detail: 'no running QEMU has an RSS NIC', needed: false }];
  const out: CheckResult[] = [];
  for (const d of report.domains) {
    const domain = d.name ?? `pid ${d.pid}`;
    const nics = [...d.nics.map((n) => ({ n, rss: true })), ...d.plainNics.map((n) => ({ n, rss: false }))];
    for (const { n, rss } of nics) {
      const s = n.steering;
      if (!s) continue;
      const program = 'ebpf' in n ? n.ebpf : undefined;
      const nic = n.id ?? n.mac ?? (program ? `prog ${program.progId}` : '?');
      const fine = s.kind === 'ebpf' || (s.kind === 'none' && !rss);
      // An RSS NIC without a program needs its fds first, whatever else is in the way.
      const fix = fine ? undefined : STEERING_FIX[rss && !program && s.kind !== 'software-hash-report' ? 'software-no-ebpf' : s.kind]?.(domain, s);
      out.push({ name: `steering ${domain} ${nic}`, verdict: fine ? 'ok' : 'warn', detail: steeringLine(s), ...(fix ? { fix } : {}), needed: false });
    }
  }
  return out;
}

/**
 * Every running enabled domain with hot-plug on has the hot-plug shim in its QEMU. One without
 * it (started before `virt-ebpf install`, or with the shim missing) runs fine, but a NIC
 * hot-plugged into it gets no eBPF fds.
 */
export function hotplugShimCheck(stateDir?: string): CheckResult {
  const name = 'hot-plug shim';
  const qemus = scanHotplugQemus(stateDir);
  if (qemus.length === 0) return { name, verdict: 'ok', detail: 'no running domain has hot-plug on', needed: false };
  const missing = qemus.filter((q) => !q.loaded);
  if (missing.length === 0) return { name, verdict: 'ok', detail: `${qemus.length} running domain(s), each QEMU has it loaded`, needed: true };
  return {
    name,
    verdict: 'fail',
    detail: `not loaded in ${missing.map((q) => `${q.name ?? '?'} (QEMU pid ${q.pid})`).join(', ')}: the VM runs, but NICs hot-plugged into it get no eBPF fds`,
    fix: 'run `virt-ebpf doctor` for the install, then shut the domain down and start it again',
    needed: true,
  };
}

export async function runChecks(opts: DoctorOptions): Promise<CheckResult[]> {
  const out: CheckResult[] = [];
  for (const check of [...kernelChecks, ...hostChecks(opts)]) {
    const r = await check();
    out.push(...(Array.isArray(r) ? r : [r]));
  }
  return out;
}

export function formatChecks(results: CheckResult[]): string {
  const mark = { ok: 'ok  ', warn: 'warn', fail: 'FAIL' } as const;
  const w = Math.max(...results.map((r) => r.name.length));
  const lines = results.map((r) => `${mark[r.verdict]}  ${r.name.padEnd(w)}  ${r.detail}${r.fix ? `\n      ${' '.repeat(w)}  fix: ${r.fix}` : ''}`);
  const failed = results.filter((r) => r.verdict === 'fail' && r.needed).length;
  lines.push('', failed ? `${failed} needed check(s) failed` : 'everything needed is in place');
  return lines.join('\n');
}

export function doctorExitCode(results: CheckResult[]): number {
  return results.some((r) => r.verdict === 'fail' && r.needed) ? 1 : 0;
}
