/**
 * Emulator capabilities: find a QEMU, probe it (or trust the cache while the binary is
 * unchanged), decide which eBPF RSS protocol and device property it supports.
 */
export { probeEmulator, DEFAULT_PROBE_TIMEOUT_MS } from './probe';
export type { ProbeOptions, ProbeResult } from './probe';
export { decideCaps, decideProperty, sourceCommand, capsShapeProblem, assertSupported, rssObjectBytes, versionString, BASE_PROBE_COMMANDS, RSS_DEVICE, FALLBACK_RSS_DEVICE } from './caps';
export type { EmulatorCaps, BinaryIdentity, ProbeTranscript, QmpExchange, RssProtocol, RssProperty } from './caps';
export { resolveEmulatorPath, binaryIdentity, sameIdentity, listEmulatorsOnPath } from './identity';
export { DEFAULT_CACHE_DIR, CACHE_FORMAT, cacheFile, readCache, writeCache } from './cache';
export { PROBE_ARGS } from './launch';
export { formatProbeTable } from './table';
export type { ProbeTableRow, ProbeFailureRow } from './table';
