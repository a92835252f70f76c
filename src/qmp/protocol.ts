/**
 * QMP protocol on top of the transport: greeting, capability negotiation, one id per command,
 * replies matched by id, events kept apart from replies. Every wait has a deadline, and a
 * connection that misbehaves (non-JSON, unknown reply) is closed, failing everything pending:
 * a half-understood monitor stream cannot be trusted for the next reply either.
 */
import { VirtEbpfError } from '../errors';
import { ConnectOptions, QmpTransport, TransportOptions } from './connection';
import { isJsonObject } from '../json';

export const DEFAULT_GREETING_TIMEOUT_MS = 10_000;
export const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;

export interface QmpGreeting {
  version: { major: number; minor: number; micro: number; package: string };
  capabilities: string[];
  /** the greeting object exactly as received */
  raw: Record<string, unknown>;
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpErrorBody {
  class: string;
  desc: string;
}

/** A reply as QEMU sent it, minus the id. */
export type QmpReply = { return: unknown } | { error: QmpErrorBody };

export interface ClientOptions extends TransportOptions {
  greetingTimeoutMs?: number;
  /** default per-command timeout (each call may override it) */
  commandTimeoutMs?: number;
  /** how many recent events to keep for waitForEvent (default 64) */
  keepEvents?: number;
  /** debug tap: every line sent ('>') and received ('<') */
  trace?: (direction: '>' | '<', line: string) => void;
}

export interface ExecuteOptions {
  timeoutMs?: number;
  /** fds to send with this command (SCM_RIGHTS); borrowed, see QmpTransport.send */
  fds?: readonly number[];
}

interface Pending {
  command: string;
  resolve(reply: QmpReply): void;
  reject(e: VirtEbpfError): void;
  timer: NodeJS.Timeout;
}

type EventListener = (e: QmpEvent) => void;

function protocolError(message: string, line?: string): VirtEbpfError {
  return new VirtEbpfError('QMP_PROTOCOL', message, {
    remedy: 'make sure the socket is a QEMU QMP monitor and nothing else writes to it',
    detail: line === undefined ? undefined : line.length > 400 ? `${line.slice(0, 400)}…` : line,
  });
}

function parseObject(line: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    throw protocolError('QMP peer sent a line that is not JSON', line);
  }
  if (!isJsonObject(v)) throw protocolError('QMP peer sent JSON that is not an object', line);
  return v;
}

/** Pure: validate the greeting line's object. */
export function parseGreeting(obj: Record<string, unknown>): QmpGreeting {
  const qmp = obj.QMP;
  const ver = isJsonObject(qmp) && isJsonObject(qmp.version) ? qmp.version : undefined;
  const q = ver && isJsonObject(ver.qemu) ? ver.qemu : undefined;
  const ok =
    q !== undefined &&
    [q.major, q.minor, q.micro].every((n) => Number.isInteger(n) && (n as number) >= 0) &&
    isJsonObject(qmp) &&
    Array.isArray(qmp.capabilities) &&
    qmp.capabilities.every((c) => typeof c === 'string');
  if (!ok) throw protocolError('QMP peer did not start with a QMP greeting', JSON.stringify(obj));
  return {
    version: { major: q!.major as number, minor: q!.minor as number, micro: q!.micro as number, package: typeof ver!.package === 'string' ? ver!.package : '' },
    capabilities: (qmp as { capabilities: string[] }).capabilities,
    raw: obj,
  };
}

export function commandError(command: string, body: QmpErrorBody): VirtEbpfError {
  return new VirtEbpfError('QMP_COMMAND', `QMP ${command} failed: ${body.desc} (${body.class})`, {
    remedy: 'see the QEMU error above; check the command arguments and the QEMU version',
    fields: { command, class: body.class, desc: body.desc },
  });
}

export class QmpClient {
  readonly #t: QmpTransport;
  readonly #opts: ClientOptions;
  #greeting: QmpGreeting | null = null;
  #greetingWaiter: { resolve(g: QmpGreeting): void; reject(e: VirtEbpfError): void; timer: NodeJS.Timeout } | null = null;
  #nextId = 1;
  #pending = new Map<number, Pending>();
  /** ids whose caller gave up (timeout): their late replies are dropped, not a protocol error */
  #abandoned = new Set<number>();
  #events: QmpEvent[] = [];
  #eventListeners: EventListener[] = [];

