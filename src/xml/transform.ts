/**
 * enable/disable: pure functions from domain XML to domain XML.
 *
 * enable points `<emulator>` at our wrapper, optionally turns RSS on for virtio NICs, and records
 * in our metadata exactly what it changed; disable reads that record and undoes it, touching only
 * what is still as enable left it. Both change the source text only where they must (see
 * source.ts), and they format what they add the way libvirt prints it, so that
 * disable(dumpxml(define(enable(x)))) gives back x for any x that libvirt printed.
 */
import type { Element } from '@xmldom/xmldom';
import { VirtEbpfError } from '../errors';
import {
  CONFIG_VERSION,
  DEFAULT_POLICY,
  formatConfigElement,
  POLICIES,
  type AttrRecord,
  type NicAttrName,
  type NicRecord,
  type Policy,
  type XmlConfig,
} from './config';
import { interfaceView, isVirtioModel, queueCount, readDomain, type DomainView, type InterfaceView } from './domain';
import { XML_NAMESPACE } from './config';
import { childElements, Edits, escapeAttr, escapeText, firstChild, SourceDoc, type AttrSpan } from './source';

export interface EnableOptions {
  /** Maps the real emulator path to its wrapper path. A path it maps to itself is a wrapper. */
  wrapperFor(emulatorPath: string): string;
  /** The emulator libvirt would pick; required only for a domain without `<emulator>`. */
  defaultEmulator?: string;
  /** Turn rss on for every virtio NIC that can carry it and has no rss setting. */
  allVirtio?: boolean;
  /**
   * Queue count (>= 2) for the NICs this call turns rss on: set where absent, raised where
   * lower. Without it, a NIC with fewer than 2 queues is left alone with a warning: RSS over a
   * single queue spreads nothing, and the right count depends on the guest's vCPUs.
   */
  queues?: number;
  /** What the wrapper does when it cannot get eBPF fds; kept across enables unless given. */
  policy?: Policy;
  /** Interpose on the monitor so hot-plugged RSS NICs get fds (default on); kept unless given. */
  hotplug?: 'on' | 'off';
}

/** A virtio NIC with rss on that can carry eBPF RSS. */
export interface RssNic {
  index: number;
  mac?: string;
  alias?: string;
  type: string;
  /** `<driver queues>`, 1 when unset. */
  queues: number;
}

export type Change =
  /** from undefined: the element was created; to undefined: it was removed. */
  | { kind: 'emulator'; from?: string; to?: string }
  | { kind: 'nic-attr'; nic: string; attr: NicAttrName; from?: string; to?: string }
  | { kind: 'nic-driver'; nic: string; action: 'created' | 'removed' }
  | { kind: 'metadata'; action: 'created' | 'updated' | 'removed' }
  | { kind: 'policy'; from?: Policy; to: Policy }
  | { kind: 'hotplug'; from: 'on' | 'off'; to: 'on' | 'off' };

/** enable's warning for a domain left without RSS NICs (a caller may decide to keep such a domain as it was). */
export const NO_RSS_NIC_WARNING = "no interface has rss='on': only the emulator is switched (NICs hot-plugged later with rss='on' will get eBPF RSS)";

export interface EnableResult {
  xml: string;
  changes: Change[];
  warnings: string[];
  nics: RssNic[];
}

export interface DisableResult {
  xml: string;
  changes: Change[];
  warnings: string[];
}

export function describeChange(c: Change): string {
  const v = (s: string | undefined) => (s === undefined ? '(absent)' : `'${s}'`);
  switch (c.kind) {
    case 'emulator':
      if (c.from === undefined) return `<emulator> added: ${c.to}`;
      if (c.to === undefined) return `<emulator> removed (was ${c.from})`;
      return `<emulator> ${c.from} -> ${c.to}`;
    case 'nic-attr':
      return `${c.nic}: <driver ${c.attr}> ${v(c.from)} -> ${v(c.to)}`;
    case 'nic-driver':
      return `${c.nic}: <driver> ${c.action}`;
    case 'metadata':
      return `virt-ebpf metadata ${c.action}`;
    case 'policy':
      return `policy ${c.from ?? '(none)'} -> ${c.to}`;
    case 'hotplug':
      return `hotplug ${c.from} -> ${c.to}`;
  }
}

