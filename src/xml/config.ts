/**
 * Our record inside the domain's `<metadata>`: the real emulator, the policy, and exactly what
 * enable changed, so disable can undo it without guessing. libvirt keeps any namespaced element
 * under `<metadata>` verbatim (it re-indents it with libxml2), so this is also where the wrapper
 * and the hook read the per-domain settings.
 *
 *   <virt-ebpf:config xmlns:virt-ebpf="https://virt-ebpf.org/xmlns/1.0" version="1" policy="strict">
 *     <virt-ebpf:emulator original="/usr/bin/qemu-system-x86_64" wrapper="/usr/libexec/virt-ebpf/qemu-system-x86_64"/>
 *     <virt-ebpf:nic index="0" mac="52:54:00:6b:3c:01" driver="created">
 *       <virt-ebpf:attr name="rss" value="on"/>
 *       <virt-ebpf:attr name="queues" value="4" previous="1"/>
 *     </virt-ebpf:nic>
 *   </virt-ebpf:config>
 *
 * Markers of things enable created are present only when true: `metadata="created"` (there was
 * no <metadata>), `metadata="expanded"` (it was an empty `<metadata/>`), `element="created"` on
 * the emulator (there was no <emulator>), `driver="created"` on a NIC. An attr without
 * `previous` was absent before.
 */
import type { Element } from '@xmldom/xmldom';
import { VirtEbpfError } from '../errors';
import { childElements, escapeAttr } from './source';
import { DEFAULT_POLICY, POLICIES, type Policy } from '../policy';

/** One constant for our XML namespace; never change it (it identifies existing domains). */
export { XML_NAMESPACE } from '../shims/constants';
import { XML_NAMESPACE } from '../shims/constants';
export const XML_PREFIX = 'virt-ebpf';
export const CONFIG_VERSION = 1;

export { type Policy, POLICIES, DEFAULT_POLICY } from '../policy';

/** The `<driver>` attributes enable may set. */
export type NicAttrName = 'rss' | 'queues';

export interface AttrRecord {
  name: NicAttrName;
  /** The value enable wrote. */
  value: string;
  /** The value before enable; undefined = the attribute was absent. */
  previous?: string;
}

export interface NicRecord {
  /** Position among the domain's `<interface>` elements at enable time. */
  index: number;
  /** MAC at enable time, when the interface had one (preferred for finding it again). */
  mac?: string;
  /** Enable created the `<driver>` element itself. */
  driverCreated: boolean;
  attrs: AttrRecord[];
}

export type MetadataOrigin = 'existing' | 'created' | 'expanded';

export interface XmlConfig {
  version: number;
  policy: Policy;
  /**
   * Whether the wrapper loads the hot-plug shim into this domain's QEMU, so NICs hot-plugged
   * with rss on get eBPF fds (`hotplug="off"` opts out; absent means on).
   */
  hotplug: 'on' | 'off';
  emulator: {
    /** The real emulator the wrapper execs. */
    original: string;
    /** What enable put into `<emulator>`. */
    wrapper: string;
    /** There was no `<emulator>` element (libvirt's default emulator was used). */
    elementCreated: boolean;
  };
  metadata: MetadataOrigin;
  nics: NicRecord[];
}

function corrupt(why: string): VirtEbpfError {
  return new VirtEbpfError('XML_METADATA', `the domain's virt-ebpf metadata is unusable: ${why}`, {
    remedy: 'fix or remove the <virt-ebpf:config> element under <metadata> (virsh edit), restore <emulator> by hand if needed, then run `virt-ebpf xml enable` again',
  });
}

function need(el: Element, attr: string): string {
  const v = el.getAttribute(attr);
  if (v === null || v === '') throw corrupt(`<${el.tagName}> lacks ${attr}=`);
  return v;
}

