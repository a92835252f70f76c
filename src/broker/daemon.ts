/**
 * Wiring the broker to the host: config, allowlist from libvirt's qemu.conf, and the resolver
 * that turns an emulator path into a pool source — only for trusted emulators in the allowed
 * directories, through the cached probe, so a changed binary gets a new pool.
 */
import { readFileSync, realpathSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { VirtEbpfError } from '../errors';
import { probeEmulator } from '../emulator';
import { loadContext, assertSupported } from '../context';
import { assertTrustedExecutable } from '../sys/trust';
import { lookupUser } from '../sys/users';
import { createLogger, Logger } from '../log';
import { BrokerConfig, libvirtQemuAccount } from './config';
import { Allowlist, Broker } from './server';
import type { PoolSource, RefillTiming } from './pool';
import { Loader } from './loader';

function groupId(name: string): number | undefined {
  if (/^\d+$/.test(name)) return Number(name);
  try {
    const text = readFileSync('/etc/group', 'utf8');
    const line = text.split('\n').find((l) => l.split(':')[0] === name);
    return line ? Number(line.split(':')[2]) : undefined;
  } catch {
    return undefined;
  }
}

export function allowlistFor(config: BrokerConfig, qemuConf?: string): Allowlist {
  const account = libvirtQemuAccount(qemuConf);
  const users = config.allowUsers ?? [account.user];
  const groups = config.allowGroups ?? [account.group];
  const uids = new Set<number>([0]);
  const gids = new Set<number>();
  for (const u of users) {
    try {
      uids.add(lookupUser(u).uid);
    } catch {
      /* an account that does not exist (yet) cannot connect either */
    }
  }
  for (const g of groups) {
    const gid = groupId(g);
    if (gid !== undefined) gids.add(gid);
  }
  return { uids, gids };
}

export function makeResolver(config: BrokerConfig, logger: Logger, onNewBuild: (oldKey: string) => void, loader?: Loader) {
  const current = new Map<string, string>(); // realpath -> build key
  // realpath -> the source made for the binary with that identity. The probe cache would give
  // the same answer, but reading and parsing it (~30 KB with the eBPF object) on every acquire
  // is most of the broker's handoff time; a stat is enough to know the binary is unchanged.
  const memo = new Map<string, { identity: string; source: PoolSource & { propTypes: Record<string, string> } }>();
  return async (emulator: string): Promise<PoolSource & { propTypes: Record<string, string> }> => {
    let real: string;
    try {
      real = realpathSync(emulator);
    } catch {
      throw new VirtEbpfError('EMULATOR_NOT_FOUND', `emulator ${emulator} does not exist`, { remedy: 'point the domain at an installed QEMU' });
    }
    if (!config.emulatorDirs.includes(dirname(real))) {
      throw new VirtEbpfError('BROKER_DENIED', `emulator ${real} is not in an allowed directory (${config.emulatorDirs.join(', ')})`, {
        remedy: 'install QEMU there or add its directory to emulatorDirs in /etc/virt-ebpf/config.json',
      });
    }
    assertTrustedExecutable(real, 'emulator');
    const st = statSync(real);
    const identity = `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
    const hit = memo.get(real);
    if (hit && hit.identity === identity) return hit.source;
    const { caps } = await probeEmulator(real, { cacheDir: config.cacheDir });
    assertSupported(caps);
    const id = caps.identity;
    const key = `${id.realpath}#${id.dev}:${id.ino}:${id.size}:${id.mtimeMs}:${id.ctimeMs}`;
    const old = current.get(real);
    if (old !== undefined && old !== key) {
      logger.info('emulator changed: dropping its pre-loaded contexts', { emulator: real });
      onNewBuild(old);
    }
    current.set(real, key);
    const source = {
      key,
      // With a loader (the daemon), libbpf runs on its thread only; without (tests), here.
      load: () => (loader ? loader.load(caps, true) : loadContext(caps)),
      loadInBackground: loader ? () => loader.load(caps, false) : undefined,
      propTypes: caps.deviceProps ?? {},
    };
    memo.set(real, { identity, source });
    return source;
  };
}

/** systemd socket activation: LISTEN_PID is us and LISTEN_FDS >= 1 → fd 3. */
export function activationFd(env = process.env): number | undefined {
  return env.LISTEN_PID === String(process.pid) && Number(env.LISTEN_FDS) >= 1 ? 3 : undefined;
}

export async function startBroker(config: BrokerConfig, opts: { logger?: Logger; qemuConf?: string; refillTiming?: RefillTiming } = {}): Promise<Broker> {
  const logger = opts.logger ?? createLogger(config.log.level, config.log.format as 'text' | 'json');
  let broker: Broker | undefined;
  const loader = new Loader();
  const resolve = makeResolver(config, logger, (oldKey) => broker?.pool.drop(oldKey), loader);
  broker = new Broker({
    socket: config.socket,
    allow: allowlistFor(config, opts.qemuConf),
    poolSize: config.pool.size,
    refillTiming: opts.refillTiming,
    onClose: () => loader.close(),
    maxReservedPerDomain: config.pool.maxReservedPerDomain,
    maxConnectionsPerUid: config.limits.maxConnectionsPerUid,
    maxOutstandingPerConnection: config.limits.maxOutstandingPerConnection,
    resolve,
    logger,
    listenFd: activationFd(),
  });
  await broker.start();
  return broker;
}