/** libvirt's attribute order for `<driver>` of an interface, so inserted attributes land where libvirt prints them. */
const DRIVER_ATTR_ORDER = ['name', 'txmode', 'ioeventfd', 'event_idx', 'queues', 'rx_queue_size', 'tx_queue_size', 'rss', 'rss_hash_report', 'iommu', 'ats', 'packed', 'page_per_vq'];
const rank = (name: string) => {
  const i = DRIVER_ATTR_ORDER.indexOf(name);
  return i < 0 ? Infinity : i;
};

/** libvirt prints `<metadata>` right after these. */
const BEFORE_METADATA = ['name', 'uuid', 'genid', 'title', 'description'];

class Writer {
  readonly edits = new Edits();
  readonly changes: Change[] = [];
  readonly warnings: string[] = [];
  readonly nl: string;
  readonly unit: string;
  readonly quote: '"' | "'";

  constructor(readonly src: SourceDoc) {
    this.nl = src.newline;
    const first = childElements(src.root)[0];
    const inner = first ? src.indentOf(first) : '';
    const outer = src.indentOf(src.root);
    this.unit = inner.startsWith(outer) && inner.length > outer.length ? inner.slice(outer.length) : '  ';
    this.quote = src.tag(src.root).attrs[0]?.quote ?? "'";
  }

  /** The line break + indentation to put before a new sibling written next to `ref`, or '' if `ref` shares its line with other markup. */
  lead(ref: Element | undefined, fallbackIndent: string): string {
    if (!ref) return this.nl + fallbackIndent;
    const ind = this.src.indentOf(ref);
    const start = this.src.offset(ref);
    const onOwnLine = ind !== '' || start === 0 || /[\r\n]/.test(this.src.text[start - 1] ?? '');
    return onOwnLine ? this.nl + ind : '';
  }

  setAttr(el: Element, name: string, value: string): void {
    const tag = this.src.tag(el);
    const existing = tag.attrs.find((a) => a.name === name);
    if (existing) {
      this.edits.replace(existing.valueStart, existing.valueEnd, escapeAttr(value, existing.quote));
      return;
    }
    let at = tag.nameEnd;
    for (const a of tag.attrs) if (rank(a.name) < rank(name)) at = a.end;
    const q = tag.attrs[0]?.quote ?? this.quote;
    this.edits.insert(at, ` ${name}=${q}${escapeAttr(value, q)}${q}`);
  }

  removeAttr(span: AttrSpan): void {
    this.edits.replace(span.wsStart, span.end, '');
  }

  /** Removes an element with the whitespace that precedes it (the inverse of inserting lead + element). */
  removeElement(el: Element): void {
    const span = this.src.span(el);
    this.edits.replace(this.src.wsBefore(span.start), span.end, '');
  }

  /** Replaces the text of a text-only element, keeping surrounding whitespace. */
  setText(el: Element, value: string): void {
    const span = this.src.span(el);
    const raw = this.src.text.slice(span.contentStart, span.contentEnd);
    const lead = raw.length - raw.trimStart().length;
    const trail = raw.length - raw.trimEnd().length;
    if (span.tag.selfClosing) {
      this.edits.replace(span.tag.end - 2, span.tag.end, `>${escapeText(value)}</${el.tagName}>`);
    } else {
      this.edits.replace(span.contentStart + lead, span.contentEnd - trail, escapeText(value));
    }
  }
}

function ensureAbsolute(path: string, what: string, code: 'USAGE' | 'XML_UNSUPPORTED_DOMAIN' = 'USAGE'): void {
  if (!path.startsWith('/') || /[\0\r\n]/.test(path)) {
    throw new VirtEbpfError(code, `${what} "${path}" is not an absolute path`, {
      remedy: 'use an absolute path (libvirt requires one for <emulator>)',
    });
  }
}

const sameMac = (a: string | undefined, b: string | undefined) => a !== undefined && b !== undefined && a.toLowerCase() === b.toLowerCase();

