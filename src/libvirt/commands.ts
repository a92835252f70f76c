/**
 * enable / disable / define against a live libvirt: read the persistent definition, run the pure
 * transformer (src/xml) over it, and define the result. The edges are here; the decisions are
 * the transformer's.
 *
 * - We read the INACTIVE definition with the SECURE flag: that is exactly what libvirt stores,
 *   secrets included, so defining our output back loses nothing.
 * - No change, no define: libvirt's config file keeps its bytes and mtime.
 * - A running domain keeps running as it is; the new definition applies at its next start.
 * - If libvirt refuses, its previous definition stays (it validates before it replaces); the
 *   error carries a diff of what we asked for.
 */
import { readFileSync } from 'node:fs';
import { DOMParser } from '@xmldom/xmldom';
import { isVirtEbpfError, VirtEbpfError } from '../errors';
import {
  DEFAULT_WRAPPER_DIR,
  describeChange,
  disableDomain as disableXml,
  enableDomain as enableXml,
  isEnabled,
  readConfig,
  wrapperInDir,
  type Change,
  type Policy,
  type RssNic,
} from '../xml';
import { DEFINITION_XML, type Connection, type Domain, type GuestKind } from './connection';
import { lineDiff } from './diff';
import { libvirtError, VIR_ERR } from './error';

export interface EnableCommandOptions {
  /** Where the wrappers are (default /usr/libexec/virt-ebpf): the wrapper of /x/qemu-system-y is DIR/qemu-system-y. */
  wrapperDir?: string;
  /** Turn rss on for every virtio NIC on a tap backend that has no rss setting. */
  allVirtio?: boolean;
  /** Queue count for the NICs allVirtio turns on. */
  queues?: number;
  /** What the wrapper does without eBPF fds (default strict; an enabled domain keeps its own). */
  policy?: Policy;
  /** Interpose on the monitor so hot-plugged RSS NICs get eBPF fds (default on; an enabled domain keeps its own). */
  hotplug?: 'on' | 'off';
}

export interface DefineCommandOptions extends EnableCommandOptions {
  /** For a file without `<emulator>`: the emulator to wrap. Default: the one libvirt would pick (domcapabilities). */
  defaultEmulator?: string;
}

export interface DomainOutcome {
  domain: string;
  uuid: string;
  /** What happened to the persistent definition. */
  action: 'enabled' | 'disabled' | 'defined' | 'unchanged';
  /** Whether we called virDomainDefineXML. */
  defined: boolean;
  /** The domain was running: the change applies at its next start. */
  running: boolean;
  changes: Change[];
  warnings: string[];
  /** The RSS NICs that will get eBPF fds (enable, define). */
  nics: RssNic[];
  /** What a user reads, one line each. */
  lines: string[];
  /** The definition before (for define: the file) and as libvirt holds it now. */
  before: string;
  after: string;
}

function transformOptions(opts: EnableCommandOptions) {
  return {
    wrapperFor: wrapperInDir(opts.wrapperDir ?? DEFAULT_WRAPPER_DIR),
    ...(opts.allVirtio !== undefined ? { allVirtio: opts.allVirtio } : {}),
    ...(opts.queues !== undefined ? { queues: opts.queues } : {}),
    ...(opts.policy !== undefined ? { policy: opts.policy } : {}),
    ...(opts.hotplug !== undefined ? { hotplug: opts.hotplug } : {}),
  };
}

function nicLine(n: RssNic): string {
  const id = n.alias ?? (n.mac !== undefined ? `mac ${n.mac}` : `interface #${n.index + 1}`);
  return `${id} (${n.type}, ${n.queues} queue${n.queues === 1 ? '' : 's'})`;
}

/** What changed and which NICs get eBPF RSS (warnings go to stderr: see warningLines). */
function detailLines(changes: Change[], nics?: RssNic[]): string[] {
  return [...changes.map((c) => `  changed: ${describeChange(c)}`), ...(nics && nics.length ? [`  eBPF RSS NICs: ${nics.map(nicLine).join(', ')}`] : [])];
}

const nextStart = (name: string) => `${name} is running: the new definition applies at its next start (the running QEMU is untouched)`;

