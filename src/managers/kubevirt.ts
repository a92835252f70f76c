/**
 * KubeVirt's `onDefineDomain` hook: the VMI (JSON) and the domain XML virt-launcher is about to
 * define go in, the domain XML to define comes out. Pure.
 *
 * KubeVirt's sidecar-shim (cmd/sidecars/sidecar_shim.go) runs an executable named
 * `onDefineDomain` from PATH as `onDefineDomain --vmi JSON --domain XML` and sends its stdout,
 * unchanged, back to virt-launcher, which defines exactly that XML with libvirt. A non-zero exit
 * fails the VMI's start, with stderr in the sidecar's log.
 *
 * What turns RSS on is the VMI annotation `virt-ebpf.io/rss: "on"`; `virt-ebpf.io/policy`
 * (strict|fallback) goes with it. Only NICs KubeVirt gave 2 or more queues take part: virtio NICs
 * on a tap of a VMI with `spec.domain.devices.networkInterfaceMultiqueue: true` (KubeVirt sets
 * `<driver name="vhost" queues="N">` with N = the vCPU count). A domain where no NIC takes part
 * is returned unchanged: KubeVirt never sets rss on a NIC it hot-plugs, so switching the emulator
 * alone would buy nothing.
 */
import { POLICIES, type Policy } from '../policy';
import { domainFacts, enableDomain, NO_RSS_NIC_WARNING, wrapperInDir } from '../xml';
import { choice, managerInput as bad, type ManagerResult } from './common';
import { isJsonObject } from '../json';

/** The VMI annotations we read. */
export const KUBEVIRT_ANNOTATIONS = { rss: 'virt-ebpf.io/rss', policy: 'virt-ebpf.io/policy' } as const;
/** How a VMI declares its hook sidecars (KubeVirt's pkg/hooks/hooks.go). */
export const HOOK_SIDECARS_ANNOTATION = 'hooks.kubevirt.io/hookSidecars';
export const HOOK_POINT = 'onDefineDomain';
export const HOOK_API_VERSION = 'v1alpha3';
/**
 * The QEMU libvirt picks in virt-launcher: KubeVirt's domain XML has no `<emulator>` (except for
 * cross-architecture emulation), and the launcher image ships QEMU as /usr/libexec/qemu-kvm.
 */
export const VIRT_LAUNCHER_EMULATOR = '/usr/libexec/qemu-kvm';

export interface VmiFacts {
  /** `namespace/name` when the VMI names them, for messages. */
  label: string;
  rss?: 'on' | 'off';
  policy?: Policy;
  /** spec.domain.devices.networkInterfaceMultiqueue */
  multiqueue: boolean;
}

export interface SidecarOptions {
  wrapperDir: string;
  /** The emulator libvirt picks when the domain has no `<emulator>`. */
  defaultEmulator: string;
}


/** Reads what we need from the VMI JSON the sidecar-shim passes (json.Marshal of the VMI object). */
export function readVmi(json: string): VmiFacts {
  let vmi: unknown;
  try {
    vmi = JSON.parse(json);
  } catch (e) {
    throw bad(`the --vmi value is not JSON: ${(e as Error).message}`, "pass the VirtualMachineInstance as JSON, as KubeVirt's sidecar-shim does");
  }
  if (!isJsonObject(vmi)) throw bad('the --vmi value is not a JSON object', "pass the VirtualMachineInstance as JSON, as KubeVirt's sidecar-shim does");
  if (vmi.kind !== undefined && vmi.kind !== 'VirtualMachineInstance') {
    throw bad(`the --vmi value is a ${String(vmi.kind)}, not a VirtualMachineInstance`, 'pass the VMI, not its VirtualMachine or another object');
  }
  const meta = vmi.metadata ?? {};
  if (!isJsonObject(meta)) throw bad('the VMI\'s metadata is not an object', "pass the VirtualMachineInstance as JSON, as KubeVirt's sidecar-shim does");
  const label = [meta.namespace, meta.name].filter((x) => typeof x === 'string' && x !== '').join('/') || 'the VMI';
  const annotations = meta.annotations ?? {};
  if (!isJsonObject(annotations)) throw bad(`${label}: metadata.annotations is not an object`, 'annotations are a map of strings');
  const read = <T extends string>(key: string, allowed: readonly T[]) => choice(annotations[key], allowed, `${label}: annotation ${key}`, `set ${key} to`);
  const rss = read(KUBEVIRT_ANNOTATIONS.rss, ['on', 'off'] as const);
  const policy = read(KUBEVIRT_ANNOTATIONS.policy, POLICIES);
  const spec = isJsonObject(vmi.spec) ? vmi.spec : {};
  const domain = isJsonObject(spec.domain) ? spec.domain : {};
  const devices = isJsonObject(domain.devices) ? domain.devices : {};
  return { label, ...(rss ? { rss } : {}), ...(policy ? { policy } : {}), multiqueue: devices.networkInterfaceMultiqueue === true };
}

/** `onDefineDomain --vmi JSON --domain XML`: the domain XML for virt-launcher to define. */
export function onDefineDomain(vmiJson: string, domainXml: string, opts: SidecarOptions): ManagerResult {
  const vmi = readVmi(vmiJson);
  // The domain is checked even when RSS stays off: what virt-launcher defines must be a QEMU domain.
  domainFacts(domainXml);
  const unchanged = (why: string, warnings: string[] = []): ManagerResult => ({ xml: domainXml, changes: [], warnings, changed: false, why });
  if (vmi.rss !== 'on') {
    const warnings = vmi.policy ? [`${vmi.label}: ${KUBEVIRT_ANNOTATIONS.policy} has no effect without ${KUBEVIRT_ANNOTATIONS.rss}: "on"`] : [];
    return unchanged(`${vmi.label}: ${KUBEVIRT_ANNOTATIONS.rss} is ${vmi.rss === 'off' ? '"off"' : 'not set'}; domain unchanged`, warnings);
  }
  const r = enableDomain(domainXml, {
    wrapperFor: wrapperInDir(opts.wrapperDir),
    defaultEmulator: opts.defaultEmulator,
    allVirtio: true,
    ...(vmi.policy ? { policy: vmi.policy } : {}),
  });
  if (r.nics.length === 0) {
    const warnings = r.warnings.filter((w) => w !== NO_RSS_NIC_WARNING);
    if (!vmi.multiqueue) warnings.push(`${vmi.label}: spec.domain.devices.networkInterfaceMultiqueue is not true, so KubeVirt gives each NIC one queue; set it to true for RSS`);
    return unchanged(`${vmi.label}: no NIC can take eBPF RSS; domain unchanged`, warnings);
  }
  return { xml: r.xml, changes: r.changes, warnings: r.warnings, changed: true, why: `${vmi.label}: eBPF RSS on for ${r.nics.length} NIC(s)` };
}
