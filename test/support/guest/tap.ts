/**
 * A persistent multiqueue tap for the guest fixture, created the way libvirt does before it
 * starts QEMU (`ip tuntap … multi_queue`). Needs root. Always `remove()` it.
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { GuestError } from './error';

export interface Tap {
  name: string;
  remove(): Promise<void>;
  /** For process 'exit' handlers, where nothing asynchronous runs any more. */
  removeSync(): void;
}

export interface TapOptions {
  /** Exact name; default: the first free vebpfgN. */
  name?: string;
  /** Host address on the tap, e.g. "10.199.0.1/30". */
  hostIp?: string;
  /** Owner, so an unprivileged QEMU (e.g. libvirt-qemu) may attach its queues. */
  user?: string;
}

export function ip(args: string[], timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('ip', args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) {
        reject(
          new GuestError('GUEST_BOOT', `ip ${args.join(' ')} failed: ${stderr.trim() || err.message}`, {
            remedy: 'run as root on a host with /dev/net/tun and iproute2 (scripts/setup.sh installs it)',
            detail: stderr,
            cause: err,
          }),
        );
      } else resolve(stdout);
    });
  });
}

/** vebpfg0 … vebpfg999: enough for a hot-plug bench's hundred-odd NICs at once. */
const TAP_NAMES = 1000;

export async function createTap(opts: TapOptions = {}): Promise<Tap> {
  if (opts.hostIp) {
    // The same address on a second interface (a tap left by a killed run) would silently
    // route our traffic there.
    const holder = (await ip(['-o', '-4', 'addr', 'show', 'to', opts.hostIp.split('/')[0]])).trim().split(/\s+/)[1];
    if (holder) {
      throw new GuestError('GUEST_BOOT', `host address ${opts.hostIp} is already on ${holder}`, {
        remedy: `delete the leftover interface (\`ip link del ${holder}\`) or choose another address`,
      });
    }
  }
  const candidates = opts.name ? [opts.name] : Array.from({ length: TAP_NAMES }, (_, i) => `vebpfg${i}`);
  let lastError: unknown;
  for (const name of candidates) {
    if (!opts.name && existsSync(`/sys/class/net/${name}`)) continue;
    try {
      await ip(['tuntap', 'add', 'dev', name, 'mode', 'tap', 'multi_queue', ...(opts.user ? ['user', opts.user] : [])]);
    } catch (e) {
      // Another process took the name between our check and the add: try the next one.
      lastError = e;
      continue;
    }
    let removed = false;
    const tap: Tap = {
      name,
      remove: async () => {
        if (removed) return;
        removed = true;
        await ip(['link', 'del', name]).catch(() => undefined);
      },
      removeSync: () => {
        if (removed) return;
        removed = true;
        try {
          execFileSync('ip', ['link', 'del', name], { stdio: 'ignore', timeout: 5000 });
        } catch {
          /* already gone */
        }
      },
    };
    try {
      // No IPv6 on our side: router solicitations and DAD would show up as guest RX traffic.
      writeFileSync(`/proc/sys/net/ipv6/conf/${name}/disable_ipv6`, '1');
    } catch {
      /* IPv6 disabled on the host altogether */
    }
    try {
      if (opts.hostIp) await ip(['addr', 'add', opts.hostIp, 'dev', name]);
      await ip(['link', 'set', name, 'up']);
    } catch (e) {
      await tap.remove();
      throw e;
    }
    return tap;
  }
  throw lastError ?? new GuestError('GUEST_BOOT', `no free vebpfgN tap name (0-${TAP_NAMES - 1} all exist)`, {
    remedy: 'delete leftover taps with `ip link del vebpfgN`',
  });
}


