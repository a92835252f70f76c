/**
 * The C header of what the shims share with TypeScript (src/shims/constants.ts), printed on
 * stdout: `node dist/src/shims/header.js > vebpf-constants.h` (scripts/build-shims.sh). Pure
 * rendering; every value comes from the constants module.
 */
import { BROKER_REMEDY, BROKER_SOCKET, CONFIG_FILE, DOMAIN_STATE_DIR, FD_MARKER, ARGV_MARKERS, LIMITS, OPS, PLAN_LINES, WARM_LINES, RSS_FDS_PER_CONTEXT, RSS_REFUSAL_PROPERTY, SHIM_SO, XML_NAMESPACE } from './constants';

/** A C string literal of s (the constants are ASCII; anything else is escaped). */
function cString(s: string): string {
  return `"${[...Buffer.from(s, 'utf8')].map((b) => (b === 0x22 || b === 0x5c ? `\\${String.fromCharCode(b)}` : b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\${b.toString(8).padStart(3, '0')}`)).join('')}"`;
}

function macro(name: string): string {
  return `VEBPF_${name.replace(/([a-z])([A-Z])/g, '$1_$2').toUpperCase()}`;
}

export function renderHeader(): string {
  const lines = [
    '/* Generated from src/shims/constants.ts by src/shims/header.ts at build time: do not edit. */',
    '#ifndef VEBPF_CONSTANTS_H',
    '#define VEBPF_CONSTANTS_H',
    `#define VEBPF_BROKER_SOCKET ${cString(BROKER_SOCKET)}`,
    `#define VEBPF_STATE_DIR ${cString(DOMAIN_STATE_DIR)}`,
    `#define VEBPF_CONFIG ${cString(CONFIG_FILE)}`,
    `#define VEBPF_XMLNS ${cString(XML_NAMESPACE)}`,
    `#define VEBPF_FD_MARK ${cString(FD_MARKER)}`,
    `#define VEBPF_REMEDY ${cString(BROKER_REMEDY)}`,
    `#define VEBPF_SHIM_SO ${cString(SHIM_SO)}`,
    `#define VEBPF_RSS_REFUSAL_PROPERTY ${cString(RSS_REFUSAL_PROPERTY)}`,
    `#define VEBPF_RSS_FDS_PER_CONTEXT ${RSS_FDS_PER_CONTEXT}`,
    `#define VEBPF_ARGV_MARKERS { ${ARGV_MARKERS.map(cString).join(', ')} }`,
    `#define VEBPF_PLAN_LINES { ${PLAN_LINES.map(([cmd, marker]) => `{ ${cString(cmd)}, ${cString(marker)} }`).join(', ')} }`,
    `#define VEBPF_WARM_LINES { ${WARM_LINES.map(cString).join(', ')} }`,
    ...Object.entries(OPS).map(([k, v]) => `#define ${macro(`op_${k}`)} ${cString(v)}`),
    ...Object.entries(LIMITS).map(([k, v]) => `#define ${macro(k)} ${v}`),
    '#endif',
    '',
  ];
  return lines.join('\n');
}

if (require.main === module) process.stdout.write(renderHeader());