/** The interface a record refers to: by MAC when it had one (NICs can move), else by position. */
function findInterface(view: DomainView, rec: NicRecord): InterfaceView | undefined {
  if (rec.mac !== undefined) {
    const byMac = view.interfaces.find((i) => sameMac(i.mac, rec.mac));
    if (byMac) return byMac;
  }
  const byIndex = view.interfaces[rec.index];
  // An index only identifies the NIC if nothing contradicts it (a different MAC means a different NIC).
  return byIndex && (rec.mac === undefined || byIndex.mac === undefined) ? byIndex : undefined;
}

/** The config of a domain enable has not seen yet. */
function freshConfig(): XmlConfig {
  return { version: CONFIG_VERSION, policy: DEFAULT_POLICY, hotplug: 'on', emulator: { original: '', wrapper: '', elementCreated: false }, metadata: 'existing', nics: [] };
}

function cloneConfig(c: XmlConfig): XmlConfig {
  return { ...c, emulator: { ...c.emulator }, nics: c.nics.map((n) => ({ ...n, attrs: n.attrs.map((a) => ({ ...a })) })) };
}

function validateOptions(opts: EnableOptions): void {
  if (typeof opts?.wrapperFor !== 'function') throw new TypeError('enableDomain: opts.wrapperFor is required');
  if (opts.queues !== undefined && (!Number.isInteger(opts.queues) || opts.queues < 2 || opts.queues > 256)) {
    throw new VirtEbpfError('USAGE', `queues ${opts.queues} is out of range`, {
      remedy: 'pass an integer from 2 to 256 (RSS spreads packets over at least two queues)',
    });
  }
  if (opts.hotplug !== undefined && opts.hotplug !== 'on' && opts.hotplug !== 'off') {
    throw new VirtEbpfError('USAGE', `hotplug must be on or off, not "${String(opts.hotplug)}"`, { remedy: 'pass --hotplug on or --hotplug off' });
  }
  if (opts.policy !== undefined && !POLICIES.includes(opts.policy)) {
    throw new VirtEbpfError('USAGE', `unknown policy "${opts.policy}"`, { remedy: `use one of: ${POLICIES.join(', ')}` });
  }
}

/** An explicit rss='on' on a NIC that cannot carry eBPF RSS is refused, not skipped. */
function refuseUnsupported(interfaces: InterfaceView[]): void {
  const refused = interfaces.filter((i) => i.rss === 'on' && i.unsupported !== undefined);
  if (refused.length === 0) return;
  const lines = refused.map((i) => `${i.label}: ${i.unsupported}`);
  throw new VirtEbpfError('XML_UNSUPPORTED_NIC', `cannot give eBPF RSS to ${lines[0]}${refused.length > 1 ? ` (and ${refused.length - 1} more)` : ''}`, {
    remedy: "remove rss='on' from that interface's <driver>, or make it a virtio NIC on a tap backend (type ethernet, bridge or network)",
    detail: lines.join('\n'),
    fields: { interfaces: refused.map((i) => i.index) },
  });
}

export function enableDomain(xml: string, opts: EnableOptions): EnableResult {
  validateOptions(opts);
  const src = SourceDoc.parse(xml);
  const view = readDomain(src);
  const w = new Writer(src);
  const before = view.config;
  const cfg: XmlConfig = before
    ? cloneConfig(before)
    : freshConfig();

  // NICs first: a refusal must come before anything else is decided.
  refuseUnsupported(view.interfaces);

  enableEmulator(view, w, cfg, opts);
  for (const iface of view.interfaces) enableNic(iface, w, cfg, opts);
  if (opts.queues !== undefined && !opts.allVirtio) {
    w.warnings.push('queues applies only to NICs this run turns rss on (with all-virtio); nothing used it');
  }

  const policy = opts.policy ?? before?.policy ?? DEFAULT_POLICY;
  if (before && before.policy !== policy) w.changes.push({ kind: 'policy', from: before.policy, to: policy });
  cfg.policy = policy;
  const hotplug = opts.hotplug ?? before?.hotplug ?? 'on';
  if (before && before.hotplug !== hotplug) w.changes.push({ kind: 'hotplug', from: before.hotplug, to: hotplug });
  cfg.hotplug = hotplug;

  if (!before || JSON.stringify(before) !== JSON.stringify(cfg)) writeConfig(view, w, cfg, !!before);

  const out = w.edits.apply(xml);
  // Re-reading the result guards against a splice that broke the document.
  const result = readDomain(SourceDoc.parse(out));
  const nics = rssNicsOf(result);
  if (nics.length === 0) {
    w.warnings.push(NO_RSS_NIC_WARNING);
  }
  const hashWarning = hashReportWarning(result);
  if (hashWarning) w.warnings.push(hashWarning);
  return { xml: out, changes: w.changes, warnings: w.warnings, nics };
}

