/**
 * The C shims' parsers (shims/json.c, shims/parse.c) under libFuzzer with ASan and UBSan: the
 * targets test/fuzz/<target>.c, built by scripts/build-fuzz.sh into a temporary directory.
 *  - the committed corpus (test/fuzz/corpus/<target>/: valid inputs and every input that broke a
 *    parser once) replayed through its target: a regression test;
 *  - a bounded fuzz run of each target from that corpus (VIRT_EBPF_FUZZ_SECONDS of wall time for
 *    all of them, two at a time; 120 by default).
 * A sanitizer report, a broken contract, a leak or a timeout fails with the target, the input
 * (a reproducer kept on disk for a fuzz run) and the report. No clang fails too: scripts/setup.sh
 * installs it. docs/fuzzing.md says how to run longer and what goes in the corpus.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { REPO, tempDir } from '../harness';

const CORPUS = join(REPO, 'test/fuzz/corpus');
const BUDGET_S = Number(process.env.VIRT_EBPF_FUZZ_SECONDS ?? 120);
const PARALLEL = 2; // the machine's vCPUs
const MAX_LEN = 70_000; // a QMP line the hot-plug shim peeks at is at most 65 536 bytes
const CORPUS_MAX_BYTES = 200 * 1024;
const SYMBOLIZER = ['/usr/bin/llvm-symbolizer-14', '/usr/lib/llvm-14/bin/llvm-symbolizer'].find((p) => existsSync(p));
const ENV = {
  ...process.env,
  ASAN_OPTIONS: 'detect_leaks=1:allocator_may_return_null=0',
  UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1',
  ...(SYMBOLIZER ? { ASAN_SYMBOLIZER_PATH: SYMBOLIZER } : {}),
};

const work = tempDir('virt-ebpf-fuzz-');
let keep = false; // a failed fuzz run keeps its reproducers
after(() => {
  if (!keep) work.remove();
});

const targets = (() => {
  const r = spawnSync('bash', [join(REPO, 'scripts/build-fuzz.sh'), '--list'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.trim().split('\n');
})();

let built: string | undefined;
/** The directory of the built targets (built once). */
function bins(): string {
  if (built) return built;
  const out = join(work.path, 'bin');
  const r = spawnSync('bash', [join(REPO, 'scripts/build-fuzz.sh'), out], { encoding: 'utf8' });
  assert.equal(r.status, 0, `scripts/build-fuzz.sh failed: ${r.stderr.trim()}`);
  return (built = out);
}

function seeds(target: string): string[] {
  const dir = join(CORPUS, target);
  assert.ok(existsSync(dir), `${dir} is missing: every fuzz target has a seed corpus`);
  const files = readdirSync(dir).map((f) => join(dir, f));
  assert.ok(files.length > 0, `${dir} is empty`);
  return files;
}

/** The lines of a sanitizer or libFuzzer report that say what happened and where (the stack
 * frames of libFuzzer, the sanitizers and abort() left out). */
function report(out: string): string {
  const lines = out.split('\n').filter((l) => !/^\s*#\d+ .* in (fuzzer::|__sanitizer|__interceptor|__pthread_kill|raise |abort |main |_start|__libc_start)|^\s*#\d+ 0x[0-9a-f]+ +\(/.test(l));
  const start = lines.findIndex((l) => /contract broken|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|SUMMARY:/.test(l));
  return (start < 0 ? lines.slice(-20) : lines.slice(start, start + 16)).join('\n');
}

test('the seed corpus: one folder per fuzz target, none without one, small (< 200 KiB), each input at most -max_len', () => {
  assert.deepEqual(readdirSync(CORPUS).sort(), [...targets].sort(), 'test/fuzz/corpus/<target> for exactly the targets scripts/build-fuzz.sh lists');
  let total = 0;
  for (const t of targets)
    for (const f of seeds(t)) {
      const size = statSync(f).size;
      assert.ok(size <= MAX_LEN, `${f}: ${size} bytes, over -max_len=${MAX_LEN}`);
      total += size;
    }
  assert.ok(total < CORPUS_MAX_BYTES, `the corpus holds ${total} bytes`);
});

for (const target of targets) {
  test(`corpus replay through ${target} (ASan+UBSan): no report, no broken contract, no leak`, () => {
    const bin = join(bins(), target);
    const files = seeds(target);
    const run = (inputs: string[]) => spawnSync(bin, ['-timeout=10', `-max_len=${MAX_LEN}`, ...inputs], { env: ENV, encoding: 'utf8', maxBuffer: 64 << 20 });
    if (run(files).status === 0) return;
    const failed = files
      .map((f) => ({ f, r: run([f]) }))
      .filter(({ r }) => r.status !== 0)
      .map(({ f, r }) => `${target} ${f} (exit ${r.status}):\n${report(r.stderr)}`);
    assert.fail(failed.length ? failed.join('\n\n') : `${target} failed on the whole corpus but on no input alone`);
  });
}

test(`a bounded fuzz run of each target (${BUDGET_S} s in all, ${PARALLEL} at a time): no crash, leak or timeout`, async (t) => {
  const dir = bins();
  const each = Math.max(10, Math.floor((BUDGET_S * PARALLEL) / targets.length));
  const fuzz = (target: string) =>
    new Promise<string | null>((resolve) => {
      const scratch = join(work.path, 'runs', target);
      const found = join(scratch, 'found'); // new inputs go here, never into the committed corpus
      mkdirSync(found, { recursive: true });
      const args = [`-max_total_time=${each}`, `-max_len=${MAX_LEN}`, '-timeout=10', '-rss_limit_mb=2048', `-artifact_prefix=${scratch}/`, found, join(CORPUS, target)];
      const p = spawn(join(dir, target), args, { env: ENV, stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      p.stderr.on('data', (d: Buffer) => {
        err = (err + d.toString()).slice(-200_000);
      });
      p.on('close', (code, signal) => {
        const stats = /Done (\d+) runs in (\d+) second/.exec(err);
        t.diagnostic(`${target}: ${stats ? `${stats[1]} runs in ${stats[2]} s` : 'no summary'}, exit ${code ?? signal}`);
        if (code === 0) return resolve(null);
        const repro = readdirSync(scratch).filter((f) => /^(crash|leak|timeout|oom|slow-unit)-/.test(f));
        resolve(
          `${target} (exit ${code ?? signal}); reproducer: ${repro.map((f) => join(scratch, f)).join(', ') || 'none written'}` +
            ` (replay: ${join(dir, target)} FILE; once fixed, add it to test/fuzz/corpus/${target}/)\n${report(err)}`,
        );
      });
    });
  const failures: string[] = [];
  const queue = [...targets];
  await Promise.all(
    Array.from({ length: PARALLEL }, async () => {
      for (let next = queue.shift(); next; next = queue.shift()) {
        const f = await fuzz(next);
        if (f) failures.push(f);
      }
    }),
  );
  if (failures.length) keep = true;
  assert.equal(failures.length, 0, failures.join('\n\n'));
});
