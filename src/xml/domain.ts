/**
 * A read-only view of the parts of a libvirt domain the transformer cares about: the domain
 * type, `<devices><emulator>`, the `<interface>` list and our metadata.
 */
import type { Element } from '@xmldom/xmldom';
import { VirtEbpfError } from '../errors';
import { parseConfigElement, XML_NAMESPACE, type XmlConfig } from './config';
import { childElements, firstChild, isTextOnly, SourceDoc } from './source';

/** Domain types whose emulator is QEMU (libvirt's qemu driver handles exactly these). */
const QEMU_DOMAIN_TYPES = ['qemu', 'kvm'];

/** virtio-net models; the (non-)transitional ones are still virtio-net-pci with the rss property. */
const VIRTIO_MODELS = ['virtio', 'virtio-transitional', 'virtio-non-transitional'];

/**
 * Interface types whose backend is a tun/tap queue fd, which is where QEMU attaches the steering
 * program (TUNSETSTEERINGEBPF). `network` is a tap for the usual NAT/route/open/isolated/bridge
 * networks; a network that hands out macvtap or hostdev devices cannot be seen from the domain
 * XML alone and surfaces at start.
 */
const TAP_TYPES = ['ethernet', 'bridge', 'network'];

/** Why each other interface type cannot carry eBPF RSS. */
const NO_TAP_REASON: Record<string, string> = {
  direct: 'macvtap (type direct) rejects steering eBPF programs (TUNSETSTEERINGEBPF gives EINVAL on macvtap queues)',
  vhostuser: 'a vhost-user backend has no tap device in QEMU',
  hostdev: 'a passed-through host device has no tap device',
  vdpa: 'a vDPA device has no tap device',
  user: 'user-mode networking (slirp/passt) has no tap device',
};

export interface InterfaceView {
  el: Element;
  /** Position among the domain's `<interface>` elements. */
  index: number;
  type: string;
  mac?: string;
  alias?: string;
  model?: string;
  driver?: Element;
  rss?: string;
  /** `<driver rss_hash_report>`: libvirt gives QEMU `hash` from it. */
  hashReport?: string;
  queues?: string;
  /** Set when this interface can never carry eBPF RSS, with the reason. */
  unsupported?: string;
  /** How messages name it: `interface 1 (52:54:00:…)`. */
  label: string;
}

export interface DomainView {
  src: SourceDoc;
  name?: string;
  type: string;
  devices: Element;
  emulator?: Element;
  /** Text of `<emulator>`, trimmed. */
  emulatorPath?: string;
  interfaces: InterfaceView[];
  metadata?: Element;
  configEl?: Element;
  config?: XmlConfig;
}

export function isVirtioModel(model: string | undefined): boolean {
  return model !== undefined && VIRTIO_MODELS.includes(model);
}

/** The reason an interface cannot carry eBPF RSS, or undefined if it can. */
export function unsupportedReason(type: string, model: string | undefined, backendType: string | undefined): string | undefined {
  if (!isVirtioModel(model)) {
    return model === undefined ? 'it has no <model type="virtio"/> (QEMU picks a non-virtio NIC)' : `model ${model} is not virtio-net`;
  }
  if (backendType === 'passt') return 'the passt backend has no tap device';
  if (TAP_TYPES.includes(type)) return undefined;
  return NO_TAP_REASON[type] ?? `interface type ${type} has no tap device`;
}

function attr(el: Element | undefined, name: string): string | undefined {
  return el?.getAttribute(name) ?? undefined;
}

export function readDomain(src: SourceDoc): DomainView {
  const root = src.root;
  if (root.localName !== 'domain' || root.namespaceURI !== null) {
    throw new VirtEbpfError('XML_INVALID', `root element is <${root.tagName}>, not <domain>`, {
      remedy: 'pass a domain XML (`virsh dumpxml DOMAIN`)',
    });
  }
  const name = firstChild(root, 'name')?.textContent?.trim() || undefined;
  const which = name === undefined ? 'the domain' : `domain ${name}`;
  const type = root.getAttribute('type') ?? '';
  if (!QEMU_DOMAIN_TYPES.includes(type)) {
    throw new VirtEbpfError('XML_UNSUPPORTED_DOMAIN', `${which} has type "${type}"; eBPF RSS needs a QEMU domain (type qemu or kvm)`, {
      remedy: 'use virt-ebpf only with domains run by libvirt\'s QEMU driver',
      fields: { domainType: type },
    });
  }
  const devices = firstChild(root, 'devices');
  if (!devices) {
    throw new VirtEbpfError('XML_UNSUPPORTED_DOMAIN', `${which} has no <devices> element`, {
      remedy: 'add <devices> with at least the network interfaces, or use `virsh dumpxml DOMAIN` output',
    });
  }
  const emulator = firstChild(devices, 'emulator');
  if (emulator && !isTextOnly(emulator)) {
    throw new VirtEbpfError('XML_UNSUPPORTED_DOMAIN', '<emulator> contains markup, not just a path', {
      remedy: 'make <emulator> hold only the emulator path',
    });
  }
  const emulatorPath = emulator ? (emulator.textContent ?? '').trim() : undefined;

  const interfaces = childElements(devices, 'interface').map(interfaceView);

  const metadata = firstChild(root, 'metadata');
  const configs = metadata ? childElements(metadata, 'config', XML_NAMESPACE) : [];
  if (configs.length > 1) {
    throw new VirtEbpfError('XML_METADATA', 'the domain has more than one <virt-ebpf:config> element', {
      remedy: 'keep one <virt-ebpf:config> under <metadata> (virsh edit) and retry',
    });
  }
  const configEl = configs[0];
  return {
    src,
    ...(name !== undefined ? { name } : {}),
    type,
    devices,
    ...(emulator ? { emulator, emulatorPath } : {}),
    interfaces,
    ...(metadata ? { metadata } : {}),
    ...(configEl ? { configEl, config: parseConfigElement(configEl) } : {}),
  };
}

/** The facts of one `<interface>` element; `index` is its position among the domain's interfaces. */
export function interfaceView(el: Element, index: number): InterfaceView {
  const type = el.getAttribute('type') ?? '';
  const mac = attr(firstChild(el, 'mac'), 'address');
  const alias = attr(firstChild(el, 'alias'), 'name');
  const model = attr(firstChild(el, 'model'), 'type');
  const driver = firstChild(el, 'driver');
  const backendType = attr(firstChild(el, 'backend'), 'type');
  return {
    el,
    index,
    type,
    ...(mac !== undefined ? { mac } : {}),
    ...(alias !== undefined ? { alias } : {}),
    ...(model !== undefined ? { model } : {}),
    ...(driver ? { driver } : {}),
    ...(attr(driver, 'rss') !== undefined ? { rss: attr(driver, 'rss') } : {}),
    ...(attr(driver, 'rss_hash_report') !== undefined ? { hashReport: attr(driver, 'rss_hash_report') } : {}),
    ...(attr(driver, 'queues') !== undefined ? { queues: attr(driver, 'queues') } : {}),
    ...(() => {
      const why = unsupportedReason(type, model, backendType);
      return why === undefined ? {} : { unsupported: why };
    })(),
    label: `interface ${index}${mac ? ` (${mac})` : alias ? ` (${alias})` : ''}`,
  };
}

/** Parses `<driver queues>`: undefined when absent, NaN when not a positive integer. */
export function queueCount(raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined;
  return /^[0-9]+$/.test(raw.trim()) && Number(raw) > 0 ? Number(raw) : NaN;
}