/** The persistent definition of a domain; refuses transient ones (defining them would make them persistent). */
function definitionOf(dom: Domain): string {
  if (!dom.isPersistent()) {
    throw new VirtEbpfError('XML_UNSUPPORTED_DOMAIN', `${dom.name} is transient: it has no persistent definition to change`, {
      remedy: `make it persistent first (virsh dumpxml ${dom.name} > ${dom.name}.xml; virt-ebpf define ${dom.name}.xml)`,
    });
  }
  return dom.xml(DEFINITION_XML);
}

/**
 * Defines `after`; on refusal, one LIBVIRT_ERROR naming the domain, libvirt's reason, and the
 * diff from `before` as evidence. `existed` says whether a previous definition was kept.
 */
function defineOrExplain(conn: Connection, name: string, existed: boolean, before: string, after: string, labels: { before: string; after: string }): Domain {
  try {
    return conn.defineXML(after);
  } catch (e) {
    if (!isVirtEbpfError(e, 'LIBVIRT_ERROR')) throw e;
    const why = String(e.fields.virMessage ?? e.message);
    const kept = existed ? `libvirt kept the previous definition of ${name}` : `${name} was not defined`;
    const wrapper = readConfig(after)?.emulator.wrapper;
    let remedy = existed
      ? libvirtError({ kind: 'define', uri: conn.uri, domain: name }, { code: Number(e.fields.virCode), domain: Number(e.fields.virDomain), message: why }).remedy
      : `${kept}; ${e.remedy.replace(/^any previous definition is unchanged; /, '')}`;
    // libvirt probes the emulator at define time: "Cannot check QEMU binary PATH: No such file or directory".
    if (wrapper !== undefined && why.includes(wrapper)) {
      remedy = `${kept}; the wrapper ${wrapper} is missing or not runnable: run \`virt-ebpf install\` (it wraps the installed QEMUs), or name the wrapper directory with --wrapper-dir`;
    }
    throw new VirtEbpfError('LIBVIRT_ERROR', `defining ${name} failed: ${why}`, {
      remedy,
      detail: `what was sent to libvirt, against ${labels.before}:\n${lineDiff(before, after, labels)}`,
      cause: e,
      fields: { ...e.fields, domain: name },
    });
  }
}

/** Re-reads what libvirt now stores and checks it kept what we sent where it matters. */
function storedDefinition(dom: Domain, wantEnabled: boolean, warnings: string[]): string {
  const after = dom.xml(DEFINITION_XML);
  if (isEnabled(after) !== wantEnabled) {
    warnings.push(`libvirt stored ${dom.name} ${wantEnabled ? 'without' : 'with'} our metadata/wrapper; check \`virsh dumpxml --inactive ${dom.name}\``);
  }
  return after;
}

/** `virt-ebpf enable DOMAIN`: point its persistent definition at the wrapper (idempotent). */
export function enableDomain(conn: Connection, nameOrUuid: string, opts: EnableCommandOptions = {}): DomainOutcome {
  const dom = conn.domain(nameOrUuid);
  try {
    const before = definitionOf(dom);
    const running = dom.isActive();
    const r = enableXml(before, transformOptions(opts));
    const base = { domain: dom.name, uuid: dom.uuid, running, changes: r.changes, warnings: r.warnings, nics: r.nics, before };
    if (r.changes.length === 0) {
      return { ...base, action: 'unchanged', defined: false, after: before, lines: [`${dom.name}: eBPF RSS is already enabled; definition unchanged`, ...detailLines([], r.nics)] };
    }
    const defined = defineOrExplain(conn, dom.name, true, before, r.xml, { before: `${dom.name} (current definition)`, after: `${dom.name} (with eBPF RSS)` });
    try {
      const warnings = [...r.warnings];
      const after = storedDefinition(defined, true, warnings);
      const lines = [`${dom.name}: eBPF RSS enabled`, ...detailLines(r.changes, r.nics), ...(running ? [nextStart(dom.name)] : [])];
      return { ...base, warnings, action: 'enabled', defined: true, after, lines };
    } finally {
      defined.free();
    }
  } finally {
    dom.free();
  }
}

