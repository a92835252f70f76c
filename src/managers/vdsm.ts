/**
 * oVirt's VDSM hooks `before_vm_start` and `before_nic_hotplug`. Pure: XML and the hook's
 * environment in, XML out; `cli.ts` does the file.
 *
 * VDSM (lib/vdsm/common/hooks.py) runs every executable in /usr/libexec/vdsm/hooks/POINT/ in
 * name order, each with the XML in the file `$_hook_domxml` (the domain for before_vm_start, one
 * `<interface>` for before_nic_hotplug) and the VM's custom properties as environment variables
 * (for a hot-plug, also the vNIC profile's). The last file content is what VDSM goes on with.
 *
 * What turns RSS on is the VM custom property `virt_ebpf=on` (an admin allows it once with
 * `engine-config -s UserDefinedVMProperties=…`); `virt_ebpf_policy` (strict|fallback) goes with
 * it. A VM without it is passed through untouched, unparsed: these hooks run for every VM on the
 * host, and a VM that did not ask must never fail because of us. With it:
 * - before_vm_start is `virt-ebpf xml enable --all-virtio`: the emulator becomes the wrapper
 *   (also without an RSS NIC, so a NIC hot-plugged later can have RSS) and rss is turned on for
 *   virtio NICs on a tap with 2 or more queues (oVirt's multi-queue setting or the vNIC
 *   profile's `queues` custom property set them);
 * - before_nic_hotplug turns rss on for the NIC under the same rule.
 */
import { POLICIES, type Policy } from '../policy';
import { enableDomain, enableInterface, wrapperInDir } from '../xml';
import { choice, type ManagerResult } from './common';

export const VDSM_HOOK_POINTS = ['before_vm_start', 'before_nic_hotplug'] as const;
export type VdsmHookPoint = (typeof VDSM_HOOK_POINTS)[number];

/** The VM custom properties we read (environment variables of the hook). */
export const VDSM_PROPERTIES = { rss: 'virt_ebpf', policy: 'virt_ebpf_policy' } as const;
/** Where oVirt hosts (EL) have QEMU; the emulator libvirt picks when the domain has no `<emulator>`. */
export const VDSM_EMULATOR = '/usr/libexec/qemu-kvm';

export interface VdsmOptions {
  wrapperDir: string;
  defaultEmulator: string;
}

export interface VdsmSettings {
  rss?: 'on' | 'off';
  policy?: Policy;
}

export function readProperties(env: Record<string, string | undefined>): VdsmSettings {
  const read = <T extends string>(key: string, allowed: readonly T[]) =>
    choice(env[key], allowed, `the VM custom property ${key}`, `set ${key} (engine: Edit VM > Custom Properties) to`);
  const rss = read(VDSM_PROPERTIES.rss, ['on', 'off'] as const);
  // The policy matters only to a VM that asked: a bad one never fails a VM that did not.
  const policy = rss === 'on' ? read(VDSM_PROPERTIES.policy, POLICIES) : undefined;
  return { ...(rss ? { rss } : {}), ...(policy ? { policy } : {}) };
}

function untouched(xml: string, s: VdsmSettings): ManagerResult {
  return { xml, changed: false, changes: [], warnings: [], why: `${VDSM_PROPERTIES.rss} is ${s.rss === 'off' ? 'off' : 'not set'}; unchanged` };
}

export function beforeVmStart(xml: string, env: Record<string, string | undefined>, opts: VdsmOptions): ManagerResult {
  const s = readProperties(env);
  if (s.rss !== 'on') return untouched(xml, s);
  const r = enableDomain(xml, {
    wrapperFor: wrapperInDir(opts.wrapperDir),
    defaultEmulator: opts.defaultEmulator,
    allVirtio: true,
    ...(s.policy ? { policy: s.policy } : {}),
  });
  return { xml: r.xml, changed: r.xml !== xml, changes: r.changes, warnings: r.warnings, why: `eBPF RSS on for ${r.nics.length} NIC(s)` };
}

export function beforeNicHotplug(xml: string, env: Record<string, string | undefined>): ManagerResult {
  const s = readProperties(env);
  if (s.rss !== 'on') return untouched(xml, s);
  const r = enableInterface(xml);
  return { xml: r.xml, changed: r.xml !== xml, changes: r.changes, warnings: r.warnings, why: r.rss ? 'the NIC has eBPF RSS' : 'the NIC cannot take eBPF RSS; unchanged' };
}

export function runVdsmPoint(point: VdsmHookPoint, xml: string, env: Record<string, string | undefined>, opts: VdsmOptions): ManagerResult {
  return point === 'before_vm_start' ? beforeVmStart(xml, env, opts) : beforeNicHotplug(xml, env);
}
