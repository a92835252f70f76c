/**
 * Tiny real executables standing in for broken or fake emulators (no real QEMU is broken that way), and
 * process checks proving the probe left nothing running.
 */
import { chmodSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO, statFields } from '../harness';

export function writeScript(dir: string, name: string, body: string, mode = 0o755): string {
  const file = join(dir, name);
  writeFileSync(file, `#!/bin/sh\n${body}\n`);
  chmodSync(file, mode);
  return file;
}

/** A fake emulator replaying a transcript from test/fixtures/qmp/transcripts. */
export function replayEmulator(dir: string, name: string, transcript: string): string {
  const js = join(REPO, 'dist', 'test', 'fixtures', 'qmp', 'replay-emulator.js');
  const t = join(REPO, 'test', 'fixtures', 'qmp', 'transcripts', transcript);
  return writeScript(dir, name, `exec '${process.execPath}' '${js}' '${t}' -- "$@"`);
}

/** A QMP greeting line as QEMU sends it, for shell fakes. */
export const GREETING_LINE = '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 10}, "package": "fake"}, "capabilities": ["oob"]}}';

/** Live (non-zombie) processes whose parent is `ppid`. */
export function liveChildren(ppid = process.pid): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const fields = statFields(`/proc/${d}/stat`);
      if (Number(fields[1]) === ppid && fields[0] !== 'Z') out.push(Number(d));
    } catch {
      /* exited meanwhile */
    }
  }
  return out;
}

/** True when pid no longer runs (gone, or a zombie nobody reaped yet). */
export function isDead(pid: number): boolean {
  try {
    return statFields(`/proc/${pid}/stat`)[0] === 'Z';
  } catch {
    return true;
  }
}