  // Listeners are attached before the first byte is read, so nothing sent right after the
  // greeting (in the same chunk) can slip past us.
  private constructor(t: QmpTransport, opts: ClientOptions) {
    this.#t = t;
    this.#opts = opts;
    t.onLine((line) => this.#onLine(line));
    t.onClose((reason) => this.#onClose(reason));
  }

  /** Connect to a QMP unix socket and negotiate capabilities. */
  static async connect(path: string, opts: ClientOptions & Pick<ConnectOptions, 'timeoutMs'> = {}): Promise<QmpClient> {
    return QmpClient.open(await QmpTransport.connect(path, opts), opts);
  }

  /** Read the greeting and leave capability negotiation mode. Closes the transport on failure. */
  static async open(t: QmpTransport, opts: ClientOptions = {}): Promise<QmpClient> {
    const client = new QmpClient(t, opts);
    const timeoutMs = opts.greetingTimeoutMs ?? DEFAULT_GREETING_TIMEOUT_MS;
    try {
      await new Promise<QmpGreeting>((resolve, reject) => {
        const reason = t.closeReason;
        if (reason) return reject(reason);
        const timer = setTimeout(() => {
          client.#greetingWaiter = null;
          reject(
            new VirtEbpfError('QMP_TIMEOUT', `no QMP greeting within ${timeoutMs} ms`, {
              remedy: 'the peer is not a QMP server, or QEMU is stuck starting; check its log',
              fields: { timeoutMs },
            }),
          );
        }, timeoutMs);
        client.#greetingWaiter = { resolve, reject, timer };
      });
      await client.execute('qmp_capabilities', undefined, { timeoutMs });
    } catch (e) {
      t.close();
      throw e;
    }
    return client;
  }

  get greeting(): QmpGreeting {
    if (!this.#greeting) throw new Error('QMP greeting not received yet');
    return this.#greeting;
  }

  get closed(): boolean {
    return this.#t.closed;
  }

  /** Recent events, oldest first (bounded by keepEvents). */
  get events(): readonly QmpEvent[] {
    return this.#events;
  }

  /** Subscribe to events; returns the unsubscribe function. */
  onEvent(listener: EventListener): () => void {
    this.#eventListeners.push(listener);
    return () => {
      this.#eventListeners = this.#eventListeners.filter((l) => l !== listener);
    };
  }

  /** Resolves with the first event named `name` received from now on, or already kept when `includePast`. */
  waitForEvent(name: string, timeoutMs: number, includePast = false): Promise<QmpEvent> {
    const past = includePast ? this.#events.find((e) => e.event === name) : undefined;
    if (past) return Promise.resolve(past);
    return new Promise((resolve, reject) => {
      const off = this.onEvent((e) => {
        if (e.event !== name) return;
        clearTimeout(timer);
        off();
        resolve(e);
      });
      const timer = setTimeout(() => {
        off();
        reject(new VirtEbpfError('QMP_TIMEOUT', `no QMP event ${name} within ${timeoutMs} ms`, { remedy: 'check the QEMU state; the event may never come' }));
      }, timeoutMs);
    });
  }

  /** Run a command and return QEMU's reply as is, error replies included. */
  executeRaw(command: string, args?: Record<string, unknown>, opts: ExecuteOptions = {}): Promise<QmpReply> {
    const reason = this.#t.closeReason;
    if (reason) return Promise.reject(reason);
    const id = this.#nextId++;
    const msg: Record<string, unknown> = { execute: command };
    if (args !== undefined) msg.arguments = args;
    msg.id = id;
    const line = JSON.stringify(msg);
    const timeoutMs = opts.timeoutMs ?? this.#opts.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    return new Promise<QmpReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        this.#abandoned.add(id);
        reject(
          new VirtEbpfError('QMP_TIMEOUT', `QMP ${command} got no reply within ${timeoutMs} ms`, {
            remedy: 'QEMU is busy or hung; retry, or raise the timeout',
            fields: { command, timeoutMs },
          }),
        );
      }, timeoutMs);
      this.#pending.set(id, { command, resolve, reject, timer });
      this.#opts.trace?.('>', line);
      this.#t.send(line, opts.fds ?? []).catch((e: VirtEbpfError) => {
        const p = this.#pending.get(id);
        if (!p) return;
        this.#pending.delete(id);
        clearTimeout(p.timer);
        p.reject(e);
      });
    });
  }

  /** Run a command; an error reply becomes VirtEbpfError QMP_COMMAND with QEMU's class and desc. */
  async execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: ExecuteOptions = {}): Promise<T> {
    const reply = await this.executeRaw(command, args, opts);
    if ('error' in reply) throw commandError(command, reply.error);
    return reply.return as T;
  }

  close(): void {
    this.#t.close();
  }

  /** Resolves once the connection has ended, for whatever reason. */
  whenClosed(): Promise<VirtEbpfError> {
    return new Promise((resolve) => this.#t.onClose(resolve));
  }

  #onLine(line: string): void {
    this.#opts.trace?.('<', line);
    let obj: Record<string, unknown>;
    try {
      obj = parseObject(line);
    } catch (e) {
      return this.#fatal(e as VirtEbpfError);
    }
    if (this.#greeting === null) {
      try {
        this.#greeting = parseGreeting(obj);
      } catch (e) {
        return this.#fatal(e as VirtEbpfError);
      }
      const w = this.#greetingWaiter;
      this.#greetingWaiter = null;
      if (w) {
        clearTimeout(w.timer);
        w.resolve(this.#greeting);
      }
      return;
    }
    if (typeof obj.event === 'string') return this.#onEvent(obj);
    const hasReturn = 'return' in obj;
    const err: QmpErrorBody | null = isJsonObject(obj.error) && typeof obj.error.class === 'string' && typeof obj.error.desc === 'string' ? { class: obj.error.class, desc: obj.error.desc } : null;
    const errOk = err !== null;
    if (hasReturn === ('error' in obj) || ('error' in obj && !errOk)) {
      return this.#fatal(protocolError('QMP peer sent a line that is neither a reply nor an event', line));
    }
    const id = obj.id;
    if (typeof id !== 'number' || !this.#pending.has(id)) {
      if (typeof id === 'number' && this.#abandoned.delete(id)) return;
      // We always send an id; QEMU omits it only when it could not parse our request.
      const why = err ? `: ${err.desc}` : '';
      return this.#fatal(protocolError(`QMP reply with unknown id ${JSON.stringify(id)}${why}`, line));
    }
    const p = this.#pending.get(id)!;
    this.#pending.delete(id);
    clearTimeout(p.timer);
    p.resolve(hasReturn ? { return: obj.return } : { error: err! });
  }

  #onEvent(obj: Record<string, unknown>): void {
    const ev: QmpEvent = { event: obj.event as string };
    if (isJsonObject(obj.data)) ev.data = obj.data;
    const ts = obj.timestamp;
    if (isJsonObject(ts) && typeof ts.seconds === 'number' && typeof ts.microseconds === 'number') ev.timestamp = { seconds: ts.seconds, microseconds: ts.microseconds };
    this.#events.push(ev);
    const keep = this.#opts.keepEvents ?? 64;
    if (this.#events.length > keep) this.#events.splice(0, this.#events.length - keep);
    for (const l of [...this.#eventListeners]) l(ev);
  }

  #fatal(e: VirtEbpfError): void {
    // Reject with the real reason, not the generic "closed" the transport would report.
    this.#rejectAll(e);
    this.#t.close();
  }

  #onClose(reason: VirtEbpfError): void {
    this.#rejectAll(reason);
  }

  #rejectAll(e: VirtEbpfError): void {
    const w = this.#greetingWaiter;
    this.#greetingWaiter = null;
    if (w) {
      clearTimeout(w.timer);
      w.reject(e);
    }
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(e);
    }
  }
}
