/**
 * A libvirt connection and its domains as small owned objects over the raw bindings. Each
 * handle is released exactly once: a Domain by free(), and whatever is still open when its
 * Connection closes. Every failure is a VirtEbpfError('LIBVIRT_ERROR') carrying libvirt's message.
 *
 * Only for the CLI: a libvirt hook must never call back into libvirt (the daemon holds the
 * domain's lock while the hook runs, so a call from the hook can deadlock).
 */
import { VirtEbpfError } from '../errors';
import {
  libvirt,
  VIR_CONNECT_LIST_DOMAINS_ACTIVE,
  VIR_CONNECT_LIST_DOMAINS_INACTIVE,
  VIR_DOMAIN_XML_INACTIVE,
  VIR_DOMAIN_XML_SECURE,
  type Bindings,
  type Ptr,
} from './ffi';
import { libvirtError, VIR_ERR, type LibvirtOp } from './error';

/** What virsh connects to as root when nothing else is configured. */
export const DEFAULT_URI = 'qemu:///system';

/** The URI to use without an explicit one: LIBVIRT_DEFAULT_URI like virsh, else qemu:///system. */
export function defaultUri(env: NodeJS.ProcessEnv = process.env): string {
  return env.LIBVIRT_DEFAULT_URI || DEFAULT_URI;
}

const UUID_RE = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

export interface XmlOptions {
  /** The persistent definition (what the next start uses) instead of the live one. Default false. */
  inactive?: boolean;
  /** Include secrets such as graphics passwords; needed to redefine without losing them. Default false. */
  secure?: boolean;
}

export interface OpenOptions {
  /** Another libvirt library file (tests). */
  soname?: string;
}

/** The guest kind libvirt picks a default emulator for (`virsh domcapabilities`). */
export interface GuestKind {
  /** `<domain type>`: qemu, kvm, … */
  virtType: string;
  arch?: string;
  machine?: string;
}

/** libvirt's version number (major * 1 000 000 + minor * 1000 + micro) as text. */
export function formatLibVersion(n: number): string {
  return `${Math.floor(n / 1_000_000)}.${Math.floor(n / 1000) % 1000}.${n % 1000}`;
}

/** The emulator path of `virsh domcapabilities` output. */
export function domcapsEmulator(domcaps: string): string | undefined {
  const m = /<domainCapabilities>\s*<path>([^<]*)<\/path>/.exec(domcaps);
  if (!m) return undefined;
  return m[1].replace(/&(lt|gt|quot|apos|amp);/g, (_, e: string) => ({ lt: '<', gt: '>', quot: '"', apos: "'", amp: '&' })[e]!);
}

export class Domain {
  readonly name: string;
  readonly uuid: string;
  #ptr: Ptr;

  /** @internal Connection creates domains; the pointer becomes this object's. */
  constructor(
    private readonly conn: Connection,
    ptr: Ptr,
  ) {
    this.#ptr = ptr;
    const b = conn.bindings;
    const name = b.domainGetName(ptr);
    const uuid = b.domainGetUUIDString(ptr);
    if (name === null || uuid === null) {
      const err = b.lastError();
      b.domainFree(ptr);
      throw libvirtError({ kind: 'connection', uri: conn.uri, call: 'reading a domain name/UUID' }, err);
    }
    this.name = name;
    this.uuid = uuid;
  }

  get freed(): boolean {
    return this.#ptr === null;
  }