/**
 * One line about the RSS NICs with `rss_hash_report='on'`: a guest that negotiates hash
 * reporting (Linux does) makes QEMU leave the eBPF program for its own software RSS, since the
 * program cannot fill in the hash (docs/steering.md). Not an error: the user may want the hash.
 */
export function hashReportWarning(view: DomainView): string | undefined {
  const hit = view.interfaces.filter((i) => i.rss === 'on' && i.unsupported === undefined && i.hashReport === 'on');
  if (hit.length === 0) return undefined;
  const names = hit.map((i) => i.label).join(', ');
  return `${names} ${hit.length === 1 ? 'has' : 'have'} rss_hash_report='on': a guest that turns hash reporting on (Linux does) makes QEMU steer in software instead of with eBPF; remove rss_hash_report to keep eBPF steering (\`virt-ebpf status\` shows which is in effect)`;
}

function enableEmulator(view: DomainView, w: Writer, cfg: XmlConfig, opts: EnableOptions): void {
  const current = view.emulatorPath;
  const before = view.config;
  if (current === '') {
    throw new VirtEbpfError('XML_UNSUPPORTED_DOMAIN', '<emulator> is empty', { remedy: 'put the QEMU path into <emulator> or remove the element' });
  }
  if (before) {
    if (current === before.emulator.wrapper) return;
    if (current === undefined) {
      throw new VirtEbpfError('XML_METADATA', 'the domain has virt-ebpf metadata but its <emulator> element was removed', {
        remedy: 'run `virt-ebpf xml disable` and then `virt-ebpf xml enable` again',
      });
    }
    if (opts.wrapperFor(current) === current) {
      // Another wrapper location (e.g. a different wrapper dir): the real emulator is still the recorded one.
      w.warnings.push(`<emulator> is ${current}, not the recorded wrapper ${before.emulator.wrapper}; keeping it and its recorded original ${before.emulator.original}`);
      cfg.emulator.wrapper = current;
      return;
    }
    // Someone pointed the domain at another real emulator since enable: wrap that one now.
    w.warnings.push(`<emulator> was changed to ${current} after enable; wrapping it instead of ${before.emulator.original}`);
    const wrapper = wrapperOf(current, opts);
    w.setText(view.emulator!, wrapper);
    w.changes.push({ kind: 'emulator', from: current, to: wrapper });
    cfg.emulator.original = current;
    cfg.emulator.wrapper = wrapper;
    return;
  }
  if (current === undefined) {
    const def = opts.defaultEmulator;
    if (!def) {
      throw new VirtEbpfError('USAGE', 'the domain has no <emulator> (libvirt picks its default), so the real emulator to wrap is unknown', {
        remedy: 'pass the default emulator path (--default-emulator, as `virsh domcapabilities` shows it) or add <emulator> to the domain',
      });
    }
    ensureAbsolute(def, 'default emulator');
    const wrapper = wrapperOf(def, opts);
    const devices = view.devices;
    const span = view.src.span(devices);
    if (span.tag.selfClosing) {
      throw new VirtEbpfError('XML_UNSUPPORTED_DOMAIN', 'the domain has an empty <devices/>', { remedy: 'add the devices (at least the network interfaces) first' });
    }
    const first = childElements(devices)[0];
    const lead = w.lead(first, view.src.indentOf(devices) + w.unit);
    w.edits.insert(span.contentStart, `${lead}<emulator>${escapeText(wrapper)}</emulator>`);
    w.changes.push({ kind: 'emulator', to: wrapper });
    cfg.emulator = { original: def, wrapper, elementCreated: true };
    return;
  }
  if (opts.wrapperFor(current) === current) {
    throw new VirtEbpfError('XML_METADATA', `<emulator> already is the virt-ebpf wrapper ${current} but the domain has no virt-ebpf metadata, so the real emulator is unknown`, {
      remedy: 'set <emulator> back to the real QEMU path (virsh edit) and run `virt-ebpf xml enable` again',
    });
  }
  const wrapper = wrapperOf(current, opts);
  w.setText(view.emulator!, wrapper);
  w.changes.push({ kind: 'emulator', from: current, to: wrapper });
  cfg.emulator = { original: current, wrapper, elementCreated: false };
}

