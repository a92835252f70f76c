/**
 * A strict reader of the Prometheus text exposition format (0.0.4), independent of src/: every
 * sample belongs to the family declared just before it with one HELP and one TYPE line, names
 * and label names are valid, label values unescape, values are numbers, no series repeats.
 * Throws on anything else, naming the line.
 */
export interface PromSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface PromFamily {
  name: string;
  help: string;
  type: string;
  samples: PromSample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

function unescape(s: string, allowQuote: boolean, where: string): string {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    if (s[i] !== '\\') {
      out += s[i];
      continue;
    }
    const c = s[++i];
    if (c === '\\') out += '\\';
    else if (c === 'n') out += '\n';
    else if (c === '"' && allowQuote) out += '"';
    else throw new Error(`${where}: bad escape \\${c ?? ''}`);
  }
  return out;
}

function parseValue(v: string, where: string): number {
  if (v === 'NaN') return NaN;
  if (v === '+Inf') return Infinity;
  if (v === '-Inf') return -Infinity;
  if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(v)) throw new Error(`${where}: value "${v}" is not a number`);
  return Number(v);
}

/** `{a="x",b="y"}` at the start of `s`: the labels and the rest of the line. */
function parseLabels(s: string, where: string): { labels: Record<string, string>; rest: string } {
  const labels: Record<string, string> = {};
  let i = 1;
  for (;;) {
    if (s[i] === '}') return { labels, rest: s.slice(i + 1) };
    const eq = s.indexOf('=', i);
    if (eq < 0) throw new Error(`${where}: label without "="`);
    const name = s.slice(i, eq);
    if (!LABEL_NAME.test(name) || name.startsWith('__')) throw new Error(`${where}: bad label name "${name}"`);
    if (name in labels) throw new Error(`${where}: label ${name} twice`);
    if (s[eq + 1] !== '"') throw new Error(`${where}: label ${name} value not quoted`);
    let j = eq + 2;
    let raw = '';
    for (;;) {
      if (j >= s.length) throw new Error(`${where}: unterminated value of label ${name}`);
      if (s[j] === '\\') {
        raw += s.slice(j, j + 2);
        j += 2;
        continue;
      }
      if (s[j] === '"') break;
      if (s[j] === '\n') throw new Error(`${where}: raw newline in a label value`);
      raw += s[j++];
    }
    labels[name] = unescape(raw, true, `${where} label ${name}`);
    i = j + 1;
    if (s[i] === ',') i++;
    else if (s[i] !== '}') throw new Error(`${where}: expected "," or "}" after label ${name}`);
  }
}

export function parseExposition(text: string): Map<string, PromFamily> {
  if (!text.endsWith('\n')) throw new Error('the exposition must end with a newline');
  const families = new Map<string, PromFamily>();
  const series = new Set<string>();
  let current: PromFamily | undefined;
  text
    .slice(0, -1)
    .split('\n')
    .forEach((line, n) => {
      const where = `line ${n + 1} (${line})`;
      if (line === '') throw new Error(`${where}: empty line`);
      const meta = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
      if (meta) {
        const [, kind, name, rest] = meta;
        if (!METRIC_NAME.test(name)) throw new Error(`${where}: bad metric name`);
        if (kind === 'HELP') {
          if (families.has(name)) throw new Error(`${where}: family ${name} declared twice (or its samples are not together)`);
          current = { name, help: unescape(rest, false, where), type: '', samples: [] };
          families.set(name, current);
        } else {
          if (current?.name !== name || current.type !== '') throw new Error(`${where}: TYPE must follow its own HELP, once`);
          if (!TYPES.has(rest)) throw new Error(`${where}: unknown type ${rest}`);
          current.type = rest;
        }
        return;
      }
      if (line.startsWith('#')) throw new Error(`${where}: a comment that is neither HELP nor TYPE`);
      const m = /^([^{\s]+)(.*)$/.exec(line)!;
      const name = m[1];
      if (!METRIC_NAME.test(name)) throw new Error(`${where}: bad metric name "${name}"`);
      if (!current || current.name !== name || current.type === '') throw new Error(`${where}: sample of ${name} outside its family's HELP and TYPE`);
      let rest = m[2];
      let labels: Record<string, string> = {};
      if (rest.startsWith('{')) ({ labels, rest } = parseLabels(rest, where));
      const parts = rest.split(' ');
      if (parts[0] !== '' || parts.length !== 2) throw new Error(`${where}: expected exactly " VALUE" after the name and labels (no timestamp)`);
      const value = parseValue(parts[1], where);
      const id = `${name}${JSON.stringify(Object.entries(labels).sort(([a], [b]) => a.localeCompare(b)))}`;
      if (series.has(id)) throw new Error(`${where}: duplicate series`);
      series.add(id);
      current.samples.push({ name, labels, value });
    });
  for (const f of families.values()) if (f.type === '') throw new Error(`family ${f.name} has no TYPE`);
  return families;
}