  private handle(): Ptr {
    if (this.#ptr === null) throw new Error(`domain ${this.name} used after free()`);
    return this.#ptr;
  }

  private fail(call: string): VirtEbpfError {
    return libvirtError({ kind: 'domain', uri: this.conn.uri, domain: this.name, call }, this.conn.bindings.lastError());
  }

  xml(opts: XmlOptions = {}): string {
    const flags = (opts.inactive ? VIR_DOMAIN_XML_INACTIVE : 0) | (opts.secure ? VIR_DOMAIN_XML_SECURE : 0);
    const xml = this.conn.bindings.domainGetXMLDesc(this.handle(), flags);
    if (xml === null) throw this.fail('virDomainGetXMLDesc');
    return xml;
  }

  isActive(): boolean {
    const r = this.conn.bindings.domainIsActive(this.handle());
    if (r < 0) throw this.fail('virDomainIsActive');
    return r === 1;
  }

  /** False for a transient domain (one that exists only while it runs). */
  isPersistent(): boolean {
    const r = this.conn.bindings.domainIsPersistent(this.handle());
    if (r < 0) throw this.fail('virDomainIsPersistent');
    return r === 1;
  }

  /** Releases the handle (not the domain). Idempotent. */
  free(): void {
    if (this.#ptr === null) return;
    const p = this.#ptr;
    this.#ptr = null;
    this.conn.forget(this);
    this.conn.bindings.domainFree(p);
  }
}

export class Connection {
  /** The URI this connection was opened with. */
  readonly uri: string;
  /** @internal */
  readonly bindings: Bindings;
  #ptr: Ptr;
  readonly #domains = new Set<Domain>();

  /** @internal use openConnection */
  constructor(uri: string, bindings: Bindings, ptr: Ptr) {
    this.uri = uri;
    this.bindings = bindings;
    this.#ptr = ptr;
  }

  get closed(): boolean {
    return this.#ptr === null;
  }

  private handle(): Ptr {
    if (this.#ptr === null) throw new Error(`libvirt connection to ${this.uri} used after close()`);
    return this.#ptr;
  }

  private fail(op: LibvirtOp): VirtEbpfError {
    return libvirtError(op, this.bindings.lastError());
  }

  private adopt(ptr: Ptr): Domain {
    const d = new Domain(this, ptr);
    this.#domains.add(d);
    return d;
  }

  /** @internal */
  forget(d: Domain): void {
    this.#domains.delete(d);
  }

  /** A domain by name or UUID (a UUID-shaped string that is no domain's UUID is tried as a name). */
  domain(nameOrUuid: string): Domain {
    const c = this.handle();
    if (UUID_RE.test(nameOrUuid)) {
      const p = this.bindings.domainLookupByUUIDString(c, nameOrUuid);
      if (p !== null) return this.adopt(p);
      const err = this.bindings.lastError();
      if (err.code !== VIR_ERR.NO_DOMAIN) throw libvirtError({ kind: 'lookup', uri: this.uri, domain: nameOrUuid }, err);
    }
    const p = this.bindings.domainLookupByName(c, nameOrUuid);
    if (p === null) throw this.fail({ kind: 'lookup', uri: this.uri, domain: nameOrUuid });
    return this.adopt(p);
  }

  /** All domains, or only running (`active: true`) or only defined-but-stopped (`active: false`) ones. */
  listDomains(opts: { active?: boolean } = {}): Domain[] {
    const flags = opts.active === undefined ? 0 : opts.active ? VIR_CONNECT_LIST_DOMAINS_ACTIVE : VIR_CONNECT_LIST_DOMAINS_INACTIVE;
    const ptrs = this.bindings.connectListAllDomains(this.handle(), flags);
    if (ptrs === null) throw this.fail({ kind: 'connection', uri: this.uri, call: 'listing domains' });
    const out: Domain[] = [];
    try {
      // A domain can vanish between the list and the name lookup; Domain's constructor frees its handle then.
      for (let i = 0; i < ptrs.length; i++) out.push(this.adopt(ptrs[i]));
    } catch (e) {
      for (const p of ptrs.slice(out.length + 1)) this.bindings.domainFree(p);
      for (const d of out) d.free();
      throw e;
    }
    return out;
  }

  /**
   * Defines (or redefines, matched by UUID or name) a persistent domain. When libvirt refuses,
   * the previous definition stays as it was: libvirt parses and validates before it replaces.
   */
  defineXML(xml: string): Domain {
    const p = this.bindings.domainDefineXML(this.handle(), xml);
    if (p === null) throw this.fail({ kind: 'define', uri: this.uri });
    return this.adopt(p);
  }

  /** The libvirt version of the daemon behind this connection (e.g. 11003000 for 11.3.0). */
  libVersion(): number {
    const out: [number] = [0];
    if (this.bindings.connectGetLibVersion(this.handle(), out) < 0) throw this.fail({ kind: 'connection', uri: this.uri, call: 'virConnectGetLibVersion' });
    return Number(out[0]);
  }

  /** The emulator libvirt uses for a domain of this kind that names none (domcapabilities `<path>`). */
  defaultEmulator(guest: GuestKind): string {
    const caps = this.bindings.connectGetDomainCapabilities(this.handle(), null, guest.arch ?? null, guest.machine ?? null, guest.virtType);
    if (caps === null) throw this.fail({ kind: 'connection', uri: this.uri, call: `virConnectGetDomainCapabilities (${guest.virtType}${guest.arch ? `, ${guest.arch}` : ''})` });
    const path = domcapsEmulator(caps);
    if (!path) {
      throw new VirtEbpfError('LIBVIRT_ERROR', 'libvirt named no default emulator in its domain capabilities', {
        remedy: 'add <emulator> to the domain XML, or pass --default-emulator',
        detail: caps,
      });
    }
    return path;
  }

  /** Frees the domains still open, then closes. Idempotent. */
  close(): void {
    if (this.#ptr === null) return;
    for (const d of [...this.#domains]) d.free();
    const p = this.#ptr;
    this.#ptr = null;
    this.bindings.connectClose(p);
  }
}

/** Opens a read-write connection: `uri`, else LIBVIRT_DEFAULT_URI, else qemu:///system. */
export function openConnection(uri?: string, opts: OpenOptions = {}): Connection {
  const target = uri ?? defaultUri();
  const b = libvirt(opts.soname);
  const p = b.connectOpen(target);
  if (p === null) throw libvirtError({ kind: 'connect', uri: target }, b.lastError());
  return new Connection(target, b, p);
}

/** Opens, runs `fn`, and always closes (freeing any domain `fn` left open). */
export function withConnection<T>(uri: string | undefined, fn: (conn: Connection) => T): T {
  const conn = openConnection(uri);
  try {
    return fn(conn);
  } finally {
    conn.close();
  }
}

/** Both XML flags needed to read a definition that can be defined back without loss. */
export const DEFINITION_XML: XmlOptions = { inactive: true, secure: true };
