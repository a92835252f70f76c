/**
 * A line diff of two domain XMLs, for the evidence of a refused define: the user sees exactly
 * what we asked libvirt to change. Longest common subsequence over lines (domain XML is a few
 * hundred lines at most), printed in unified style with a little context.
 */

type Op = { kind: ' ' | '-' | '+'; line: string; a: number; b: number };

function ops(a: string[], b: string[]): Op[] {
  const n = a.length;
  const m = b.length;
  // lcs[i][j]: common subsequence length of a[i..] and b[j..]
  const lcs: Uint32Array[] = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out: Op[] = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) out.push({ kind: ' ', line: a[i], a: i++, b: j++ });
    // Deletions before insertions, as diff(1) prints a replaced line.
    else if (i < n && (j === m || lcs[i + 1][j] >= lcs[i][j + 1])) out.push({ kind: '-', line: a[i], a: i++, b: j });
    else out.push({ kind: '+', line: b[j], a: i, b: j++ });
  }
  return out;
}

/** Unified diff of `before` → `after` ('' when equal), hunks with `context` lines around changes. */
export function lineDiff(before: string, after: string, labels: { before: string; after: string } = { before: 'before', after: 'after' }, context = 3): string {
  if (before === after) return '';
  const all = ops(before.split('\n'), after.split('\n'));
  const changed = all.map((o, k) => (o.kind !== ' ' ? k : -1)).filter((k) => k >= 0);
  const hunks: Array<[number, number]> = [];
  for (const k of changed) {
    const lo = Math.max(0, k - context);
    const hi = Math.min(all.length - 1, k + context);
    const last = hunks[hunks.length - 1];
    if (last && lo <= last[1] + 1) last[1] = hi;
    else hunks.push([lo, hi]);
  }
  const lines = [`--- ${labels.before}`, `+++ ${labels.after}`];
  for (const [lo, hi] of hunks) {
    const part = all.slice(lo, hi + 1);
    const aLen = part.filter((o) => o.kind !== '+').length;
    const bLen = part.filter((o) => o.kind !== '-').length;
    lines.push(`@@ -${part[0].a + 1},${aLen} +${part[0].b + 1},${bLen} @@`);
    for (const o of part) lines.push(o.kind + o.line);
  }
  return lines.join('\n');
}
