/**
 * libvirt's C API through koffi (libvirt.so.0 from the libvirt0 package; no native addon to
 * build). Loaded on first use, so commands that never talk to libvirt do not need it.
 *
 * Ownership rules this file relies on (libvirt's API documentation):
 * - virConnectPtr / virDomainPtr are reference-counted handles: every one we get is released
 *   exactly once (virConnectClose / virDomainFree), by the classes in connection.ts.
 * - char* from virDomainGetXMLDesc and virConnectGetDomainCapabilities belong
 *   to the caller: the `…_heapstr` disposable type decodes them and frees them with free().
 * - virConnectListAllDomains allocates the array; we free each element and then the array.
 * - virGetLastError returns thread-local storage owned by libvirt: decode, never free. koffi's
 *   synchronous calls run on the main thread, so "last error" is the one of our last call.
 */
import type * as Koffi from 'koffi';
import koffi from '../sys/koffi';
import { VirtEbpfError } from '../errors';

export const LIBVIRT_SONAME = 'libvirt.so.0';

export const VIR_DOMAIN_XML_SECURE = 1;
export const VIR_DOMAIN_XML_INACTIVE = 2;
export const VIR_CONNECT_LIST_DOMAINS_ACTIVE = 1;
export const VIR_CONNECT_LIST_DOMAINS_INACTIVE = 2;
/** VIR_UUID_STRING_BUFLEN: 36 characters and the NUL. */
const UUID_BUFLEN = 37;

/** An opaque pointer as koffi hands it back (null for C NULL). */
export type Ptr = unknown;

/** What virGetLastError says about the last failed call of this thread. */
export interface LastError {
  /** virErrorNumber (e.g. 42 = VIR_ERR_NO_DOMAIN) */
  code: number;
  /** virErrorDomain: the part of libvirt that raised it */
  domain: number;
  message: string;
}

export interface Bindings {
  connectOpen(uri: string): Ptr;
  connectClose(conn: Ptr): number;
  connectGetLibVersion(conn: Ptr, out: [number]): number;
  connectListAllDomains(conn: Ptr, flags: number): Ptr[] | null;
  connectGetDomainCapabilities(conn: Ptr, emulator: string | null, arch: string | null, machine: string | null, virttype: string | null): string | null;
  domainLookupByName(conn: Ptr, name: string): Ptr;
  domainLookupByUUIDString(conn: Ptr, uuid: string): Ptr;
  domainGetXMLDesc(dom: Ptr, flags: number): string | null;
  domainDefineXML(conn: Ptr, xml: string): Ptr;
  domainIsActive(dom: Ptr): number;
  domainIsPersistent(dom: Ptr): number;
  domainGetName(dom: Ptr): string | null;
  domainGetUUIDString(dom: Ptr): string | null;
  domainFree(dom: Ptr): number;
  lastError(): LastError;
}

const loaded = new Map<string, Bindings>();
/**
 * The no-op error callback. Without it libvirt prints every error to stderr ("libvirt: QEMU
 * Driver error : …") before we can turn it into our one-line error. Registered once per process
 * and never unregistered: libvirt keeps calling the pointer for as long as the process lives.
 */
let quietHandler: Koffi.IKoffiRegisteredCallback | undefined;