function wrapperOf(original: string, opts: EnableOptions): string {
  ensureAbsolute(original, '<emulator>', 'XML_UNSUPPORTED_DOMAIN');
  const wrapper = opts.wrapperFor(original);
  ensureAbsolute(wrapper, 'wrapper');
  return wrapper;
}

function enableNic(iface: InterfaceView, w: Writer, cfg: XmlConfig, opts: Pick<EnableOptions, 'allVirtio' | 'queues'>): void {
  const q = queueCount(iface.queues);
  if (iface.rss === 'on') {
    if (q === undefined || q < 2) {
      w.warnings.push(`${iface.label} has rss on with ${iface.queues === undefined ? 'a single queue' : `queues='${iface.queues}'`}: RSS spreads nothing; set <driver queues> to 2 or more`);
    }
    return;
  }
  if (!opts.allVirtio || !isVirtioModel(iface.model)) return;
  if (iface.rss !== undefined) {
    w.warnings.push(`${iface.label}: skipped, rss='${iface.rss}' is set explicitly`);
    return;
  }
  if (iface.unsupported !== undefined) {
    w.warnings.push(`${iface.label}: skipped, ${iface.unsupported}`);
    return;
  }
  if (Number.isNaN(q)) {
    w.warnings.push(`${iface.label}: skipped, queues='${iface.queues}' is not a positive integer`);
    return;
  }
  const queues = opts.queues !== undefined && (q === undefined || q < opts.queues) ? opts.queues : q;
  if (queues === undefined || queues < 2) {
    w.warnings.push(`${iface.label}: skipped, it has ${q === undefined ? 'no multiqueue' : `queues='${q}'`}; pass queues (2 or more, e.g. the vCPU count) to turn RSS on for it`);
    return;
  }

  let rec = cfg.nics.find((r) => sameMac(r.mac, iface.mac) || (r.mac === undefined && r.index === iface.index));
  if (!rec) {
    rec = { index: iface.index, ...(iface.mac !== undefined ? { mac: iface.mac } : {}), driverCreated: false, attrs: [] };
    cfg.nics.push(rec);
  }
  rec.index = iface.index;
  const record = (name: NicAttrName, value: string, previous: string | undefined) => {
    const old = rec!.attrs.find((a) => a.name === name);
    if (old) old.value = value; // keep the earliest `previous`: that is what disable must restore
    else rec!.attrs.push({ name, value, ...(previous === undefined ? {} : { previous }) } as AttrRecord);
  };

  if (!iface.driver) {
    const model = firstChild(iface.el, 'model')!;
    const q2 = w.quote;
    const markup = `<driver queues=${q2}${queues}${q2} rss=${q2}on${q2}/>`;
    w.edits.insert(w.src.span(model).end, w.lead(model, '') + markup);
    rec.driverCreated = true;
    record('queues', String(queues), undefined);
    record('rss', 'on', undefined);
    w.changes.push({ kind: 'nic-driver', nic: iface.label, action: 'created' });
    return;
  }
  if (queues !== q) {
    w.setAttr(iface.driver, 'queues', String(queues));
    record('queues', String(queues), iface.queues);
    w.changes.push({ kind: 'nic-attr', nic: iface.label, attr: 'queues', ...(iface.queues === undefined ? {} : { from: iface.queues }), to: String(queues) });
  }
  w.setAttr(iface.driver, 'rss', 'on');
  record('rss', 'on', undefined);
  w.changes.push({ kind: 'nic-attr', nic: iface.label, attr: 'rss', to: 'on' });
}

export interface InterfaceResult {
  xml: string;
  changes: Change[];
  warnings: string[];
  /** The interface has rss on (set now or before) and can carry eBPF RSS. */
  rss: boolean;
}

