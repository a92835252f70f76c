/** Small statistics and table printing for the benchmarks (no timed assertions anywhere). */
export interface Stats {
  n: number;
  min: number;
  median: number;
  p99: number;
  max: number;
}

export function stats(samples: number[]): Stats {
  const s = [...samples].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))];
  return { n: s.length, min: s[0], median: q(0.5), p99: q(0.99), max: s[s.length - 1] };
}

export async function sample(n: number, fn: () => unknown | Promise<unknown>, warmup = 2): Promise<number[]> {
  for (let i = 0; i < warmup; i++) await fn();
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    out.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return out;
}

export interface Row {
  name: string;
  stats: Stats;
  /** the row this one is compared with (same run) */
  baseline?: string;
}

function fmt(ms: number): string {
  return ms >= 100 ? ms.toFixed(0) : ms >= 1 ? ms.toFixed(2) : ms.toFixed(4);
}

export function table(title: string, rows: Row[]): string {
  const byName = new Map(rows.map((r) => [r.name, r]));
  const head = ['measurement', 'n', 'min ms', 'median ms', 'p99 ms', 'max ms', 'median ratio vs baseline'];
  const body = rows.map((r) => {
    const b = r.baseline ? byName.get(r.baseline) : undefined;
    const ratio = b ? `${(r.stats.median / b.stats.median).toFixed(2)}× ${r.baseline}` : 'baseline';
    return [r.name, String(r.stats.n), fmt(r.stats.min), fmt(r.stats.median), fmt(r.stats.p99), fmt(r.stats.max), ratio];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((r) => r[i].length)));
  const line = (cells: string[]) => '| ' + cells.map((c, i) => c.padEnd(widths[i])).join(' | ') + ' |';
  return [`### ${title}`, '', line(head), '|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|', ...body.map(line), ''].join('\n');
}

/**
 * The median of `xs` and a 95 % interval for it by bootstrap (2000 resamples, a fixed seed so a
 * rerun on the same samples prints the same interval): how far a median ratio can be trusted.
 */
export function medianWithInterval(xs: number[], resamples = 2000): { median: number; low: number; high: number } {
  let seed = 0x9e3779b9;
  const rand = () => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) / 2 ** 32;
  };
  const medians: number[] = [];
  for (let r = 0; r < resamples; r++) {
    medians.push(stats(Array.from({ length: xs.length }, () => xs[Math.floor(rand() * xs.length)])).median);
  }
  medians.sort((a, b) => a - b);
  return { median: stats(xs).median, low: medians[Math.floor(0.025 * resamples)], high: medians[Math.ceil(0.975 * resamples) - 1] };
}
