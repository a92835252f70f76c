/**
 * What the wrapper does when it cannot get fds: `strict` refuses to start QEMU (the one-line
 * reason reaches `virsh start`), `fallback` starts QEMU without eBPF and says so in the domain
 * log. Per domain: /run/virt-ebpf/domains/<uuid>.json, written from our metadata by the hook at
 * `prepare` or, on a host without our hook, by the broker at `exec-plan` (src/policy/live.ts);
 * otherwise the global default from the config file; otherwise strict.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CONFIG_FILE, DOMAIN_STATE_DIR } from '../shims/constants';

export type Policy = 'strict' | 'fallback';
export const POLICIES: readonly Policy[] = ['strict', 'fallback'];
/**
 * A domain that asked for eBPF RSS and cannot get it fails to start rather than silently
 * running without it (the same stance libvirt takes on explicit configuration it cannot honour).
 */
export const DEFAULT_POLICY: Policy = 'strict';

export { DOMAIN_STATE_DIR };

function readJson(path: string): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(readFileSync(path, 'utf8'));
    return typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

export function isPolicy(v: unknown): v is Policy {
  return (POLICIES as readonly unknown[]).includes(v);
}

export function domainStatePath(uuid: string, dir = DOMAIN_STATE_DIR): string | undefined {
  return /^[0-9a-fA-F-]{36}$/.test(uuid) ? join(dir, `${uuid.toLowerCase()}.json`) : undefined;
}

/** What a domain of ours goes by: the state file's fields. */
export interface DomainSettings {
  policy: Policy;
  hotplug: boolean;
  /** opted out of the host-wide mode (`<virt-ebpf:host-wide mode="off"/>`) */
  hostWideOff?: boolean;
}

/**
 * Who wrote a state: the hook at prepare (removed again at release), or the broker at exec-plan
 * from libvirt's live XML (`exec`, with the pid of the QEMU it was written for; nothing removes
 * it, so it is trusted only for that process).
 */
export type StateWriter = { by: 'hook' } | { by: 'exec'; pid: number };

/** What was recorded for a running domain: its policy and hot-plug setting, and who wrote it. */
export function readDomainState(uuid: string | undefined, dir = DOMAIN_STATE_DIR): Partial<DomainSettings> & { writer?: StateWriter } {
  const path = uuid ? domainStatePath(uuid, dir) : undefined;
  const st = path ? readJson(path) : undefined;
  if (!st) return {};
  return {
    policy: isPolicy(st.policy) ? st.policy : undefined,
    hotplug: typeof st.hotplug === 'boolean' ? st.hotplug : undefined,
    ...(st.hostWide === 'off' ? { hostWideOff: true } : {}),
    // An exec record without a usable pid is no process's (the wrapper reads it so too).
    writer: st.by === 'exec' ? { by: 'exec', pid: Number.isSafeInteger(st.pid) ? (st.pid as number) : -1 } : { by: 'hook' },
  };
}

/** Record a domain's settings (the wrapper and the hot-plug shim's plans read them). Side effect. */
export function writeDomainState(d: { name: string; uuid: string }, s: DomainSettings, writer: StateWriter, dir = DOMAIN_STATE_DIR): void {
  const path = domainStatePath(d.uuid, dir);
  if (!path) return;
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const by = writer.by === 'exec' ? { by: 'exec', pid: writer.pid } : {};
  writeFileSync(path, JSON.stringify({ name: d.name, uuid: d.uuid, policy: s.policy, hotplug: s.hotplug, ...(s.hostWideOff ? { hostWide: 'off' } : {}), ...by }) + '\n', { mode: 0o644 });
}

export function removeDomainState(uuid: string | undefined, dir = DOMAIN_STATE_DIR): void {
  const path = uuid ? domainStatePath(uuid, dir) : undefined;
  if (path) rmSync(path, { force: true });
}

export function resolvePolicy(uuid: string | undefined, opts: { stateDir?: string; configPath?: string } = {}): Policy {
  const perDomain = readDomainState(uuid, opts.stateDir).policy;
  if (perDomain) return perDomain;
  const global = readJson(opts.configPath ?? CONFIG_FILE)?.policy;
  return isPolicy(global) ? global : DEFAULT_POLICY;
}
