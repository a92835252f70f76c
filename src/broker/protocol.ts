/**
 * The broker's wire protocol, version 1: one JSON object per line over an AF_UNIX stream.
 * A reply that hands over fds carries them (SCM_RIGHTS) on the same sendmsg as its line.
 * Pure: parsing and validation of requests and replies; no sockets here.
 */
import { VirtEbpfError, ErrorCode } from '../errors';
import type { Policy } from '../policy';
import { FD_MARKER as SHARED_FD_MARKER, LIMITS } from '../shims/constants';

export const PROTOCOL_VERSION = 1;
/** One request line from root: large enough for a `hook` op's domain XML once JSON-escaped. */
export const MAX_LINE = 8 * 1024 * 1024;
/** One request line from any other peer: an `exec-plan` argv (MAX_EXEC_ARGV_BYTES) JSON-escaped. */
export const MAX_PEER_LINE = 2 * 1024 * 1024;
/** What the unfinished request lines of one process's connections may hold at once: one line (root's: no cap). */
export const MAX_PENDING_PER_PROCESS = MAX_PEER_LINE;
/** What the unfinished request lines of all of one account's connections may hold at once (root's: no cap). */
export const MAX_PENDING_PER_UID = 8 * MAX_PEER_LINE;
export const MAX_EXEC_ARGS = 4096;
export const MAX_EXEC_ARGV_BYTES = 1024 * 1024;
export const MAX_HOOK_XML_BYTES = 4 * 1024 * 1024;
/**
 * `exec-plan` names the K-th attached fd `@virt-ebpf-fd:K@` in the argv it returns; the shim
 * substitutes the fd number it received. A command line that already contains the marker is
 * refused so a real argument can never be rewritten.
 */
export const FD_MARKER = SHARED_FD_MARKER;
export function fdPlaceholder(k: number): string {
  return `${FD_MARKER}${k}@`;
}
export const MAX_CONTEXTS_PER_REQUEST = 16; // 16 × 4 fds stays far below SCM_MAX_FD (253)
/** The longest QMP line the hot-plug shim looks at (its peek buffer); `device-plan` takes no more. */
export const MAX_QMP_LINE = LIMITS.maxQmpLine;
/** The longest text a `device-plan` reply splices into a line (a refusal names its reason 4 times). */
export const MAX_SPLICE = LIMITS.maxSplice;

export type { DomainRef } from '../hook/event';
import type { DomainRef } from '../hook/event';

export type Request =
  | { v: 1; id: number; op: 'hello' }
  | { v: 1; id: number; op: 'acquire'; emulator: string; count: number; domain?: DomainRef }
  | { v: 1; id: number; op: 'prewarm'; emulator: string; count: number; domain?: DomainRef }
  | { v: 1; id: number; op: 'release'; domain: DomainRef }
  | { v: 1; id: number; op: 'status' }
  /** QEMU's command line as the emulator wrapper got it: the broker plans the devices (root peers and the QEMU account) */
  | { v: 1; id: number; op: 'exec-plan'; emulator: string; argv: string[] }
  /**
   * One QMP line the hot-plug shim saw QEMU about to read (base64 of its bytes): the broker
   * plans what to splice into it, and with which fds (QEMU-account peers and root)
   */
  | { v: 1; id: number; op: 'device-plan'; emulator: string; line64: string }
  /** libvirt's hook at prepare/release, run inside the broker (root peers only) */
  | { v: 1; id: number; op: 'hook'; event: 'prepare' | 'release'; name: string; xml: string };

export type Op = Request['op'];

export type { ContextDescriptor } from '../context';
import type { ContextDescriptor } from '../context';
import { isJsonObject } from '../json';

