/**
 * `virt-ebpf doctor`: each check is a small function returning a verdict with evidence and,
 * when it fails, the fix. `needed` checks make the exit code non-zero; the others inform.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

export type Verdict = 'ok' | 'warn' | 'fail';

export interface CheckResult {
  name: string;
  verdict: Verdict;
  /** what was found */
  detail: string;
  /** what to do (when not ok) */
  fix?: string;
  /** a failing needed check makes doctor exit non-zero */
  needed: boolean;
}

export type Check = () => CheckResult | CheckResult[] | Promise<CheckResult | CheckResult[]>;

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

export function mountedBpffs(mounts = read('/proc/mounts') ?? ''): boolean {
  return mounts.split('\n').some((l) => l.split(' ')[2] === 'bpf');
}

export const kernelChecks: Check[] = [
  () => {
    const jit = read('/proc/sys/net/core/bpf_jit_enable');
    const has = existsSync('/sys/kernel/btf/vmlinux') || jit !== undefined;
    return {
      name: 'kernel BPF',
      verdict: has ? 'ok' : 'fail',
      detail: has ? `bpf() available; JIT ${jit === '1' ? 'on' : jit === '2' ? 'on (debug)' : jit === '0' ? 'off' : 'unknown'}` : 'no sign of BPF support',
      fix: has ? undefined : 'use a kernel built with CONFIG_BPF_SYSCALL (any distribution kernel of the last years)',
      needed: true,
    };
  },
  () => {
    const jit = read('/proc/sys/net/core/bpf_jit_enable');
    return {
      name: 'BPF JIT',
      verdict: jit === '0' ? 'warn' : 'ok',
      detail: `net.core.bpf_jit_enable = ${jit ?? 'absent (always on)'}`,
      fix: jit === '0' ? 'sysctl -w net.core.bpf_jit_enable=1 (steering runs interpreted otherwise)' : undefined,
      needed: false,
    };
  },
  () => {
    const ok = mountedBpffs();
    return { name: 'bpffs', verdict: ok ? 'ok' : 'warn', detail: ok ? 'mounted' : 'not mounted', fix: ok ? undefined : 'mount -t bpf bpf /sys/fs/bpf (bpftool and debugging use it)', needed: false };
  },
  () => {
    const v = read('/proc/sys/kernel/unprivileged_bpf_disabled');
    return {
      name: 'unprivileged BPF',
      verdict: 'ok',
      detail: `kernel.unprivileged_bpf_disabled = ${v ?? 'absent'} (${v === '0' ? 'QEMU could load eBPF itself' : 'QEMU cannot load eBPF itself: virt-ebpf is what makes RSS work'})`,
      needed: false,
    };
  },
  () => {
    const vhost = existsSync('/dev/vhost-net');
    return {
      name: 'vhost-net',
      verdict: vhost ? 'ok' : 'warn',
      detail: vhost ? '/dev/vhost-net present' : '/dev/vhost-net absent: NICs run with vhost=off (eBPF RSS still works; throughput is lower)',
      fix: vhost ? undefined : 'modprobe vhost_net',
      needed: false,
    };
  },
];

export function sha256File(path: string): string | undefined {
  try {
    return createHash('sha256').update(readFileSync(path)).digest('hex');
  } catch {
    return undefined;
  }
}

export function commandOutput(cmd: string, args: string[]): string | undefined {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return undefined;
  }
}
