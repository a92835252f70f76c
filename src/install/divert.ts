/**
 * dpkg diversions of the packaged emulators for the host-wide mode: the package's
 * /usr/bin/qemu-system-x86_64 lives at /usr/bin/qemu-system-x86_64.distrib, and our wrapper
 * takes its name, so libvirt's own `<emulator>` path runs the wrapper without any edit to a
 * domain's XML. Upgrades of QEMU then install the real binary at the diverted name; removing the
 * diversion moves it back. Side effects: dpkg-divert.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, unlinkSync } from 'node:fs';
import { VirtEbpfError } from '../errors';
import { parseWrapper } from './wrapper-script';

/** Where dpkg puts the package's file when `path` is diverted. */
export function divertedName(path: string): string {
  return `${path}.distrib`;
}

function dpkgDivert(args: string[]): string {
  try {
    return execFileSync('dpkg-divert', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch (e) {
    const err = e as { stderr?: string; message: string; code?: string };
    const missing = err.code === 'ENOENT';
    throw new VirtEbpfError('SYSCALL', `dpkg-divert ${args.join(' ')}: ${missing ? 'dpkg-divert is not installed' : (err.stderr ?? err.message).trim()}`, {
      remedy: missing ? 'the host-wide mode needs dpkg (a Debian system)' : 'see `dpkg-divert --list "*qemu-system*"`; fix the diversion by hand, then run the command again',
      cause: e,
    });
  }
}

/** The file dpkg's package owns at `path` now: `path` itself, or its diverted name. */
export function trueName(path: string): string {
  try {
    return execFileSync('dpkg-divert', ['--truename', path], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() || path;
  } catch {
    return path; // no dpkg: nothing is diverted
  }
}

/** Divert `path` to its .distrib name (moving the file), unless it already is. */
export function divert(path: string): void {
  if (trueName(path) === divertedName(path)) return;
  dpkgDivert(['--local', '--rename', '--divert', divertedName(path), '--add', path]);
}

/** Give dpkg its file back at `path`: our wrapper there removed (never anything else), then the diversion. */
export function restorePackaged(path: string): void {
  if (existsSync(path) && parseWrapper(readFileSync(path, 'utf8'))) unlinkSync(path);
  undivert(path);
}

/** Remove the diversion of `path`, moving the package's file back; `path` must not exist. */
export function undivert(path: string): void {
  if (trueName(path) !== divertedName(path)) return;
  dpkgDivert(['--local', '--rename', '--divert', divertedName(path), '--remove', path]);
}

/**
 * The emulator paths dpkg has a local diversion of to their .distrib name: what an install of
 * ours makes (found even when its manifest is gone). Empty without dpkg.
 */
export function localDiversions(): string[] {
  let text: string;
  try {
    text = execFileSync('dpkg-divert', ['--list', '*/qemu-system-*'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const m of text.matchAll(/^local diversion of (\S+) to (\S+)$/gm)) {
    if (m[2] === divertedName(m[1]) && /\/qemu-system-[A-Za-z0-9_.+-]+$/.test(m[1])) out.push(m[1]);
  }
  return out;
}
