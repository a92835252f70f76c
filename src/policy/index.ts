/**
 * What the wrapper does when it cannot get fds: `strict` refuses to start QEMU (the one-line
 * reason reaches `virsh start`), `fallback` starts QEMU without eBPF and says so in the domain
 * log. Per domain: the hook writes /run/virt-ebpf/domains/<uuid>.json from our metadata at
 * `prepare`; otherwise the global default from the config file; otherwise strict.
 */
import { readFileSync } from 'node:fs';
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

/** What the hook recorded for a running domain at prepare: its policy and hot-plug setting. */
export function readDomainState(uuid: string | undefined, dir = DOMAIN_STATE_DIR): { policy?: Policy; hotplug?: boolean; hostWideOff?: boolean } {
  const path = uuid ? domainStatePath(uuid, dir) : undefined;
  const st = path ? readJson(path) : undefined;
  return {
    policy: isPolicy(st?.policy) ? st.policy : undefined,
    hotplug: typeof st?.hotplug === 'boolean' ? st.hotplug : undefined,
    ...(st?.hostWide === 'off' ? { hostWideOff: true } : {}),
  };
}

export function resolvePolicy(uuid: string | undefined, opts: { stateDir?: string; configPath?: string } = {}): Policy {
  const statePath = uuid ? domainStatePath(uuid, opts.stateDir) : undefined;
  const perDomain = statePath ? readJson(statePath)?.policy : undefined;
  if (isPolicy(perDomain)) return perDomain;
  const global = readJson(opts.configPath ?? CONFIG_FILE)?.policy;
  return isPolicy(global) ? global : DEFAULT_POLICY;
}
