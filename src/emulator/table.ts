/**
 * The `probe` CLI's table, as a pure function of probe results (the CLI only prints it).
 */
import type { EmulatorCaps } from './caps';
import { versionString } from './caps';

/** An emulator whose probe failed outright (not QEMU, timed out, …). */
export interface ProbeFailureRow {
  path: string;
  error: { code: string; message: string };
}

export type ProbeTableRow = EmulatorCaps | ProbeFailureRow;

const HEADER = ['EMULATOR', 'VERSION', 'PROTOCOL', 'PROPERTY', 'STATUS'] as const;

function cells(r: ProbeTableRow): string[] {
  if ('error' in r) return [r.path, '-', '-', '-', `error ${r.error.code}: ${r.error.message}`];
  return [
    r.path,
    versionString(r.version),
    r.protocol ?? '-',
    r.property ? `${r.property.name} (${r.property.type})` : '-',
    r.supported ? 'supported' : `unsupported: ${r.reason ?? 'unknown reason'}`,
  ];
}

/** Aligned columns, two spaces apart, no trailing newline; the last column (status/reason) is never padded or cut. */
export function formatProbeTable(rows: readonly ProbeTableRow[]): string {
  const table = [[...HEADER], ...rows.map(cells)].map((row) => row.map((c) => c.replace(/\s+/g, ' ')));
  const widths = HEADER.map((_, i) => Math.max(...table.map((row) => row[i].length)));
  return table.map((row) => row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]))).join('  ')).join('\n');
}