/**
 * enable's NIC rule for one `<interface>` document (a NIC about to be hot-plugged): turns rss on
 * when it is a virtio NIC on a tap with 2 or more queues and no rss setting, with the same
 * minimal edit, warnings and refusals as enableDomain with `allVirtio`. Records nothing: a
 * hot-plugged NIC lives in the domain's live XML, not in the persistent XML our metadata describes.
 */
export function enableInterface(xml: string, opts: Pick<EnableOptions, 'queues'> = {}): InterfaceResult {
  validateOptions({ wrapperFor: (p) => p, ...opts });
  const src = SourceDoc.parse(xml);
  if (src.root.localName !== 'interface' || src.root.namespaceURI !== null) {
    throw new VirtEbpfError('XML_INVALID', `root element is <${src.root.tagName}>, not <interface>`, {
      remedy: "pass one NIC's device XML (`<interface type='bridge'>…</interface>`)",
    });
  }
  const iface = interfaceView(src.root, 0);
  refuseUnsupported([iface]);
  const w = new Writer(src);
  enableNic(iface, w, freshConfig(), { allVirtio: true, ...opts });
  const out = w.edits.apply(xml);
  const after = interfaceView(SourceDoc.parse(out).root, 0);
  return { xml: out, changes: w.changes, warnings: w.warnings, rss: after.rss === 'on' && after.unsupported === undefined };
}

function writeConfig(view: DomainView, w: Writer, cfg: XmlConfig, existed: boolean): void {
  const s = view.src;
  if (existed) {
    const el = view.configEl!;
    const span = s.span(el);
    w.edits.replace(span.start, span.end, formatConfigElement(cfg, s.indentOf(el), w.unit, w.nl));
    w.changes.push({ kind: 'metadata', action: 'updated' });
    return;
  }
  const meta = view.metadata;
  if (meta) {
    const span = s.span(meta);
    const metaIndent = s.indentOf(meta);
    if (span.tag.selfClosing) {
      cfg.metadata = 'expanded';
      const ind = metaIndent + w.unit;
      const body = formatConfigElement(cfg, ind, w.unit, w.nl);
      w.edits.replace(span.start, span.end, `<metadata>${w.nl}${ind}${body}${w.nl}${metaIndent}</metadata>`);
    } else {
      cfg.metadata = 'existing';
      const kids = childElements(meta);
      const last = kids[kids.length - 1];
      const lead = w.lead(last, metaIndent + w.unit);
      const ind = lead === '' ? '' : lead.slice(w.nl.length);
      const at = last ? s.span(last).end : span.contentStart;
      w.edits.insert(at, lead + formatConfigElement(cfg, ind, w.unit, w.nl));
    }
    w.changes.push({ kind: 'metadata', action: 'created' });
    return;
  }
  cfg.metadata = 'created';
  const anchors = childElements(s.root).filter((e) => BEFORE_METADATA.includes(e.localName ?? ''));
  const anchor = anchors[anchors.length - 1];
  const lead = anchor ? w.lead(anchor, '') : w.nl + s.indentOf(s.root) + w.unit;
  const ind = lead.startsWith(w.nl) ? lead.slice(w.nl.length) : '';
  const inner = ind + w.unit;
  const body = formatConfigElement(cfg, inner, w.unit, w.nl);
  const at = anchor ? s.span(anchor).end : s.tag(s.root).end;
  w.edits.insert(at, `${lead}<metadata>${w.nl}${inner}${body}${w.nl}${ind}</metadata>`);
  w.changes.push({ kind: 'metadata', action: 'created' });
}

