/**
 * Builds the helper-protocol test doubles (test/fixtures/helper) into a root-owned, 0755
 * directory (test/harness trustedDir) — trust checks refuse /tmp, and must accept these.
 *
 * - a fake emulator (C, carries the stamp string, execs the QMP script)
 * - helper doubles (C, export the stamp symbol, exec the --fd script in some mode)
 * - QEMU 10's real RSS object, fetched once with request-ebpf, for the good helper to load
 *
 * The directory name hashes everything that goes in, so a change rebuilds and concurrent test
 * files share one build (built aside, then renamed into place).
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { QEMU, REPO, trustedDir } from '../harness';
import { untrustedReason } from '../../src/sys/trust';

const SRC = join(REPO, 'test', 'fixtures', 'helper');
const DIST = join(REPO, 'dist', 'test', 'fixtures', 'helper');
const BUILDER_VERSION = '3';

const sha1 = (s: string): string => createHash('sha1').update(s).digest('hex');
export const STAMP = `qemuHelperStamp_${sha1('virt-ebpf helper double: build A')}`;
export const OTHER_STAMP = `qemuHelperStamp_${sha1('virt-ebpf helper double: build B')}`;
export const STAMP_2023 = `qemuEbpfRssHelperStamp_${sha1('virt-ebpf helper double: build A')}`;

export type HelperVariant =
  | 'good'
  | 'wrongStamp'
  | 'fails'
  | 'hangs'
  | 'exitsWithoutFds'
  | 'sendsEmptyMessage'
  | 'leavesGrandchild'
  | 'notExecutable'
  | 'groupWritable'
  | 'stamp2023'
  | 'symtabOnly'
  | 'dynsymOnly';

interface VariantSpec {
  mode: string;
  stamp: string;
  /** export to .dynsym (-rdynamic) */
  dynamic: boolean;
  /** drop .symtab (strip) */
  strip: boolean;
  mode0: number;
  marker: boolean;
}

const VARIANTS: Record<HelperVariant, VariantSpec> = {
  good: { mode: 'good', stamp: STAMP, dynamic: true, strip: false, mode0: 0o755, marker: false },
  wrongStamp: { mode: 'good', stamp: OTHER_STAMP, dynamic: true, strip: false, mode0: 0o755, marker: true },
  fails: { mode: 'fails', stamp: STAMP, dynamic: true, strip: false, mode0: 0o755, marker: false },
  hangs: { mode: 'hangs', stamp: STAMP, dynamic: true, strip: false, mode0: 0o755, marker: false },
  exitsWithoutFds: { mode: 'no-fds', stamp: STAMP, dynamic: true, strip: false, mode0: 0o755, marker: false },
  sendsEmptyMessage: { mode: 'empty-msg', stamp: STAMP, dynamic: true, strip: false, mode0: 0o755, marker: false },
  leavesGrandchild: { mode: 'forks', stamp: STAMP, dynamic: true, strip: false, mode0: 0o755, marker: false },
  notExecutable: { mode: 'good', stamp: STAMP, dynamic: true, strip: false, mode0: 0o644, marker: true },
  groupWritable: { mode: 'good', stamp: STAMP, dynamic: true, strip: false, mode0: 0o775, marker: true },
  stamp2023: { mode: 'good', stamp: STAMP_2023, dynamic: true, strip: false, mode0: 0o755, marker: false },
  symtabOnly: { mode: 'good', stamp: STAMP, dynamic: false, strip: false, mode0: 0o755, marker: false },
  dynsymOnly: { mode: 'good', stamp: STAMP, dynamic: true, strip: true, mode0: 0o755, marker: false },
};

export interface HelperDoubles {
  dir: string;
  /** the fake emulator (stamp STAMP); its query-helper-paths names `helpers.good` */
  emulator: string;
  helpers: Record<HelperVariant, string>;
  /** file a helper variant with `marker` creates as its very first act: proof that it ran */
  marker(variant: HelperVariant): string;
  rssObject: string;
}

function cString(s: string): string {
  return JSON.stringify(s);
}

function layout(dir: string): Omit<HelperDoubles, 'dir'> {
  const helpers = Object.fromEntries(Object.keys(VARIANTS).map((v) => [v, join(dir, `helper-${v}`)])) as Record<HelperVariant, string>;
  return {
    emulator: join(dir, 'fake-emulator'),
    helpers,
    marker: (v) => join(dir, `ran-${v}`),
    rssObject: join(dir, 'rss.bpf.o'),
  };
}