/** Reads our `<virt-ebpf:config>` element into a typed object (throws XML_METADATA if broken). */
export function parseConfigElement(el: Element): XmlConfig {
  const version = Number(el.getAttribute('version') ?? '');
  if (!Number.isInteger(version) || version < 1) throw corrupt('missing or bad version=');
  if (version > CONFIG_VERSION) {
    throw new VirtEbpfError('XML_METADATA', `the domain's virt-ebpf metadata has version ${version}, newer than this virt-ebpf understands (${CONFIG_VERSION})`, {
      remedy: 'use the virt-ebpf release that enabled this domain, or a newer one',
    });
  }
  const policy = el.getAttribute('policy') ?? DEFAULT_POLICY;
  if (!POLICIES.includes(policy as Policy)) throw corrupt(`unknown policy "${policy}"`);
  const hotplug = el.getAttribute('hotplug') ?? 'on';
  if (hotplug !== 'on' && hotplug !== 'off') throw corrupt(`unknown hotplug="${hotplug}"`);
  const meta = el.getAttribute('metadata') ?? 'existing';
  if (meta !== 'existing' && meta !== 'created' && meta !== 'expanded') throw corrupt(`unknown metadata="${meta}"`);

  const emus = childElements(el, 'emulator', XML_NAMESPACE);
  if (emus.length !== 1) throw corrupt('expected exactly one <virt-ebpf:emulator>');
  const emu = emus[0];
  const nics: NicRecord[] = childElements(el, 'nic', XML_NAMESPACE).map((n) => {
    const index = Number(need(n, 'index'));
    if (!Number.isInteger(index) || index < 0) throw corrupt(`bad nic index "${n.getAttribute('index')}"`);
    const attrs = childElements(n, 'attr', XML_NAMESPACE).map((a): AttrRecord => {
      const name = need(a, 'name');
      if (name !== 'rss' && name !== 'queues') throw corrupt(`unknown nic attr "${name}"`);
      const previous = a.getAttribute('previous');
      return { name, value: need(a, 'value'), ...(previous === null ? {} : { previous }) };
    });
    const mac = n.getAttribute('mac');
    return { index, ...(mac ? { mac } : {}), driverCreated: n.getAttribute('driver') === 'created', attrs };
  });
  return {
    version,
    policy: policy as Policy,
    hotplug,
    emulator: { original: need(emu, 'original'), wrapper: need(emu, 'wrapper'), elementCreated: emu.getAttribute('element') === 'created' },
    metadata: meta,
    nics,
  };
}

/**
 * Formats the config element the way libvirt prints it back (libxml2: double quotes, one
 * element per line, children indented by `unit`), so a define/dumpxml cycle leaves it unchanged.
 * `indent` is the indentation of the config element itself; the first line carries none.
 */
export function formatConfigElement(cfg: XmlConfig, indent: string, unit: string, nl: string): string {
  const p = XML_PREFIX;
  const a = (name: string, value: string) => ` ${name}="${escapeAttr(value, '"')}"`;
  const i1 = indent + unit;
  const i2 = i1 + unit;
  let out = `<${p}:config xmlns:${p}="${XML_NAMESPACE}"${a('version', String(cfg.version))}${a('policy', cfg.policy)}`;
  if (cfg.hotplug === 'off') out += a('hotplug', 'off');
  if (cfg.metadata !== 'existing') out += a('metadata', cfg.metadata);
  out += '>';
  out += `${nl}${i1}<${p}:emulator${a('original', cfg.emulator.original)}${a('wrapper', cfg.emulator.wrapper)}`;
  if (cfg.emulator.elementCreated) out += a('element', 'created');
  out += '/>';
  for (const nic of cfg.nics) {
    out += `${nl}${i1}<${p}:nic${a('index', String(nic.index))}`;
    if (nic.mac !== undefined) out += a('mac', nic.mac);
    if (nic.driverCreated) out += a('driver', 'created');
    if (nic.attrs.length === 0) {
      out += '/>';
      continue;
    }
    out += '>';
    for (const r of nic.attrs) {
      out += `${nl}${i2}<${p}:attr${a('name', r.name)}${a('value', r.value)}`;
      if (r.previous !== undefined) out += a('previous', r.previous);
      out += '/>';
    }
    out += `${nl}${i1}</${p}:nic>`;
  }
  return `${out}${nl}${indent}</${p}:config>`;
}
