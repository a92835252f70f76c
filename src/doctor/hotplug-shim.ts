/**
 * The hot-plug shim seen from outside. shims/qmp-preload.c (built to dist/shims/vebpf-qmp.so)
 * is loaded into QEMU by the emulator wrapper for every enabled domain with hot-plug on; this
 * tells which running domains should have it and whether they do. The parsers are pure;
 * `scanHotplugQemus` reads /proc and the domain state the hook leaves.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { domainIdentity } from '../argv';
import { readCmdline } from '../sys/proc';
import { DOMAIN_STATE_DIR, domainStatePath } from '../policy';
import { SHIM_SO } from '../shims/constants';


/** Whether one line of /proc/PID/maps (or the first line of an smaps entry) maps the shim. */
export function isShimMapping(line: string): boolean {
  return line.endsWith(`/${SHIM_SO}`);
}

/** Whether a /proc/PID/maps text shows the shim mapped into the process. */
export function mapsShowShim(maps: string): boolean {
  return maps.split('\n').some(isShimMapping);
}

/** libvirt's monitor on QEMU's command line: `-chardev socket,id=charmonitor,…`. */
export function hasLibvirtMonitor(argv: readonly string[]): boolean {
  return argv.some((a, i) => i > 0 && (argv[i - 1] === '-chardev' || argv[i - 1] === '--chardev') && a.startsWith('socket,') && a.split(',').includes('id=charmonitor'));
}

/** Whether the state the hook recorded for a domain asks for hot-plug (on unless `hotplug: false`). */
export function stateWantsHotplug(stateJson: string): boolean {
  try {
    const s = JSON.parse(stateJson) as { hotplug?: unknown };
    return s.hotplug !== false;
  } catch {
    return false;
  }
}

export interface HotplugQemu {
  pid: number;
  name?: string;
  /** the shim is mapped into this QEMU */
  loaded: boolean;
}

/** Every running QEMU of an enabled domain with hot-plug on (by the hook's state), and whether it has the shim. */
export function scanHotplugQemus(stateDir = DOMAIN_STATE_DIR): HotplugQemu[] {
  const out: HotplugQemu[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const argv = readCmdline(entry);
    if (!argv || !hasLibvirtMonitor(argv)) continue;
    const id = domainIdentity(argv);
    if (!id.uuid) continue;
    const statePath = domainStatePath(id.uuid, stateDir);
    if (!statePath) continue;
    let state: string;
    let maps: string;
    try {
      state = readFileSync(statePath, 'utf8');
      maps = readFileSync(`/proc/${entry}/maps`, 'utf8');
    } catch {
      continue; // not ours, or gone meanwhile
    }
    if (stateWantsHotplug(state)) out.push({ pid: Number(entry), name: id.name, loaded: mapsShowShim(maps) });
  }
  return out.sort((a, b) => a.pid - b.pid);
}
