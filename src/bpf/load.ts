/**
 * The one privileged step: turn validated RSS object bytes into kernel objects and hand back
 * owned fds in `ebpf-rss-fds` order. libbpf creates the maps and runs the verifier; we keep
 * close-on-exec duplicates of its fds and close the libbpf object straight away, so nothing
 * else of libbpf's state outlives the call.
 */
import { tail, VirtEbpfError } from '../errors';
import { bpfFdInfo, closeAll, OwnedFd } from '../fdpass';
import * as libc from '../sys/libc';
import { LibbpfObject, withLibbpfMessages } from './libbpf';
import { BPF_PROG_TYPE_SOCKET_FILTER, RSS_MAPS, RSS_PROGRAM, validateRssSpec } from './rss';
import { parseBpfObject, type BpfSpec } from './spec';

const EPERM = 1;
const EACCES = 13;

export interface LoadRssOptions {
  /** Bytes for the verifier log, used only when a load fails (libbpf retries at log level 1). Default 1 MiB. */
  logSize?: number;
  /** libbpf object name (appears in libbpf's messages). Default "virt_ebpf_rss". */
  objectName?: string;
  /** Every libbpf message, debug level included, e.g. to forward to a debug logger. */
  onLibbpfMessage?: (level: number, text: string) => void;
  /** Library to load instead of libbpf.so.1 (tests). */
  libbpfSoname?: string;
}

/** A loaded RSS program with its three maps, owned by the caller. */
export interface RssContext {
  /** [program, configuration, toeplitz key, indirection table]: RSS_ROLES order, close-on-exec */
  readonly fds: readonly OwnedFd[];
  readonly progId: number;
  /** [configuration, toeplitz key, indirection table] */
  readonly mapIds: readonly number[];
  readonly spec: BpfSpec;
  /** Close every fd not yet taken. Idempotent. */
  close(): void;
}

/** parse + validate: pure, no privilege. Throws BPF_BAD_ELF or BPF_UNEXPECTED_OBJECT. */
export function parseRssObject(bytes: Buffer): BpfSpec {
  return validateRssSpec(parseBpfObject(bytes));
}

/**
 * An RSS object that passed `parseRssObject`, for loading it many times without parsing it
 * again. Only `validateRssObject` makes one; its bytes are a private copy no caller can change
 * after the check.
 */
export interface ValidatedRssObject {
  readonly spec: BpfSpec;
}

const validatedBytes = new WeakMap<ValidatedRssObject, Buffer>();

/** parse + validate once; `loadRss` takes the result as it is. */
export function validateRssObject(bytes: Buffer): ValidatedRssObject {
  const copy = Buffer.from(bytes);
  const object = Object.freeze({ spec: parseRssObject(copy) });
  validatedBytes.set(object, copy);
  return object;
}

/**
 * Load QEMU's RSS object into the kernel: bytes are validated first, a `ValidatedRssObject` was.
 * Synchronous: it blocks the calling thread for the verifier's run, about 30–150 ms; the broker
 * loads with `loadRssAsync` instead.
 */
export function loadRss(object: Buffer | ValidatedRssObject, opts: LoadRssOptions = {}): RssContext {
  // Never hand libbpf an object that failed validation.
  const { bytes, spec } = Buffer.isBuffer(object) ? { bytes: object, spec: parseRssObject(object) } : validated(object);
  const { log, release } = logBuffer(opts.logSize ?? 1 << 20);
  try {
    return withLibbpfMessages((messages) => {
      let obj: LibbpfObject | undefined;
      try {
        const opened = open(bytes, log, opts);
        obj = opened.obj;
        return collect(opened, obj.load(), log, messages, spec);
      } catch (e) {
        throw loadFailure(e, messages);
      } finally {
        obj?.close();
      }
    }, opts.onLibbpfMessage);
  } finally {
    release();
  }
}

/**
 * `loadRss` with the verifier's run on a thread of libuv's pool at nice `nice`
 * (LibbpfObject.loadAsync): the calling thread keeps running meanwhile, and several loads run at
 * once. libbpf's messages are not collected (it runs without its print callback; the verifier's
 * log still comes through the program's log buffer). `onNiceStuck`: the pool thread's nice could
 * not be set or put back (see niced-load.c).
 */
