/**
 * Typed QMP commands. Each wrapper is a thin call plus a pure parser of the reply; the parsers
 * are exported so recorded transcripts can be decoded without a live QEMU. A reply of the
 * wrong shape is a QMP_PROTOCOL error naming the command, never an `undefined` deep inside.
 */
import { VirtEbpfError } from '../errors';
import { OwnedFd } from '../fdpass';
import { QmpClient, ExecuteOptions } from './protocol';
import { isJsonObject } from '../json';

export interface QemuVersion {
  major: number;
  minor: number;
  micro: number;
  /** distribution build string, e.g. "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"; '' when absent */
  package: string;
}

export interface DeviceProperty {
  name: string;
  /** QOM type name as QEMU reports it: "bool", "str", "list", "uint32", … */
  type: string;
  description?: string;
  defaultValue?: unknown;
}

export interface HelperPath {
  name: string;
  path: string;
}

/** The helper name QEMU's (unmerged) helper protocol uses for RSS. */
export const RSS_HELPER_NAME = 'qemu-ebpf-rss-helper';

function badReply(command: string, what: string, reply: unknown): VirtEbpfError {
  const text = JSON.stringify(reply) ?? String(reply);
  return new VirtEbpfError('QMP_PROTOCOL', `unexpected reply to QMP ${command}: ${what}`, {
    remedy: 'the peer does not behave like QEMU; check that the emulator is a genuine QEMU build',
    detail: text.length > 400 ? `${text.slice(0, 400)}…` : text,
    fields: { command },
  });
}

export function parseVersion(ret: unknown): QemuVersion {
  const q = isJsonObject(ret) && isJsonObject(ret.qemu) ? ret.qemu : undefined;
  if (!q || ![q.major, q.minor, q.micro].every((n) => Number.isInteger(n) && (n as number) >= 0)) {
    throw badReply('query-version', 'no qemu.{major,minor,micro}', ret);
  }
  const pkg = isJsonObject(ret) && typeof ret.package === 'string' ? ret.package : '';
  return { major: q.major as number, minor: q.minor as number, micro: q.micro as number, package: pkg };
}

export function parseCommandNames(ret: unknown): string[] {
  if (!Array.isArray(ret) || !ret.every((c) => isJsonObject(c) && typeof c.name === 'string')) {
    throw badReply('query-commands', 'not a list of {name}', ret);
  }
  return ret.map((c) => (c as { name: string }).name);
}

