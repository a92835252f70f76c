/**
 * Which binaries may ever be run as an emulator: QEMU system emulators the host has. By default
 * the `qemu-system-*` executables the package manager installed (dpkg's file lists) and the
 * real emulators our own wrappers name; a configured list replaces that default. The check is
 * by real path and comes before anything is executed: a peer naming /usr/bin/id gets a refusal,
 * not a probe.
 */
import { readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { VirtEbpfError } from '../errors';

export const DPKG_INFO_DIR = '/var/lib/dpkg/info';
const EMULATOR_NAME = /^qemu-system-[A-Za-z0-9_.+-]+$/;

/** The qemu-system-* executables dpkg installed (from qemu-system-* packages' file lists). */
export function packagedEmulators(infoDir = DPKG_INFO_DIR): string[] {
  let lists: string[];
  try {
    lists = readdirSync(infoDir).filter((f) => /^qemu-system-[^:]*(:[a-z0-9]+)?\.list$/.test(f));
  } catch {
    return []; // not a dpkg host
  }
  const out: string[] = [];
  for (const list of lists) {
    let text = '';
    try {
      text = readFileSync(join(infoDir, list), 'utf8');
    } catch {
      continue;
    }
    for (const path of text.split('\n')) {
      const name = path.slice(path.lastIndexOf('/') + 1);
      if (/^\/(usr\/)?s?bin\/[^/]+$/.test(path) && EMULATOR_NAME.test(name)) out.push(path);
    }
  }
  return out;
}

function realOrNull(path: string): string | null {
  try {
    return realpathSync(path);
  } catch {
    return null;
  }
}

function mtime(path: string): number {
  try {
    return statSync(path, { throwIfNoEntry: false })?.mtimeMs ?? -1; // a missing file without an exception's cost
  } catch {
    return -1;
  }
}

export interface AllowlistSources {
  /** the configured list (config.json `emulators`): replaces the default when given */
  configured?: readonly string[];
  /** default: packagedEmulators() */
  packaged?: () => string[];
  /** default: none; the broker passes the real emulators its installed wrappers name */
  wrapped?: () => string[];
  /** files whose change means the default list may have changed (dpkg's info dir, our manifest) */
  watch?: readonly string[];
}

export class EmulatorAllowlist {
  #real = new Set<string>();
  #stamp = '';

  constructor(private readonly sources: AllowlistSources = {}) {}

  /** Real paths allowed now (recomputed when a watched file changed). */
  allowed(): ReadonlySet<string> {
    const stamp = (this.sources.configured ? ['configured'] : (this.sources.watch ?? [DPKG_INFO_DIR]).map((p) => `${p}@${mtime(p)}`)).join('|');
    if (stamp !== this.#stamp || this.#real.size === 0) {
      const paths = this.sources.configured ?? [...(this.sources.packaged ?? packagedEmulators)(), ...(this.sources.wrapped?.() ?? [])];
      this.#real = new Set(paths.map(realOrNull).filter((p): p is string => p !== null));
      this.#stamp = stamp;
    }
    return this.#real;
  }

  /** Throws EMULATOR_NOT_ALLOWED unless `real` (a resolved path) is an allowed emulator. */
  check(real: string, shown = real): void {
    if (this.allowed().has(real)) return;
    throw new VirtEbpfError('EMULATOR_NOT_ALLOWED', `${shown} is not a QEMU system emulator this host allows (${real})`, {
      remedy: 'point the domain at a packaged qemu-system-* binary, or list it under "emulators" in /etc/virt-ebpf/config.json',
      fields: { path: shown, realpath: real },
    });
  }
}