export function disableDomain(xml: string): DisableResult {
  const src = SourceDoc.parse(xml);
  const view = readDomain(src);
  const cfg = view.config;
  if (!cfg) return { xml, changes: [], warnings: [] };
  const w = new Writer(src);

  const current = view.emulatorPath;
  if (current === cfg.emulator.wrapper) {
    if (cfg.emulator.elementCreated) {
      w.removeElement(view.emulator!);
      w.changes.push({ kind: 'emulator', from: current });
    } else {
      w.setText(view.emulator!, cfg.emulator.original);
      w.changes.push({ kind: 'emulator', from: current, to: cfg.emulator.original });
    }
  } else if (current === undefined) {
    w.warnings.push("<emulator> was removed after enable; libvirt's default emulator applies");
  } else {
    w.warnings.push(`<emulator> was changed to ${current} after enable; left as is (enable had set ${cfg.emulator.wrapper})`);
  }

  for (const rec of cfg.nics) disableNic(view, w, rec);

  // Our element, and the <metadata> around it if enable made it and nothing else lives there now.
  const meta = view.metadata!;
  const configEl = view.configEl!;
  const othersInMeta = [...childNodes(meta)].some((n) => n !== configEl && !(n.nodeType === 3 && (n.nodeValue ?? '').trim() === ''));
  if (cfg.metadata === 'created' && !othersInMeta) {
    w.removeElement(meta);
  } else if (cfg.metadata === 'expanded' && !othersInMeta) {
    const span = src.span(meta);
    w.edits.replace(span.start, span.end, '<metadata/>');
  } else {
    w.removeElement(configEl);
  }
  w.changes.push({ kind: 'metadata', action: 'removed' });

  const out = w.edits.apply(xml);
  readDomain(SourceDoc.parse(out));
  return { xml: out, changes: w.changes, warnings: w.warnings };
}

function* childNodes(el: Element) {
  for (let n = el.firstChild; n; n = n.nextSibling) yield n;
}

function disableNic(view: DomainView, w: Writer, rec: NicRecord): void {
  const name = rec.mac ?? `at index ${rec.index}`;
  const iface = findInterface(view, rec);
  if (!iface) {
    w.warnings.push(`interface ${name} that enable changed is gone; nothing to restore`);
    return;
  }
  const driver = iface.driver;
  if (!driver) {
    w.warnings.push(`${iface.label}: its <driver> was removed after enable; nothing to restore`);
    return;
  }
  const tag = w.src.tag(driver);
  const ours = rec.attrs.filter((a) => driver.getAttribute(a.name) === a.value);
  for (const a of rec.attrs) {
    if (ours.includes(a)) continue;
    const now = driver.getAttribute(a.name);
    w.warnings.push(`${iface.label}: ${a.name} is ${now === null ? 'absent' : `'${now}'`} now (enable set '${a.value}'); left as is`);
  }
  const onlyOurs = ours.length === rec.attrs.length && tag.attrs.every((s) => rec.attrs.some((a) => a.name === s.name)) && childElements(driver).length === 0;
  if (rec.driverCreated && onlyOurs) {
    w.removeElement(driver);
    w.changes.push({ kind: 'nic-driver', nic: iface.label, action: 'removed' });
    return;
  }
  for (const a of ours) {
    const span = tag.attrs.find((s) => s.name === a.name)!;
    if (a.previous === undefined) w.removeAttr(span);
    else w.edits.replace(span.valueStart, span.valueEnd, escapeAttr(a.previous, span.quote));
    w.changes.push({ kind: 'nic-attr', nic: iface.label, attr: a.name, from: a.value, ...(a.previous === undefined ? {} : { to: a.previous }) });
  }
  if (rec.driverCreated) w.warnings.push(`${iface.label}: kept the <driver> element enable created, it now holds other settings`);
}

/** Each `<interface>`: its alias, MAC, model and rss setting. Pure. */
export function interfacesOf(xml: string): Array<Pick<InterfaceView, 'alias' | 'mac' | 'model' | 'rss'>> {
  return readDomain(SourceDoc.parse(xml)).interfaces.map(({ alias, mac, model, rss }) => ({ alias, mac, model, rss }));
}

/**
 * The XML with `rss='on'` on the interfaces with these MACs (lowercase) that say nothing of rss:
 * what a migration must carry for NICs the host-wide policy gave rss, so the QEMU on the
 * destination has the same virtio features whatever that host's policy. Minimal edit. Pure.
 */