export async function loadRssAsync(
  object: ValidatedRssObject,
  nice: number,
  opts: Pick<LoadRssOptions, 'logSize' | 'objectName' | 'libbpfSoname'> & { onNiceStuck?: () => void } = {},
): Promise<RssContext> {
  const { bytes, spec } = validated(object);
  const { log, release } = logBuffer(opts.logSize ?? 1 << 20);
  let obj: LibbpfObject | undefined;
  try {
    const opened = open(bytes, log, opts);
    obj = opened.obj;
    const { rc, niceStuck } = await obj.loadAsync(nice);
    if (niceStuck) opts.onNiceStuck?.();
    return collect(opened, rc, log, [], spec);
  } catch (e) {
    throw loadFailure(e, []);
  } finally {
    obj?.close();
    release();
  }
}

interface Opened {
  obj: LibbpfObject;
  prog: unknown;
  maps: Array<{ name: string; handle: unknown }>;
}

/** Open the object in libbpf, ready to load: the program typed as QEMU types it, its log in `log`. */
function open(bytes: Buffer, log: Buffer, opts: LoadRssOptions): Opened {
  const obj = LibbpfObject.open(bytes, opts.objectName ?? 'virt_ebpf_rss', opts.libbpfSoname);
  try {
    const prog = obj.program(RSS_PROGRAM);
    const maps = RSS_MAPS.map((m) => ({ name: m.name, handle: obj.map(m.name) }));
    const missing = [...(prog ? [] : [`program ${RSS_PROGRAM}`]), ...maps.filter((m) => !m.handle).map((m) => `map ${m.name}`)];
    if (missing.length > 0) {
      throw new VirtEbpfError('BPF_LOAD', `libbpf does not see ${missing.join(', ')} in the RSS object`, {
        remedy: 'the object parses differently in libbpf than in virt-ebpf; report this with the libbpf version',
      });
    }
    obj.setProgramType(prog, BPF_PROG_TYPE_SOCKET_FILTER); // as QEMU does before loading
    obj.setProgramLog(prog, log, 0);
    return { obj, prog, maps };
  } catch (e) {
    obj.close();
    throw e;
  }
}

/** After bpf_object__load returned `rc`: close-on-exec duplicates of its fds, in `ebpf-rss-fds` order. */
function collect({ obj, prog, maps }: Opened, rc: number, log: Buffer, messages: string[], spec: BpfSpec): RssContext {
  if (rc < 0) throw loadError(-rc, verifierLog(log), messages);
  const owned: OwnedFd[] = [];
  try {
    for (const fd of [obj.programFd(prog), ...maps.map((m) => obj.mapFd(m.handle))]) {
      if (fd < 0) throw new VirtEbpfError('BPF_LOAD', 'libbpf reported success but returned no fd', { remedy: 'report this with the libbpf version' });
      // libbpf's own fds die with the object; ours must outlive it and must not leak into children.
      owned.push(new OwnedFd(libc.dupCloexec(fd)));
    }
  } catch (e) {
    closeAll(owned);
    throw e;
  }
  return makeContext(owned, spec);
}

/** A failed load as the caller sees it: a VirtEbpfError with libbpf's messages as its detail. */
function loadFailure(e: unknown, messages: string[]): VirtEbpfError {
  if (!(e instanceof VirtEbpfError)) {
    return new VirtEbpfError('BPF_LOAD', `loading the RSS eBPF object failed: ${(e as Error).message}`, {
      remedy: 'report this with the libbpf version',
      detail: messages.join('\n') || undefined,
      cause: e,
    });
  }
  if (e.detail === undefined && messages.length > 0) {
    return new VirtEbpfError(e.code, e.message, { remedy: e.remedy, detail: messages.join('\n'), cause: e.cause, fields: e.fields });
  }
  return e;
}

function validated(object: ValidatedRssObject): { bytes: Buffer; spec: BpfSpec } {
  const bytes = validatedBytes.get(object);
  if (!bytes) throw new TypeError('loadRss takes bytes or what validateRssObject returned');
  return { bytes, spec: object.spec };
}

/** Verifier-log buffers not in use, kept for the next loads (at most KEPT_LOGS). */
const freeLogs: Buffer[] = [];
const KEPT_LOGS = 8;

/** Let go of the kept verifier-log buffers (an idle broker holds none). */
export function dropLogBuffers(): void {
  freeLogs.length = 0;
}