export function parseDeviceProperties(ret: unknown): DeviceProperty[] {
  if (!Array.isArray(ret) || !ret.every((p) => isJsonObject(p) && typeof p.name === 'string' && typeof p.type === 'string')) {
    throw badReply('device-list-properties', 'not a list of {name, type}', ret);
  }
  return ret.map((p: Record<string, unknown>) => {
    const out: DeviceProperty = { name: p.name as string, type: p.type as string };
    if (typeof p.description === 'string') out.description = p.description;
    if ('default-value' in p) out.defaultValue = p['default-value'];
    return out;
  });
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * Standard base64 with padding and nothing else: no whitespace, no URL alphabet, no stray
 * bits in the padding. Node's decoder silently skips garbage, which would turn a corrupt
 * object into a shorter "valid" one.
 */
export function decodeBase64Strict(text: string, what = 'eBPF object'): Buffer {
  const bad = (why: string) =>
    new VirtEbpfError('BPF_BAD_BASE64', `${what} is not valid base64: ${why}`, {
      remedy: 'the emulator returned a corrupt object; reinstall or upgrade QEMU',
      fields: { length: text.length },
    });
  if (!BASE64.test(text)) {
    const at = text.search(/[^A-Za-z0-9+/=]/);
    throw bad(at >= 0 ? `unexpected character at offset ${at}` : text.length % 4 !== 0 ? `length ${text.length} is not a multiple of 4` : 'misplaced padding');
  }
  const bytes = Buffer.from(text, 'base64');
  if (bytes.toString('base64') !== text) throw bad('non-canonical padding bits');
  return bytes;
}

export function parseEbpfObject(ret: unknown): Buffer {
  if (!isJsonObject(ret) || typeof ret.object !== 'string') throw badReply('request-ebpf', 'no "object" string', ret);
  return decodeBase64Strict(ret.object);
}

/**
 * Both spellings of the helper protocol: `query-helper-paths` returns [{name, path}]; the 2023
 * repost's `find-ebpf-rss-helper` is accepted as a list of the same, or as a single {path}.
 */
export function parseHelperPaths(ret: unknown, command = 'query-helper-paths'): HelperPath[] {
  if (isJsonObject(ret) && typeof ret.path === 'string') return [{ name: typeof ret.name === 'string' ? ret.name : RSS_HELPER_NAME, path: ret.path }];
  if (!Array.isArray(ret) || !ret.every((h) => isJsonObject(h) && typeof h.name === 'string' && typeof h.path === 'string')) {
    throw badReply(command, 'not a list of {name, path}', ret);
  }
  return ret.map((h) => ({ name: (h as HelperPath).name, path: (h as HelperPath).path }));
}

export async function queryVersion(c: QmpClient, opts?: ExecuteOptions): Promise<QemuVersion> {
  return parseVersion(await c.execute('query-version', undefined, opts));
}

export async function queryCommands(c: QmpClient, opts?: ExecuteOptions): Promise<string[]> {
  return parseCommandNames(await c.execute('query-commands', undefined, opts));
}

export async function deviceListProperties(c: QmpClient, driver: string, opts?: ExecuteOptions): Promise<DeviceProperty[]> {
  return parseDeviceProperties(await c.execute('device-list-properties', { typename: driver }, opts));
}

/** The eBPF ELF object QEMU >= 9.0 carries for `id` (only 'rss' exists today). */
export async function requestEbpf(c: QmpClient, id = 'rss', opts?: ExecuteOptions): Promise<Buffer> {
  return parseEbpfObject(await c.execute('request-ebpf', { id }, opts));
}

/** Helper paths, trying `query-helper-paths` and then the `find-ebpf-rss-helper` spelling. */
export async function queryHelperPaths(c: QmpClient, opts?: ExecuteOptions): Promise<HelperPath[]> {
  const first = await c.executeRaw('query-helper-paths', undefined, opts);
  if ('return' in first) return parseHelperPaths(first.return);
  if (first.error.class !== 'CommandNotFound') return parseHelperPaths(await c.execute('query-helper-paths', undefined, opts));
  return parseHelperPaths(await c.execute('find-ebpf-rss-helper', undefined, opts), 'find-ebpf-rss-helper');
}

/** Hand QEMU an fd under `name` (SCM_RIGHTS with the command). The fd stays ours too. */
export async function getfd(c: QmpClient, name: string, fd: number | OwnedFd, opts: Omit<ExecuteOptions, 'fds'> = {}): Promise<void> {
  const n = typeof fd === 'number' ? fd : fd.fd;
  await c.execute('getfd', { fdname: name }, { ...opts, fds: [n] });
}

export async function closefd(c: QmpClient, name: string, opts?: ExecuteOptions): Promise<void> {
  await c.execute('closefd', { fdname: name }, opts);
}

export async function qomGet<T = unknown>(c: QmpClient, path: string, property: string, opts?: ExecuteOptions): Promise<T> {
  return c.execute<T>('qom-get', { path, property }, opts);
}

/**
 * Ask QEMU to exit. QEMU may close the socket right after (or even before we read) its reply,
 * so a closed connection counts as success.
 */
export async function quit(c: QmpClient, opts?: ExecuteOptions): Promise<void> {
  try {
    await c.execute('quit', undefined, opts);
  } catch (e) {
    if (e instanceof VirtEbpfError && e.code === 'QMP_CLOSED') return;
    throw e;
  }
}
