/**
 * The broker's wire protocol, version 1: one JSON object per line over an AF_UNIX stream.
 * A reply that hands over fds carries them (SCM_RIGHTS) on the same sendmsg as its line.
 * Pure: parsing and validation of requests and replies; no sockets here.
 */
import { VirtEbpfError, ErrorCode } from '../errors';

export const PROTOCOL_VERSION = 1;
export const MAX_LINE = 64 * 1024;
export const MAX_CONTEXTS_PER_REQUEST = 16; // 16 × 4 fds stays far below SCM_MAX_FD (253)

export interface DomainRef {
  name?: string;
  uuid?: string;
}

export type Request =
  | { v: 1; id: number; op: 'hello' }
  | { v: 1; id: number; op: 'acquire'; emulator: string; count: number; domain?: DomainRef }
  | { v: 1; id: number; op: 'prewarm'; emulator: string; count: number; domain?: DomainRef }
  | { v: 1; id: number; op: 'release'; domain: DomainRef }
  | { v: 1; id: number; op: 'status' };

export type Op = Request['op'];

export interface ContextDescriptor {
  protocol: 'request-ebpf' | 'helper';
  property: { name: 'ebpf-rss-fds'; type: 'list' } | { name: 'ebpf_rss_fds'; type: 'string' };
  /** how many of the attached fds belong to this context, in order */
  fds: number;
  progId?: number;
  mapIds?: number[];
}

export type Reply =
  | { v: 1; id: number; ok: true; op: 'hello'; broker: string; version: string; uid: number }
  | { v: 1; id: number; ok: true; op: 'acquire'; contexts: ContextDescriptor[]; propTypes: Record<string, string> }
  | { v: 1; id: number; ok: true; op: 'prewarm'; ready: number }
  | { v: 1; id: number; ok: true; op: 'release'; dropped: number }
  | { v: 1; id: number; ok: true; op: 'status'; pools: Array<{ emulator: string; ready: number; target: number }>; peers: number }
  | { v: 1; id: number; ok: false; error: { code: string; message: string; remedy: string } };

function bad(message: string): VirtEbpfError {
  return new VirtEbpfError('BROKER_PROTOCOL', message, { remedy: 'use a virt-ebpf client of the same version as the broker' });
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function domainRef(v: unknown, required: boolean): DomainRef | undefined {
  if (v === undefined && !required) return undefined;
  if (!isObj(v)) throw bad('"domain" must be an object with name and/or uuid');
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
};

/** Parse one request line; throws BROKER_PROTOCOL naming the problem. */
export function parseRequest(line: string): Request {
  if (line.length > MAX_LINE) throw bad(`request longer than ${MAX_LINE} bytes`);
  let m: unknown;
  try {
    m = JSON.parse(line);
  } catch {
    throw bad('request is not JSON');
  }
  if (!isObj(m)) throw bad('request is not a JSON object');
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
  if (!isObj(m) || m.v !== PROTOCOL_VERSION || m.id !== expectId || typeof m.ok !== 'boolean') throw bad('broker reply has the wrong shape or id');
  if (m.ok === false) {
    const err = isObj(m.error) ? m.error : {};
    throw new VirtEbpfError((String(err.code ?? 'BROKER_REFUSED') as ErrorCode), `broker: ${String(err.message ?? 'request refused')}`, {
      remedy: String(err.remedy ?? 'see the broker log'),
    });
  }
  return m as Exclude<Reply, { ok: false }>;
}