/**
 * A verifier log's buffer, and its release. libbpf writes it only when a load fails, so buffers
 * are reused: a load takes a free one and gives it back, and at most KEPT_LOGS are kept (as many
 * as loads run at once, here or on the thread's async loads). Its first byte is cleared, so a
 * failure the kernel wrote no log for does not read an earlier one. The kernel refuses log
 * buffers under 128 bytes and over 1 GiB; its log keeps the tail (the reason) when it overflows.
 */
function logBuffer(requested: number): { log: Buffer; release(): void } {
  const size = Math.min(Math.max(requested, 4096), 1 << 30);
  const at = freeLogs.findIndex((b) => b.length === size);
  const log = at >= 0 ? freeLogs.splice(at, 1)[0] : Buffer.alloc(size);
  log[0] = 0;
  return {
    log,
    release: () => {
      if (freeLogs.length < KEPT_LOGS) freeLogs.push(log);
    },
  };
}

function makeContext(fds: OwnedFd[], spec: BpfSpec): RssContext {
  try {
    const infos = fds.map((f) => bpfFdInfo(f.fd));
    if (infos[0].kind !== 'prog' || infos.slice(1).some((i) => i.kind !== 'map')) throw new Error(`unexpected fd kinds ${infos.map((i) => i.kind).join(',')}`);
    return {
      fds,
      progId: infos[0].id!,
      mapIds: infos.slice(1).map((i) => i.id!),
      spec,
      close: () => closeAll(fds),
    };
  } catch (e) {
    closeAll(fds);
    throw new VirtEbpfError('BPF_LOAD', `cannot identify the loaded BPF fds: ${(e as Error).message}`, { remedy: 'check that /proc is mounted', cause: e });
  }
}

function verifierLog(buf: Buffer): string {
  const end = buf.indexOf(0);
  return buf.toString('utf8', 0, end < 0 ? buf.length : end).trim();
}

/**
 * Why, in one line: the verifier prints the failing instruction, then its complaint, then
 * statistics. Take the lines between the last instruction and the statistics.
 */
export function verifierReason(log: string): string {
  const lines = log.split('\n').map((l) => l.trim()).filter(Boolean);
  let end = lines.findIndex((l) => /^processed \d+ insns/.test(l));
  if (end < 0) end = lines.length;
  let insn = -1;
  for (let i = end - 1; i >= 0; i--) {
    if (/^\d+: \(/.test(lines[i])) {
      insn = i;
      break;
    }
  }
  const why = lines.slice(insn + 1, end).join('; ') || lines[end - 1] || 'no reason given';
  const at = insn >= 0 ? /^(\d+): \([0-9a-f]+\) ([^;]*)/.exec(lines[insn]) : null;
  const text = at ? `at instruction ${at[1]} (${at[2].trim()}): ${why}` : why;
  return text.length > 200 ? text.slice(0, 199) + '…' : text;
}

function loadError(errno: number, log: string, messages: string[]): VirtEbpfError {
  const fields = { errno, errnoName: libc.strerror(errno) };
  // The verifier reports most rejections as EACCES too, so the log decides, not the errno.
  if (log !== '') {
    return new VirtEbpfError('BPF_VERIFIER', `the kernel verifier rejected ${RSS_PROGRAM}: ${verifierReason(log)}`, {
      remedy: 'this QEMU eBPF object does not verify on this kernel; use the QEMU and kernel versions it was built for, and see the detail for the verifier log',
      detail: [log, '', ...messages].join('\n').trim(),
      fields: { ...fields, summary: tail(log) },
    });
  }
  if (errno === EPERM || errno === EACCES) {
    return new VirtEbpfError('BPF_PERMISSION', `loading BPF was refused: ${libc.strerror(errno)}`, {
      remedy: 'loading BPF needs root/CAP_BPF; run as root',
      detail: messages.join('\n') || undefined,
      fields,
    });
  }
  return new VirtEbpfError('BPF_LOAD', `loading the RSS eBPF object failed: ${libc.strerror(errno)} (errno ${errno})`, {
    remedy: 'check that the kernel supports BPF array maps with BPF_F_MMAPABLE (Linux 5.5+); see the detail for libbpf messages',
    detail: messages.join('\n') || undefined,
    fields,
  });
}
