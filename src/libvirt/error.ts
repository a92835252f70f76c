/**
 * libvirt failures as VirtEbpfError('LIBVIRT_ERROR'): libvirt's own message, and a remedy
 * chosen from its error number and what we were doing. Pure, so the choice is unit-tested.
 */
import { VirtEbpfError } from '../errors';
import type { LastError } from './ffi';

/** The virErrorNumber values we give their own remedy (libvirt's virterror.h). */
export const VIR_ERR = {
  NO_CONNECT: 5,
  XML_ERROR: 27,
  DOM_EXIST: 28,
  OPERATION_DENIED: 29,
  XML_DETAIL: 35,
  SYSTEM_ERROR: 38,
  RPC: 39,
  NO_DOMAIN: 42,
  AUTH_FAILED: 45,
  OPERATION_INVALID: 55,
  CONFIG_UNSUPPORTED: 67,
  AUTH_CANCELLED: 79,
  ACCESS_DENIED: 88,
  XML_INVALID_SCHEMA: 92,
  AUTH_UNAVAILABLE: 94,
  MULTIPLE_DOMAINS: 110,
} as const;

/** What we were doing when libvirt failed; it picks the remedy. */
export type LibvirtOp =
  | { kind: 'connect'; uri: string }
  | { kind: 'lookup'; uri: string; domain: string }
  | { kind: 'define'; uri: string; domain?: string }
  | { kind: 'domain'; uri: string; domain: string; call: string }
  | { kind: 'connection'; uri: string; call: string };

const DENIED: readonly number[] = [VIR_ERR.OPERATION_DENIED, VIR_ERR.AUTH_FAILED, VIR_ERR.AUTH_CANCELLED, VIR_ERR.ACCESS_DENIED, VIR_ERR.AUTH_UNAVAILABLE];
const XML_REJECTED: readonly number[] = [VIR_ERR.XML_ERROR, VIR_ERR.XML_DETAIL, VIR_ERR.CONFIG_UNSUPPORTED, VIR_ERR.XML_INVALID_SCHEMA];

function describe(op: LibvirtOp): string {
  switch (op.kind) {
    case 'connect':
      return `cannot connect to libvirt at ${op.uri}`;
    case 'lookup':
      return `cannot find domain ${op.domain}`;
    case 'define':
      return op.domain === undefined ? 'libvirt refused the domain definition' : `libvirt refused the new definition of ${op.domain}`;
    case 'domain':
      return `${op.call} on domain ${op.domain} failed`;
    case 'connection':
      return `${op.call} failed`;
  }
}

function remedyFor(op: LibvirtOp, err: LastError): string {
  const virsh = `virsh -c ${op.uri}`;
  if (DENIED.includes(err.code)) return `run as root (or as a user libvirt's polkit rules allow) and check with \`${virsh} list\``;
  if (err.code === VIR_ERR.NO_DOMAIN && 'domain' in op && op.domain !== undefined) return `no domain named ${op.domain} (${virsh} list --all)`;
  if (err.code === VIR_ERR.MULTIPLE_DOMAINS) return `name the domain by its UUID (${virsh} list --all --uuid)`;
  switch (op.kind) {
    case 'connect':
      return `is libvirtd running? (${virsh} list); set LIBVIRT_DEFAULT_URI or --connect for another URI`;
    case 'define': {
      const kept = op.domain === undefined ? 'any previous definition is unchanged' : `libvirt kept the previous definition of ${op.domain}`;
      if (XML_REJECTED.includes(err.code)) return `${kept}; fix the XML (virt-xml-validate FILE domain shows where)`;
      if (err.code === VIR_ERR.DOM_EXIST) return `${kept}; another domain already uses this name or UUID (${virsh} list --all --uuid)`;
      return `${kept}; see libvirt's message, and libvirtd's log (journalctl -u libvirtd)`;
    }
    default:
      if (err.code === VIR_ERR.RPC || err.code === VIR_ERR.NO_CONNECT) return `the connection to libvirtd broke; is it running? (${virsh} list)`;
      return `see libvirtd's log (journalctl -u libvirtd) for the cause`;
  }
}

export function libvirtError(op: LibvirtOp, err: LastError, cause?: unknown): VirtEbpfError {
  const why = err.message.trim() || 'unknown libvirt error';
  return new VirtEbpfError('LIBVIRT_ERROR', `${describe(op)}: ${why}`, {
    remedy: remedyFor(op, err),
    fields: { virCode: err.code, virDomain: err.domain, virMessage: why, uri: op.uri, ...('domain' in op && op.domain !== undefined ? { domain: op.domain } : {}) },
    ...(cause !== undefined ? { cause } : {}),
  });
}