function buildKey(): string {
  const h = createHash('sha256');
  h.update(BUILDER_VERSION);
  for (const f of ['fake-emulator.c', 'helper-double.c']) h.update(readFileSync(join(SRC, f)));
  const q = statSync(QEMU);
  h.update(`${process.execPath}\0${DIST}\0${QEMU}\0${q.size}\0${q.mtimeMs}`);
  return h.digest('hex').slice(0, 16);
}

/** Build (or reuse) the doubles. Needs root (ownership), gcc and the real QEMU. */
export async function buildHelperDoubles(): Promise<HelperDoubles> {
  for (const js of ['fake-emulator.js', 'helper-double.js']) {
    if (!existsSync(join(DIST, js))) throw new Error(`${join(DIST, js)} missing: run "npx tsc -p ." first`);
  }
  const parent = trustedDir('helper-doubles');
  mkdirSync(parent, { recursive: true, mode: 0o755 });
  const dir = join(parent, buildKey());
  if (!existsSync(join(dir, 'complete'))) {
    const tmp = mkdtempSync(join(parent, '.build-'));
    try {
      chmodSync(tmp, 0o755);
      await buildInto(tmp, dir);
      writeFileSync(join(tmp, 'complete'), '');
      try {
        renameSync(tmp, dir);
      } catch (e) {
        // another test file finished the same build first: use theirs
        if (!existsSync(join(dir, 'complete'))) throw e;
      }
      // builds for older sources are dead weight
      for (const old of readdirSync(parent)) {
        if (!old.startsWith('.') && join(parent, old) !== dir) rmSync(join(parent, old), { recursive: true, force: true });
      }
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  }
  const out = { dir, ...layout(dir) };
  const why = untrustedReason(out.helpers.good);
  if (why !== null) throw new Error(`helper doubles are not trusted (${why}); its parents must be root-owned and not group/world-writable`);
  return out;
}

async function buildInto(tmp: string, finalDir: string): Promise<void> {
  const final = layout(finalDir);
  const at = layout(tmp);
  execFileSync('gcc', [
    '-O2', '-Wall', '-Werror',
    `-DSTAMP_STRING=${cString(STAMP)}`,
    `-DNODE=${cString(process.execPath)}`,
    `-DSCRIPT=${cString(join(DIST, 'fake-emulator.js'))}`,
    `-DHELPER_PATH=${cString(final.helpers.good)}`,
    '-o', at.emulator, join(SRC, 'fake-emulator.c'),
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  for (const [name, v] of Object.entries(VARIANTS) as [HelperVariant, VariantSpec][]) {
    execFileSync('gcc', [
      '-O2', '-Wall', '-Werror',
      ...(v.dynamic ? ['-rdynamic'] : []),
      ...(v.strip ? ['-s'] : []),
      `-DSTAMP_SYMBOL=${v.stamp}`,
      `-DMODE=${cString(v.mode)}`,
      `-DNODE=${cString(process.execPath)}`,
      `-DSCRIPT=${cString(join(DIST, 'helper-double.js'))}`,
      `-DOBJECT=${cString(final.rssObject)}`,
      `-DMARKER=${cString(v.marker ? final.marker(name) : '')}`,
      '-o', at.helpers[name], join(SRC, 'helper-double.c'),
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    chmodSync(at.helpers[name], v.mode0);
  }
  chmodSync(at.emulator, 0o755);
  writeFileSync(at.rssObject, await fetchRssObject(), { mode: 0o644 });
}

/** QEMU 10's RSS eBPF object, the way the project gets it: QMP request-ebpf. */
export async function fetchRssObject(qemu = QEMU, timeoutMs = 30_000): Promise<Buffer> {
  const child = spawn(qemu, ['-S', '-no-user-config', '-nodefaults', '-display', 'none', '-machine', 'none', '-qmp', 'stdio'], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (err += s));
  child.stdin.end('{"execute":"qmp_capabilities"}\n{"execute":"request-ebpf","arguments":{"id":"rss"}}\n{"execute":"quit"}\n');
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  clearTimeout(timer);
  for (const line of out.split('\n')) {
    if (!line.includes('"object"')) continue;
    const reply = JSON.parse(line) as { return?: { object?: string } };
    if (reply.return?.object) return Buffer.from(reply.return.object, 'base64');
  }
  throw new Error(`${qemu} gave no RSS object (exit ${code}): ${err.trim() || out.slice(0, 500)}`);
}

/** Processes (other than us) whose command line mentions `needle`: leftovers of a test. */
export function processesMentioning(needle: string): { pid: number; cmdline: string }[] {
  const out: { pid: number; cmdline: string }[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const cmdline = readFileSync(`/proc/${name}/cmdline`, 'latin1').split('\0').join(' ');
      if (cmdline.includes(needle)) out.push({ pid: Number(name), cmdline });
    } catch {
      /* exited meanwhile */
    }
  }
  return out;
}
