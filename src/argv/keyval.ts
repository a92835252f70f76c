/**
 * QEMU's legacy `key=value,key=value` option syntax: `,,` is a literal comma, and a first
 * element without `=` is the implied key (the driver for -device, the type for -netdev).
 * Pure: parse to an ordered list, serialise back.
 */
export type KeyVal = Array<[key: string, value: string]>;

export function parseKeyVal(text: string, impliedKey?: string): KeyVal {
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === ',') {
      if (text[i + 1] === ',') {
        cur += ',';
        i++;
        continue;
      }
      parts.push(cur);
      cur = '';
      continue;
    }
    cur += c;
  }
  parts.push(cur);
  return parts.map((p, i): [string, string] => {
    const eq = p.indexOf('=');
    if (eq < 0) return i === 0 && impliedKey ? [impliedKey, p] : [p, 'on'];
    return [p.slice(0, eq), p.slice(eq + 1)];
  });
}

export function serializeKeyVal(kv: KeyVal, impliedKey?: string): string {
  const esc = (s: string) => s.replace(/,/g, ',,');
  return kv.map(([k, v], i) => (i === 0 && k === impliedKey ? esc(v) : `${esc(k)}=${esc(v)}`)).join(',');
}

export function keyValGet(kv: KeyVal, key: string): string | undefined {
  for (let i = kv.length - 1; i >= 0; i--) if (kv[i][0] === key) return kv[i][1];
  return undefined;
}

const TRUE = new Set(['on', 'yes', 'true', 'y']);
const FALSE = new Set(['off', 'no', 'false', 'n']);

/** QEMU's boolean spelling rules; undefined when the text is not a boolean. */
export function parseQemuBool(v: unknown): boolean | undefined {
  if (typeof v === 'boolean') return v;
  if (typeof v !== 'string') return undefined;
  if (TRUE.has(v)) return true;
  if (FALSE.has(v)) return false;
  return undefined;
}