/** `virt-ebpf disable DOMAIN`: undo exactly what enable recorded (idempotent). */
export function disableDomain(conn: Connection, nameOrUuid: string): DomainOutcome {
  const dom = conn.domain(nameOrUuid);
  try {
    const before = definitionOf(dom);
    const running = dom.isActive();
    const r = disableXml(before);
    const base = { domain: dom.name, uuid: dom.uuid, running, changes: r.changes, warnings: r.warnings, nics: [], before };
    if (r.changes.length === 0) {
      return { ...base, action: 'unchanged', defined: false, after: before, lines: [`${dom.name}: eBPF RSS is not enabled; definition unchanged`, ...detailLines([])] };
    }
    const defined = defineOrExplain(conn, dom.name, true, before, r.xml, { before: `${dom.name} (current definition)`, after: `${dom.name} (without eBPF RSS)` });
    try {
      const warnings = [...r.warnings];
      const after = storedDefinition(defined, false, warnings);
      const lines = [`${dom.name}: eBPF RSS disabled`, ...detailLines(r.changes), ...(running ? [nextStart(dom.name)] : [])];
      return { ...base, warnings, action: 'disabled', defined: true, after, lines };
    } finally {
      defined.free();
    }
  } finally {
    dom.free();
  }
}

/** What define needs to know about a domain XML before transforming it; undefined if it does not parse (the transformer then says why). */
export function guestOf(xml: string): (GuestKind & { name?: string; hasEmulator: boolean }) | undefined {
  let root;
  try {
    root = new DOMParser({
      onError: (level, message) => {
        if (level !== 'warning') throw new Error(message);
      },
    }).parseFromString(xml, 'application/xml').documentElement;
  } catch {
    return undefined;
  }
  if (!root || root.nodeName !== 'domain') return undefined;
  const child = (parent: typeof root, name: string) => {
    for (let n = parent.firstChild; n; n = n.nextSibling) if (n.nodeType === 1 && n.nodeName === name) return n as typeof root;
    return undefined;
  };
  const os = child(root, 'os');
  const type = os && child(os, 'type');
  const devices = child(root, 'devices');
  const attr = (el: typeof root | undefined, name: string) => (el && el.hasAttribute(name) ? el.getAttribute(name)! : undefined);
  const name = child(root, 'name')?.textContent?.trim();
  return {
    virtType: attr(root, 'type') ?? 'qemu',
    ...(attr(type, 'arch') !== undefined ? { arch: attr(type, 'arch') } : {}),
    ...(attr(type, 'machine') !== undefined ? { machine: attr(type, 'machine') } : {}),
    ...(name ? { name } : {}),
    hasEmulator: devices !== undefined && child(devices, 'emulator') !== undefined,
  };
}

/** Whether a domain of this name exists (a lookup that fails for another reason is an error). */
function exists(conn: Connection, name: string): boolean {
  try {
    conn.domain(name).free();
    return true;
  } catch (e) {
    if (isVirtEbpfError(e, 'LIBVIRT_ERROR') && e.fields.virCode === VIR_ERR.NO_DOMAIN) return false;
    throw e;
  }
}

/**
 * `virt-ebpf define FILE`: enable eBPF RSS on the XML in FILE and define it, so a new domain
 * gets it in one step. Like `virsh define`, an existing domain with the same name/UUID gets the
 * new definition.
 */
export function defineFile(conn: Connection, path: string, opts: DefineCommandOptions = {}): DomainOutcome {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new VirtEbpfError('USAGE', `cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, {
      remedy: 'pass a readable domain XML file',
      cause: e,
    });
  }
  const guest = guestOf(text);
  let defaultEmulator = opts.defaultEmulator;
  if (defaultEmulator === undefined && guest && !guest.hasEmulator) defaultEmulator = conn.defaultEmulator(guest);
  const r = enableXml(text, { ...transformOptions(opts), ...(defaultEmulator !== undefined ? { defaultEmulator } : {}) });
  const name = guest?.name ?? path;
  const existed = guest?.name !== undefined && exists(conn, guest.name);
  const dom = defineOrExplain(conn, name, existed, text, r.xml, { before: path, after: `${path} (with eBPF RSS)` });
  try {
    const warnings = [...r.warnings];
    const after = storedDefinition(dom, true, warnings);
    const running = dom.isActive();
    const lines = [
      existed ? `${dom.name}: definition replaced, with eBPF RSS enabled` : `${dom.name}: defined with eBPF RSS enabled`,
      ...detailLines(r.changes, r.nics),
      ...(running ? [nextStart(dom.name)] : []),
    ];
    return { domain: dom.name, uuid: dom.uuid, action: 'defined', defined: true, running, changes: r.changes, warnings, nics: r.nics, lines, before: text, after };
  } finally {
    dom.free();
  }
}