export function withRssOn(xml: string, macs: ReadonlySet<string>): DisableResult {
  const src = SourceDoc.parse(xml);
  const view = readDomain(src);
  const w = new Writer(src);
  for (const iface of view.interfaces) {
    if (!iface.mac || !macs.has(iface.mac.toLowerCase()) || iface.rss !== undefined) continue;
    if (iface.driver) {
      w.setAttr(iface.driver, 'rss', 'on');
    } else {
      const model = firstChild(iface.el, 'model');
      if (!model) continue;
      w.edits.insert(w.src.span(model).end, w.lead(model, '') + `<driver rss=${w.quote}on${w.quote}/>`);
    }
    w.changes.push({ kind: 'nic-attr', nic: iface.label, attr: 'rss', to: 'on' });
  }
  const out = w.edits.apply(xml);
  readDomain(SourceDoc.parse(out));
  return { xml: out, changes: w.changes, warnings: w.warnings };
}

/**
 * The domain as it can run where the wrapper is not (a host without virt-ebpf): `<emulator>`
 * back to the real QEMU, nothing else. The devices stay exactly as they are (rss, queues): a
 * migration or restore carries the device state, and QEMU refuses a stream whose virtio
 * features differ. Our metadata stays too, so `enable` can later tell what it changed; with the
 * emulator no longer the wrapper, the domain counts as not enabled. Pure.
 */
export function withoutWrapper(xml: string): DisableResult {
  const src = SourceDoc.parse(xml);
  const view = readDomain(src);
  const cfg = view.config;
  if (!cfg || view.emulatorPath !== cfg.emulator.wrapper) return { xml, changes: [], warnings: [] };
  const w = new Writer(src);
  if (cfg.emulator.elementCreated) {
    w.removeElement(view.emulator!);
    w.changes.push({ kind: 'emulator', from: cfg.emulator.wrapper });
  } else {
    w.setText(view.emulator!, cfg.emulator.original);
    w.changes.push({ kind: 'emulator', from: cfg.emulator.wrapper, to: cfg.emulator.original });
  }
  const out = w.edits.apply(xml);
  readDomain(SourceDoc.parse(out));
  return { xml: out, changes: w.changes, warnings: w.warnings };
}

/** The RSS NICs of a domain, for the hook and the wrapper. */
export function rssNics(xml: string): RssNic[] {
  return rssNicsOf(readDomain(SourceDoc.parse(xml)));
}

function rssNicsOf(view: DomainView): RssNic[] {
  return view.interfaces
    .filter((i) => i.rss === 'on' && i.unsupported === undefined)
    .map((i) => {
      const q = queueCount(i.queues);
      return {
        index: i.index,
        ...(i.mac !== undefined ? { mac: i.mac } : {}),
        ...(i.alias !== undefined ? { alias: i.alias } : {}),
        type: i.type,
        queues: q === undefined || Number.isNaN(q) ? 1 : q,
      };
    });
}

/** Our metadata as an object, or null when the domain was never enabled. */
export function readConfig(xml: string): XmlConfig | null {
  return readDomain(SourceDoc.parse(xml)).config ?? null;
}

/** True when our metadata is present and `<emulator>` still is the wrapper it recorded. */
export function isEnabled(xml: string): boolean {
  return enabledView(readDomain(SourceDoc.parse(xml)));
}

function enabledView(view: DomainView): boolean {
  return view.config !== undefined && view.emulatorPath === view.config.emulator.wrapper;
}

/** isEnabled, readConfig and rssNics from one parse (the hook's prepare runs inside `virsh start`). */
export function domainFacts(xml: string): { enabled: boolean; config: XmlConfig | null; rssNics: RssNic[]; hostWideOff: boolean } {
  const view = readDomain(SourceDoc.parse(xml));
  return { enabled: enabledView(view), config: view.config ?? null, rssNics: rssNicsOf(view), hostWideOff: hostWideOff(view) };
}

/**
 * The domain's opt-out of the host-wide mode: `<virt-ebpf:host-wide mode="off"/>` in its
 * `<metadata>` (in our namespace, beside or without our config).
 */
function hostWideOff(view: DomainView): boolean {
  if (!view.metadata) return false;
  return childElements(view.metadata, 'host-wide', XML_NAMESPACE).some((el) => el.getAttribute('mode') === 'off');
}

/** The warnings of a command, one line each, for stderr (xml enable, enable, define). */
export function warningLines(warnings: readonly string[]): string {
  return warnings.map((w) => `virt-ebpf: warning: ${w}\n`).join('');
}