export type Reply =
  | { v: 1; id: number; ok: true; op: 'hello'; broker: string; version: string; uid: number }
  | { v: 1; id: number; ok: true; op: 'acquire'; contexts: ContextDescriptor[]; propTypes: Record<string, string> }
  | { v: 1; id: number; ok: true; op: 'prewarm'; ready: number }
  | { v: 1; id: number; ok: true; op: 'release'; dropped: number }
  | { v: 1; id: number; ok: true; op: 'exec-plan'; argv: string[] | null; fds: number; policy: Policy; hotplug: boolean }
  /**
   * `insert` goes into the line at byte offset `at` (null: the line passes as it is); `say` is a
   * line for QEMU's log. Both may name the K-th attached fd as `@virt-ebpf-fd:K@`.
   */
  | { v: 1; id: number; ok: true; op: 'device-plan'; at: number | null; insert: string | null; fds: number; say: string | null }
  | { v: 1; id: number; ok: true; op: 'hook'; code: number; stdout: string; stderr: string }
  | { v: 1; id: number; ok: true; op: 'status'; pools: Array<{ emulator: string; ready: number; target: number }>; reserved: number; reservationTtlMs: number; peers: number; /** live QEMU-account processes the broker holds a domain for (src/broker/peer.ts) */ bound: number }
  | { v: 1; id: number; ok: false; error: { code: string; message: string; remedy: string } };

function bad(message: string): VirtEbpfError {
  return new VirtEbpfError('BROKER_PROTOCOL', message, { remedy: 'use a virt-ebpf client of the same version as the broker' });
}

function domainRef(v: unknown, required: boolean): DomainRef | undefined {
  if (v === undefined && !required) return undefined;
  if (!isJsonObject(v)) throw bad('"domain" must be an object with name and/or uuid');
  const out: DomainRef = {};
  for (const k of ['name', 'uuid'] as const) {
    if (v[k] === undefined) continue;
    if (typeof v[k] !== 'string' || (v[k] as string).length > 256) throw bad(`"domain.${k}" must be a string of at most 256 characters`);
    out[k] = v[k] as string;
  }
  if (required && out.name === undefined && out.uuid === undefined) throw bad('"domain" needs a name or a uuid');
  return out;
}

function count(v: unknown): number {
  if (!Number.isInteger(v) || (v as number) < 1 || (v as number) > MAX_CONTEXTS_PER_REQUEST) {
    throw bad(`"count" must be an integer from 1 to ${MAX_CONTEXTS_PER_REQUEST}`);
  }
  return v as number;
}

function emulatorPath(v: unknown): string {
  if (typeof v !== 'string' || !v.startsWith('/') || v.length > 4096 || v.includes('\0')) throw bad('"emulator" must be an absolute path');
  return v;
}

const ALLOWED_KEYS: Record<Op, string[]> = {
  hello: ['v', 'id', 'op'],
  status: ['v', 'id', 'op'],
  acquire: ['v', 'id', 'op', 'emulator', 'count', 'domain'],
  prewarm: ['v', 'id', 'op', 'emulator', 'count', 'domain'],
  release: ['v', 'id', 'op', 'domain'],
  'exec-plan': ['v', 'id', 'op', 'emulator', 'argv'],
  'device-plan': ['v', 'id', 'op', 'emulator', 'line64'],
  hook: ['v', 'id', 'op', 'event', 'name', 'xml'],
};

function execArgv(v: unknown): string[] {
  if (!Array.isArray(v) || v.length > MAX_EXEC_ARGS || !v.every((a) => typeof a === 'string' && !a.includes('\0'))) {
    throw bad(`"argv" must be an array of at most ${MAX_EXEC_ARGS} strings`);
  }
  const bytes = v.reduce((n: number, a: string) => n + Buffer.byteLength(a), 0);
  if (bytes > MAX_EXEC_ARGV_BYTES) throw bad(`"argv" is longer than ${MAX_EXEC_ARGV_BYTES} bytes`);
  if (v.some((a: string) => a.includes(FD_MARKER))) throw bad(`"argv" already contains the fd marker ${FD_MARKER}…@`);
  return v as string[];
}

function qmpLine(v: unknown): string {
  if (typeof v !== 'string' || v.length > Math.ceil(MAX_QMP_LINE / 3) * 4 || !/^[A-Za-z0-9+/]*={0,2}$/.test(v)) {
    throw bad(`"line64" must be the base64 of a line of at most ${MAX_QMP_LINE} bytes`);
  }
  return v;
}

