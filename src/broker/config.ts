/**
 * Broker configuration: /etc/virt-ebpf/config.json, validated with yup. An invalid file stops
 * the daemon with the exact field and why; absent file = defaults.
 * Who may ask: root and the account libvirt runs QEMU as (from qemu.conf, else Debian's default).
 */
import { existsSync, readFileSync } from 'node:fs';
import * as yup from 'yup';
import { VirtEbpfError } from '../errors';
import { BROKER_SOCKET, CONFIG_FILE } from '../shims/constants';
import { DEFAULT_POLICY, POLICIES } from '../policy';

export const DEFAULT_CONFIG_PATH = CONFIG_FILE;

const schema = yup
  .object({
    socket: yup.string().matches(/^\//, 'must be an absolute path').default(BROKER_SOCKET),
    cacheDir: yup.string().matches(/^\//, 'must be an absolute path').default('/var/cache/virt-ebpf/probe'),
    allowUsers: yup.array(yup.string().required()).default(undefined),
    allowGroups: yup.array(yup.string().required()).default(undefined),
    emulatorDirs: yup.array(yup.string().matches(/^\//, 'must be an absolute path').required()).default(['/usr/bin', '/usr/local/bin', '/usr/libexec']),
    /** the emulators the broker may run; default: the packaged qemu-system-* and our wrappers' real QEMUs */
    emulators: yup.array(yup.string().matches(/^\//, 'must be an absolute path').required()).default(undefined),
    pool: yup
      .object({
        size: yup.number().integer().min(0).max(64).default(2),
        maxReservedPerDomain: yup.number().integer().min(0).max(64).default(16),
        maxReserved: yup.number().integer().min(0).max(1024).default(128),
        reservationTtlMs: yup.number().integer().min(100).max(600_000).default(60_000),
        /** loads at once (each on a thread of libuv's pool); default one per CPU, at most 16 */
        loaderThreads: yup.number().integer().min(1).max(64).default(undefined),
        /** accepted so that a config that sets it still loads; it has no effect (the loads hold no thread of their own) */
        loaderIdleMs: yup.number().integer().min(100).max(3_600_000).default(undefined),
      })
      .default({}),
    limits: yup
      .object({
        maxConnectionsPerUid: yup.number().integer().min(1).max(10_000).default(64),
        maxConnectionsPerProcess: yup.number().integer().min(1).max(1_000).default(4),
        maxOutstandingPerConnection: yup.number().integer().min(1).max(64).default(4),
        contextsPerMinute: yup.number().integer().min(1).max(10_000).default(64),
        idleTimeoutMs: yup.number().integer().min(100).max(600_000).default(5_000),
        requestTimeoutMs: yup.number().integer().min(100).max(600_000).default(10_000),
        writeTimeoutMs: yup.number().integer().min(100).max(600_000).default(5_000),
      })
      .default({}),
    policy: yup.string().oneOf([...POLICIES]).default(DEFAULT_POLICY),
    hostWide: yup
      .object({
        // Under `install --host-wide`: which virtio-net devices the host turns rss on for.
        rss: yup.string().oneOf(['multiqueue', 'off']).default('multiqueue'),
      })
      .default({}),
    log: yup
      .object({
        level: yup.string().oneOf(['error', 'warn', 'info', 'debug']).default('info'),
        format: yup.string().oneOf(['text', 'json']).default('text'),
      })
      .default({}),
  })
  .noUnknown(true, (p) => `unknown field ${p.unknown}`);

export type BrokerConfig = yup.InferType<typeof schema>;

/** Validate a parsed config object; `where` names the file for the message. */
export function validateConfig(raw: unknown, where = 'config'): BrokerConfig {
  try {
    // Strict first (no coercion: "2" is not a number here), then cast to fill in the defaults.
    schema.validateSync(raw ?? {}, { strict: true, abortEarly: true });
    return schema.cast(raw ?? {}) as BrokerConfig;
  } catch (e) {
    const ve = e as yup.ValidationError;
    const field = ve.path ? `field "${ve.path}"` : 'top level';
    throw new VirtEbpfError('CONFIG_INVALID', `invalid ${where}: ${field}: ${ve.errors?.[0] ?? ve.message}`, {
      remedy: `fix ${where} (see docs/configuration.md) or remove it to use the defaults`,
      fields: { path: ve.path },
    });
  }
}

export function loadConfig(path = DEFAULT_CONFIG_PATH): BrokerConfig {
  if (!existsSync(path)) return validateConfig({}, path);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new VirtEbpfError('CONFIG_INVALID', `invalid ${path}: not JSON (${(e as Error).message})`, {
      remedy: `fix the JSON syntax of ${path} or remove it to use the defaults`,
    });
  }
  return validateConfig(raw, path);
}

/** The user and group libvirt runs QEMU as: qemu.conf `user = "…"`/`group = "…"`, else Debian's default. */
export function libvirtQemuAccount(qemuConf = '/etc/libvirt/qemu.conf'): { user: string; group: string } {
  let text = '';
  try {
    text = readFileSync(qemuConf, 'utf8');
  } catch {
    /* no libvirt config: use the distro default */
  }
  const get = (key: string) => new RegExp(`^\\s*${key}\\s*=\\s*"([^"]+)"`, 'm').exec(text)?.[1];
  return { user: get('user') ?? 'libvirt-qemu', group: get('group') ?? 'libvirt-qemu' };
}
