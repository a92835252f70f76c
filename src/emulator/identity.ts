/**
 * Finding an emulator binary and pinning down which file it is. The identity (realpath,
 * device, inode, size, mtime, ctime) is what the probe cache is keyed on: any upgrade,
 * replacement or touch of the binary changes at least one of them.
 */
import { accessSync, constants, lstatSync, readdirSync, realpathSync, statSync } from 'node:fs';
import { delimiter, isAbsolute, join, resolve } from 'node:path';
import { VirtEbpfError } from '../errors';
import type { BinaryIdentity } from './caps';

function notFound(path: string, where: string): VirtEbpfError {
  return new VirtEbpfError('EMULATOR_NOT_FOUND', `emulator ${path} not found${where}`, {
    remedy: 'install QEMU (e.g. the qemu-system-x86 package) or give the full path of the emulator binary',
    fields: { path },
  });
}

function notExecutable(path: string, why: string): VirtEbpfError {
  return new VirtEbpfError('EMULATOR_NOT_EXECUTABLE', `emulator ${path} is not executable: ${why}`, {
    remedy: 'point at the QEMU binary itself (e.g. /usr/bin/qemu-system-x86_64) and make sure it has execute permission',
    fields: { path },
  });
}

/** Why `file` cannot be executed, or null when it can. */
function execProblem(file: string): string | null {
  let st;
  try {
    st = statSync(file);
  } catch {
    return 'missing';
  }
  if (!st.isFile()) return st.isDirectory() ? 'it is a directory' : 'it is not a regular file';
  try {
    accessSync(file, constants.X_OK);
  } catch {
    return `no execute permission (mode ${(st.mode & 0o7777).toString(8)})`;
  }
  return null;
}

/**
 * Absolute path of the emulator: a name without a slash is looked up on PATH like a shell
 * would; anything else is taken relative to the working directory.
 */
export function resolveEmulatorPath(path: string, searchPath: string = process.env.PATH ?? ''): string {
  if (path === '') throw notFound('""', '');
  if (path.includes('/')) {
    const abs = isAbsolute(path) ? path : resolve(path);
    const problem = execProblem(abs);
    if (problem === 'missing') throw notFound(path, '');
    if (problem) throw notExecutable(path, problem);
    return abs;
  }
  let firstProblem: { file: string; problem: string } | null = null;
  for (const dir of searchPath.split(delimiter)) {
    if (dir === '' || !isAbsolute(dir)) continue; // a relative PATH entry would depend on cwd: never for a root daemon
    const file = join(dir, path);
    const problem = execProblem(file);
    if (problem === null) return file;
    if (problem !== 'missing' && !firstProblem) firstProblem = { file, problem };
  }
  if (firstProblem) throw notExecutable(firstProblem.file, firstProblem.problem);
  throw notFound(path, ' on PATH');
}

export function binaryIdentity(absPath: string): BinaryIdentity {
  const realpath = realpathSync(absPath);
  const st = statSync(realpath);
  return { realpath, dev: st.dev, ino: st.ino, size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs };
}

export function sameIdentity(a: BinaryIdentity, b: BinaryIdentity): boolean {
  return a.realpath === b.realpath && a.dev === b.dev && a.ino === b.ino && a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs;
}

const EMULATOR_NAME = /^qemu-system-[A-Za-z0-9_.+-]+$/;

/**
 * Every executable qemu-system-* on PATH, in PATH order, one per real file: a symlinked alias
 * (qemu-system-amd64) is dropped in favour of the file's own name, or of an earlier PATH entry.
 */
export function listEmulatorsOnPath(searchPath: string = process.env.PATH ?? ''): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const dir of searchPath.split(delimiter)) {
    if (dir === '' || !isAbsolute(dir)) continue;
    let names: string[];
    try {
      // The real file's own name before its aliases (qemu-system-amd64 -> qemu-system-x86_64).
      const isLink = (n: string) => lstatSync(join(dir, n)).isSymbolicLink();
      names = readdirSync(dir)
        // *.distrib is where dpkg keeps a diverted file (install --host-wide): the binary behind
        // the name without it, never an emulator of its own.
        .filter((n) => EMULATOR_NAME.test(n) && !n.endsWith('.distrib'))
        .sort((x, y) => Number(isLink(x)) - Number(isLink(y)) || (x < y ? -1 : x > y ? 1 : 0));
    } catch {
      continue;
    }
    for (const name of names) {
      const file = join(dir, name);
      if (execProblem(file) !== null) continue;
      let real: string;
      try {
        real = realpathSync(file);
      } catch {
        continue;
      }
      if (seen.has(real)) continue;
      seen.add(real);
      out.push(file);
    }
  }
  return out;
}