function hookFields(m: Record<string, unknown>): { event: 'prepare' | 'release'; name: string; xml: string } {
  if (m.event !== 'prepare' && m.event !== 'release') throw bad('"event" must be "prepare" or "release"');
  if (typeof m.name !== 'string' || m.name.length === 0 || m.name.length > 256) throw bad('"name" must be a string of 1 to 256 characters');
  if (typeof m.xml !== 'string' || Buffer.byteLength(m.xml) > MAX_HOOK_XML_BYTES) throw bad(`"xml" must be a string of at most ${MAX_HOOK_XML_BYTES} bytes`);
  return { event: m.event, name: m.name, xml: m.xml };
}

/** Parse one request line; throws BROKER_PROTOCOL naming the problem. */
export function parseRequest(line: string): Request {
  if (line.length > MAX_LINE) throw bad(`request longer than ${MAX_LINE} bytes`);
  let m: unknown;
  try {
    m = JSON.parse(line);
  } catch {
    throw bad('request is not JSON');
  }
  if (!isJsonObject(m)) throw bad('request is not a JSON object');
  if (m.v !== PROTOCOL_VERSION) throw bad(`unsupported protocol version ${JSON.stringify(m.v)} (broker speaks ${PROTOCOL_VERSION})`);
  if (!Number.isSafeInteger(m.id)) throw bad('"id" must be an integer');
  const id = m.id as number;
  // Closed shape: in particular there is no way to hand the broker bytecode or a helper path.
  const allowed = ALLOWED_KEYS[m.op as Op];
  const extra = allowed ? Object.keys(m).filter((k) => !allowed.includes(k)) : [];
  if (extra.length) throw bad(`unexpected field ${JSON.stringify(extra[0])} in ${String(m.op)} request`);
  switch (m.op) {
    case 'hello':
    case 'status':
      return { v: 1, id, op: m.op };
    case 'acquire':
    case 'prewarm':
      return { v: 1, id, op: m.op, emulator: emulatorPath(m.emulator), count: count(m.count), domain: domainRef(m.domain, false) };
    case 'release':
      return { v: 1, id, op: 'release', domain: domainRef(m.domain, true)! };
    case 'exec-plan':
      return { v: 1, id, op: 'exec-plan', emulator: emulatorPath(m.emulator), argv: execArgv(m.argv) };
    case 'device-plan':
      return { v: 1, id, op: 'device-plan', emulator: emulatorPath(m.emulator), line64: qmpLine(m.line64) };
    case 'hook':
      return { v: 1, id, op: 'hook', ...hookFields(m) };
    default:
      throw bad(`unknown op ${JSON.stringify(m.op)}`);
  }
}

export function encode(msg: Request | Reply): Buffer {
  return Buffer.from(JSON.stringify(msg) + '\n');
}

export function errorReply(id: number, e: unknown): Reply {
  const err =
    e instanceof VirtEbpfError
      ? { code: e.code, message: e.message, remedy: e.remedy }
      : { code: 'BROKER_INTERNAL', message: `broker internal error: ${(e as Error)?.message ?? String(e)}`, remedy: 'see the broker log (journalctl -u virt-ebpfd)' };
  return { v: 1, id, ok: false, error: err };
}

/** Parse a reply line (client side); a failure reply becomes the broker's VirtEbpfError. */
export function parseReply(line: string, expectId: number): Exclude<Reply, { ok: false }> {
  let m: unknown;
  try {
    m = JSON.parse(line);
  } catch {
    throw bad('broker reply is not JSON');
  }
  // id 0: a refusal the broker sends before reading any request (not allowed, too many connections).
  if (!isJsonObject(m) || m.v !== PROTOCOL_VERSION || !(m.id === expectId || (m.id === 0 && m.ok === false)) || typeof m.ok !== 'boolean') {
    throw bad('broker reply has the wrong shape or id');
  }
  if (m.ok === false) {
    const err = isJsonObject(m.error) ? m.error : {};
    throw new VirtEbpfError((String(err.code ?? 'BROKER_REFUSED') as ErrorCode), `broker: ${String(err.message ?? 'request refused')}`, {
      remedy: String(err.remedy ?? 'see the broker log'),
    });
  }
  return m as Exclude<Reply, { ok: false }>;
}
