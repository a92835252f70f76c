/**
 * libvirt through its C API (koffi over libvirt.so.0), and the domain commands built on it.
 * For the CLI only: a libvirt hook must never call back into libvirt.
 */
export { openConnection, withConnection, defaultUri, formatLibVersion, DEFAULT_URI, DEFINITION_XML, Connection, Domain } from './connection';
export type { XmlOptions, OpenOptions, GuestKind } from './connection';
export { libvirtError, VIR_ERR } from './error';
export type { LibvirtOp } from './error';
export { enableDomain, disableDomain, defineFile, guestOf } from './commands';
export type { EnableCommandOptions, DefineCommandOptions, DomainOutcome } from './commands';
export { runDomainCommand, parseDomainCommand } from './cli';
export { DOMAIN_COMMAND_USAGE, DOMAIN_COMMAND_SUMMARY } from './usage';
export type { DomainCommand } from './cli';
export { enabledDomains, enabledDomainsOn } from './enabled';
export { lineDiff } from './diff';