function bind(soname: string): Bindings {
  let lib: Koffi.IKoffiLib;
  try {
    lib = koffi.load(soname);
  } catch (e) {
    throw new VirtEbpfError('LIBVIRT_MISSING', `cannot load ${soname}: ${(e as Error).message.split('\n')[0]}`, {
      remedy: 'install the libvirt client library (apt-get install libvirt0)',
      cause: e,
    });
  }
  const f = (sig: string): Koffi.KoffiFunction => {
    try {
      return lib.func(sig);
    } catch (e) {
      throw new VirtEbpfError('LIBVIRT_MISSING', `${soname} lacks a function virt-ebpf needs (${sig}): too old?`, {
        remedy: 'install libvirt 1.2.14 or newer (apt-get install libvirt0)',
        cause: e,
      });
    }
  };
  // koffi's type registry is process-wide: name the types per soname.
  const tag = `vebpf_virt${loaded.size}`;
  const conn = `${tag}_conn *`;
  const dom = `${tag}_dom *`;
  koffi.opaque(`${tag}_conn`);
  koffi.opaque(`${tag}_dom`);
  // Only the leading fields of struct _virError; we read, libvirt owns it.
  koffi.struct(`${tag}_error`, { code: 'int', domain: 'int', message: 'const char *' });
  // A char * the caller owns: koffi decodes it, then frees it with free().
  koffi.disposable(`${tag}_heapstr`, 'str');
  const errorFunc = koffi.proto(`void ${tag}_errfn(void *userData, void *error)`);

  const setErrorFunc = f(`void virSetErrorFunc(void *userData, ${tag}_errfn *handler)`);
  if (!quietHandler) {
    quietHandler = koffi.register(() => {
      /* errors are read with virGetLastError after the failing call */
    }, koffi.pointer(errorFunc));
  }
  setErrorFunc(null, quietHandler);

  const connectOpen = f(`${conn} virConnectOpen(const char *uri)`);
  const connectClose = f(`int virConnectClose(${conn} c)`);
  const connectGetLibVersion = f(`int virConnectGetLibVersion(${conn} c, _Out_ unsigned long *libVer)`);
  const connectListAllDomains = f(`int virConnectListAllDomains(${conn} c, _Out_ ${dom} **domains, unsigned int flags)`);
  const connectGetDomainCapabilities = f(
    `${tag}_heapstr virConnectGetDomainCapabilities(${conn} c, const char *emulatorbin, const char *arch, const char *machine, const char *virttype, unsigned int flags)`,
  );
  const domainLookupByName = f(`${dom} virDomainLookupByName(${conn} c, const char *name)`);
  const domainLookupByUUIDString = f(`${dom} virDomainLookupByUUIDString(${conn} c, const char *uuid)`);
  const domainGetXMLDesc = f(`${tag}_heapstr virDomainGetXMLDesc(${dom} d, unsigned int flags)`);
  const domainDefineXML = f(`${dom} virDomainDefineXML(${conn} c, const char *xml)`);
  const domainIsActive = f(`int virDomainIsActive(${dom} d)`);
  const domainIsPersistent = f(`int virDomainIsPersistent(${dom} d)`);
  const domainGetName = f(`const char *virDomainGetName(${dom} d)`);
  const domainGetUUIDString = f(`int virDomainGetUUIDString(${dom} d, _Out_ uint8_t *buf)`);
  const domainFree = f(`int virDomainFree(${dom} d)`);
  const getLastError = f(`${tag}_error *virGetLastError(void)`);
  const getLastErrorMessage = f('const char *virGetLastErrorMessage(void)');
  // The process's free (the allocator libvirt's malloc is), not necessarily glibc's own.
  const freeFn = koffi.load(null).func('void free(void *p)');

  return {
    connectOpen: (uri) => connectOpen(uri),
    connectClose: (c) => Number(connectClose(c)),
    connectGetLibVersion: (c, out) => Number(connectGetLibVersion(c, out)),
    connectListAllDomains(c, flags) {
      const out: [Ptr] = [null];
      const n = Number(connectListAllDomains(c, out, flags));
      if (n < 0) return null;
      if (out[0] === null) return [];
      // The handles become the caller's; the array holding them is ours to free.
      const doms = n === 0 ? [] : (koffi.decode(out[0], dom, n) as Ptr[]);
      freeFn(out[0]);
      return doms;
    },
    connectGetDomainCapabilities: (c, emulator, arch, machine, virttype) => connectGetDomainCapabilities(c, emulator, arch, machine, virttype, 0) as string | null,
    domainLookupByName: (c, name) => domainLookupByName(c, name),
    domainLookupByUUIDString: (c, uuid) => domainLookupByUUIDString(c, uuid),
    domainGetXMLDesc: (d, flags) => domainGetXMLDesc(d, flags) as string | null,
    domainDefineXML: (c, xml) => domainDefineXML(c, xml),
    domainIsActive: (d) => Number(domainIsActive(d)),
    domainIsPersistent: (d) => Number(domainIsPersistent(d)),
    domainGetName: (d) => domainGetName(d) as string | null,
    domainGetUUIDString(d) {
      const buf = Buffer.alloc(UUID_BUFLEN);
      if (Number(domainGetUUIDString(d, buf)) < 0) return null;
      const end = buf.indexOf(0);
      return buf.toString('latin1', 0, end < 0 ? buf.length : end);
    },
    domainFree: (d) => Number(domainFree(d)),
    lastError() {
      const p = getLastError();
      if (p === null) return { code: 0, domain: 0, message: String(getLastErrorMessage() ?? 'unknown libvirt error') };
      const e = koffi.decode(p, `${tag}_error`) as { code: number; domain: number; message: string | null };
      return { code: e.code, domain: e.domain, message: e.message ?? String(getLastErrorMessage() ?? 'unknown libvirt error') };
    },
  };
}

/** The bindings, loading libvirt on first use. Throws LIBVIRT_MISSING if it is not installed. */
export function libvirt(soname = LIBVIRT_SONAME): Bindings {
  let b = loaded.get(soname);
  if (!b) {
    b = bind(soname);
    loaded.set(soname, b);
  }
  return b;
}
