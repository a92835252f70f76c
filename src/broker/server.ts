/**
 * virt-ebpfd: the only privileged piece. Accepts authenticated peers (SO_PEERCRED against an
 * allowlist), answers versioned JSON requests, and hands over fds it loaded itself from
 * emulators it allows. It never reads bytecode from a peer: the protocol has no field for it.
 *
 * What a peer can make the broker hold is bounded: connections per process and per account
 * (src/broker/admission.ts), bytes and requests in flight per connection, how long a peer may
 * idle or leave a request or a reply unfinished (src/broker/connection.ts), contexts per
 * request and reserved contexts (src/broker/pool.ts). No peer can make it die: a failed send
 * costs that connection only. Reservations are made by libvirt's hook (root) only, and a
 * QEMU-account peer takes only from the reservation of its own domain (src/broker/peer.ts).
 */
import net from 'node:net';
import { chmodSync, mkdirSync, unlinkSync, existsSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import * as libc from '../sys/libc';
import { VirtEbpfError } from '../errors';
import { closeAll } from '../fdpass';
import type { Logger } from '../log';
import { ContextPool, LoadedContext, PoolSource, type RefillTiming, type ReservationLimits } from './pool';
import { errorReply, fdPlaceholder, MAX_CONTEXTS_PER_REQUEST, MAX_LINE, MAX_PEER_LINE, MAX_PENDING_PER_PROCESS, MAX_PENDING_PER_UID, parseRequest, Reply, Request, DomainRef } from './protocol';
import { applyHostRss, domainIdentity, type HostRss } from '../argv';
import { finalArgv, planDevices } from '../exec/plan';
import type { FactsMemo } from '../hook/facts';
import { Connection, ConnectionLimits, LINGER_MS, type PendingBytes } from './connection';
import { Admissions } from './admission';
import { identifyPeer, MAX_HELD_PEERS, normalUuid, Peer, PeerDomains } from './peer';
import { DEFAULT_POLICY, type DomainSettings, Policy, readDomainState, removeDomainState, type StateWriter, writeDomainState } from '../policy';
import { liveDomainXml } from '../policy/live';
import { XML_NAMESPACE } from '../shims/constants';
import { planDeviceAdd, propertyValue, RSS_HANDOFF, type HandoffKind } from '../argv';
import { isVirtEbpfError } from '../errors';
import { MAX_SPLICE } from './protocol';

export const BROKER_VERSION = '0.1.0';
/** How long a refused peer may keep its end open after our one-line reply. */
export const REFUSED_LINGER_MS = LINGER_MS;
/** Connections the broker keeps open at all (refused ones lingering included). */
export const MAX_CONNECTIONS = 1024;
/** How often the broker checks that its socket is still where peers look for it. */
export const SOCKET_CHECK_MS = 2_000;
/** Refused connections allowed to linger for their one-line reply; beyond, they are cut at once. */
const MAX_LINGERING = 64;

export interface Allowlist {
  uids: ReadonlySet<number>;
  gids: ReadonlySet<number>;
}

export interface BrokerLimits extends Omit<ConnectionLimits, 'maxLine' | 'maxOutstanding'> {
  maxConnectionsPerUid: number;
  maxConnectionsPerProcess: number;
  maxOutstandingPerConnection: number;
  contextsPerMinute: number;
}

export const DEFAULT_LIMITS: BrokerLimits = {
  contextsPerMinute: 64,
  maxConnectionsPerUid: 64,
  maxConnectionsPerProcess: 4,
  maxOutstandingPerConnection: 4,
  idleTimeoutMs: 5_000,
  requestTimeoutMs: 10_000,
  writeTimeoutMs: 5_000,
};

export interface BrokerOptions {
  socket: string;
  allow: Allowlist;
  poolSize: number;
  /** when refills wait for starts to settle (default DEFAULT_REFILL_TIMING) */
  refillTiming?: RefillTiming;
  reservations?: ReservationLimits;
  /** run when the broker closes (the loader refuses what is left and waits for its loads under way) */
  onClose?: () => Promise<void>;
  maxReservedPerDomain: number;
  limits?: Partial<BrokerLimits>;
  /** resolve an emulator path to its pool source (allowlist, trust, probe); throws a VirtEbpfError */
  resolve(emulator: string, kind?: string): Promise<PoolSource & { propTypes: Record<string, string> }>;
  logger: Logger;
  /** listen on an inherited fd (systemd socket activation) instead of binding `socket` */
  listenFd?: number;
  /** where the bindings of QEMU-account processes to their domains outlive the broker (PeerDomains' store) */
  peerStore?: string;
  /**
   * where the `hook` op (and exec-plan) keep domain state, the `hook` op finds the install
   * manifest, and exec-plan finds libvirt's status XMLs (tests: scratch dirs)
   */
  hookEnv?: { stateDir?: string; manifest?: string; libvirtRunDir?: string };
  /** the host's policy for a domain that recorded none (config.json `policy`; default strict) */
  policy?: Policy;
  /**
   * The host-wide policy on devices (`install --host-wide`): 'multiqueue' turns rss on for
   * multiqueue virtio-net devices that say nothing of rss, at start and at hot-plug. Asked at
   * each plan (an install can change it while the broker runs); default 'off'.
   */
  hostRss?: () => HostRss;
  /**
   * The install has no libvirt hook (`install --no-hook`): exec-plan reads a starting domain's
   * settings from libvirt's status XML. Asked at each plan; default false.
   */
  hookless?: () => boolean;
}

/** The pool key of a domain: its uuid (lower case), else its name. */
function domainKey(d?: DomainRef): string | undefined {
  if (!d) return undefined;
  return normalUuid(d.uuid) ?? (d.uuid !== undefined ? `uuid:${d.uuid}` : `name:${d.name}`);
}

function fdOf(sock: net.Socket): number {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('socket has no fd');
  return fd;
}

interface Slot {
  uid: number;
  pid: number;
  conn: Connection;
  idle(): boolean;
  lastActive(): number;
  lineSince(): number;
}

interface Ctx {
  conn: Connection;
  peer: Peer;
  log: Logger;
  t0: bigint;
}

const denied = (message: string, remedy: string) => new VirtEbpfError('BROKER_DENIED', message, { remedy });

/**
 * What makes QEMU refuse a device_add with our reason: the reason where the fd names go. QEMU
 * looks the names up one by one and fails on the first, with "File descriptor named '<reason>'
 * has not been found". Bounded: the shim splices at most MAX_SPLICE bytes.
 */
export function refusal(why: string, kind: HandoffKind = RSS_HANDOFF): string {
  const max = Math.floor((MAX_SPLICE - 64) / 4 / 6); // each character may become \uXXXX
  const text = why.length > max ? `${why.slice(0, max - 1)}…` : why;
  const prop = kind.properties[0];
  // A property written as one string splits its names at ':'; the reason keeps its colons as '꞉'.
  const name = prop.type === 'string' ? text.replace(/:/g, '\ua789') : text;
  return `${JSON.stringify(prop.name)}:${JSON.stringify(propertyValue(prop, Array(kind.fdsPerContext).fill(name)))},`;
}

export class Broker {
  readonly pool: ContextPool;
  /** domain XML facts for the hook op: a restart of a domain is not parsed again */
  #facts?: FactsMemo;
  #server?: net.Server;
  #socketCheck?: NodeJS.Timeout;
  #relistening = false;
  readonly #admissions: Admissions<Slot>;
  readonly #limits: BrokerLimits;
  #lingering = 0;
  /** contexts handed to each domain (or pid) of the QEMU account in the current minute */
  readonly #budget = new Map<string, { since: number; used: number }>();
  /** last time each kind of peer problem was logged (a flood is logged once a second, not per line) */
  readonly #logged = new Map<string, number>();
  /** the domain of each QEMU-account process, as read at its first connection */
  readonly #peerDomains: PeerDomains;
  /** per account (uid), the bytes of unfinished request lines its connections hold */
  readonly #pending = new Map<number, PendingBytes>();
  /** per process, the same, and how many connections it has open */
  readonly #pendingByPid = new Map<number, PendingBytes & { connections: number }>();

  constructor(private readonly opts: BrokerOptions) {
    this.#limits = { ...DEFAULT_LIMITS, ...opts.limits };
    this.#admissions = new Admissions(this.#limits);
    this.#peerDomains = new PeerDomains(MAX_HELD_PEERS, opts.peerStore);
    this.pool = new ContextPool(opts.poolSize, (e, key) => opts.logger.warn('pool refill failed', { key, error: (e as Error).message }), opts.refillTiming, opts.reservations);
  }

  async start(): Promise<void> {
    await this.#listen();
    this.opts.logger.info('broker listening', { socket: this.opts.listenFd !== undefined ? `fd ${this.opts.listenFd}` : this.opts.socket, version: BROKER_VERSION });
    if (this.opts.listenFd === undefined) {
      this.#socketCheck = setInterval(() => void this.#checkSocket(), SOCKET_CHECK_MS);
      this.#socketCheck.unref();
    }
  }

  async #listen(): Promise<void> {
    const server = net.createServer((sock) => this.#accept(sock));
    server.maxConnections = MAX_CONNECTIONS;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if (this.opts.listenFd !== undefined) {
        server.listen({ fd: this.opts.listenFd }, resolve);
      } else {
        mkdirSync(dirname(this.opts.socket), { recursive: true, mode: 0o755 });
        if (existsSync(this.opts.socket) && statSync(this.opts.socket).isSocket()) unlinkSync(this.opts.socket);
        server.listen(this.opts.socket, () => {
          // Anyone may connect; SO_PEERCRED decides who is answered.
          chmodSync(this.opts.socket, 0o666);
          resolve();
        });
      }
    });
    server.on('error', (e) => this.opts.logger.error('listening socket failed', { error: e.message }));
    this.#server = server;
  }

  /**
   * Peers find the broker by its socket's path: when that path is gone (/run/virt-ebpf removed,
   * say), listen there again. Connections already open go on.
   */
  async #checkSocket(): Promise<void> {
    if (this.#relistening || existsSync(this.opts.socket)) return;
    this.#relistening = true;
    try {
      // Closing a unix socket server unlinks its path (at once; its callback waits for every
      // connection to end, which a peer could put off): the old one goes first, unawaited.
      this.#server?.close();
      await this.#listen();
      this.opts.logger.warn('the broker socket was gone: listening on it again', { socket: this.opts.socket });
    } catch (e) {
      this.opts.logger.error('cannot listen on the broker socket again', { socket: this.opts.socket, error: (e as Error).message });
    } finally {
      this.#relistening = false;
    }
  }

  async close(): Promise<void> {
    clearInterval(this.#socketCheck);
    for (const s of this.#admissions.all()) s.conn.close();
    await new Promise<void>((r) => (this.#server ? this.#server.close(() => r()) : r()));
    this.#peerDomains.clear();
    this.pool.close();
    await this.opts.onClose?.();
  }

  /** The count of unfinished request bytes one account's connections share (Connection's `pending`). */
  #pendingOf(uid: number): PendingBytes {
    let p = this.#pending.get(uid);
    if (!p) this.#pending.set(uid, (p = { used: 0, max: MAX_PENDING_PER_UID, of: 'this account' }));
    return p;
  }

  /** The same for one process's connections; it goes with the process's last connection. */
  #pendingOfProcess(pid: number): PendingBytes {
    let p = this.#pendingByPid.get(pid);
    if (!p) this.#pendingByPid.set(pid, (p = { used: 0, max: MAX_PENDING_PER_PROCESS, of: 'this process', connections: 0 }));
    p.connections++;
    return p;
  }

  /** Log a peer problem at most once a second per kind. */
  #problem(kind: string, meta: Record<string, unknown>): void {
    const now = Date.now();
    if (now - (this.#logged.get(kind) ?? 0) < 1000) return;
    this.#logged.set(kind, now);
    this.opts.logger.warn(`peer: ${kind}`, meta);
  }

  #accept(sock: net.Socket): void {
    sock.on('error', () => sock.destroy());
    let cred: libc.PeerCred;
    try {
      cred = libc.peerCred(fdOf(sock));
    } catch (e) {
      this.#problem('credentials unavailable', { error: (e as Error).message });
      sock.destroy();
      return;
    }
    const { allow } = this.opts;
    // The allowlist first: nothing of a peer that is not served is read (its /proc included).
    if (!allow.uids.has(cred.uid) && !allow.gids.has(cred.gid)) {
      this.#problem('refused: not in allowlist', { uid: cred.uid, gid: cred.gid, pid: cred.pid });
      this.#refuse(sock, errorReply(0, denied(`uid ${cred.uid} gid ${cred.gid} may not use the broker`, 'add the account to allowUsers in /etc/virt-ebpf/config.json')));
      return;
    }
    const verdict = this.#admissions.consider(cred.uid, cred.pid);
    if (!verdict.admit) {
      this.#problem('refused: too many connections', { uid: cred.uid, pid: cred.pid, why: verdict.why });
      this.#refuse(sock, errorReply(0, new VirtEbpfError('BROKER_LIMIT', verdict.why, { remedy: 'close idle connections or raise limits.maxConnectionsPerProcess / maxConnectionsPerUid' })));
      return;
    }
    let peer: Peer;
    try {
      peer = identifyPeer(cred, this.#peerDomains);
    } catch (e) {
      this.#problem('peer unidentified', { uid: cred.uid, pid: cred.pid, error: (e as Error).message });
      this.#refuse(sock, errorReply(0, new VirtEbpfError('BROKER_INTERNAL', `cannot tell which domain process ${cred.pid} runs: ${(e as Error).message}`, { remedy: 'retry; see the broker log (journalctl -u virt-ebpfd)' })));
      return;
    }
    if (verdict.evict) {
      this.#problem(verdict.evict.idle() ? 'closed an idle connection to make room' : 'closed a connection whose request line stalled, to make room', { uid: peer.uid, pid: verdict.evict.pid });
      verdict.evict.conn.close();
      this.#admissions.remove(verdict.evict);
    }
    const log = this.opts.logger.child({ peer: { pid: peer.pid, uid: peer.uid, domain: peer.domain } });
    const l = this.#limits;
    const conn: Connection = new Connection(
      sock,
      {
        maxLine: peer.root ? MAX_LINE : MAX_PEER_LINE,
        pending: peer.root ? undefined : [this.#pendingOf(peer.uid), this.#pendingOfProcess(peer.pid)],
        maxOutstanding: l.maxOutstandingPerConnection,
        idleTimeoutMs: l.idleTimeoutMs,
        requestTimeoutMs: l.requestTimeoutMs,
        writeTimeoutMs: l.writeTimeoutMs,
      },
      (line) => this.#handle(conn, peer, line, log),
      (what) => this.#problem(what, { uid: peer.uid, pid: peer.pid }),
      () => {
        if (peer.root) return;
        this.#peerDomains.markFdsUnread(peer.pid);
        log.warn('a process left the fds it was sent unread: it gets no more', { pid: peer.pid });
      },
    );
    const slot: Slot = { uid: peer.uid, pid: peer.pid, conn, idle: () => conn.idle, lastActive: () => conn.lastActive, lineSince: () => conn.lineSince };
    this.#admissions.add(slot);
    sock.on('close', () => {
      this.#admissions.remove(slot);
      const p = this.#pendingByPid.get(peer.pid);
      if (p && --p.connections <= 0) this.#pendingByPid.delete(peer.pid);
    });
  }

  /** One line to a peer we will not serve, then the connection goes (at once when many linger). */
  #refuse(sock: net.Socket, reply: Reply): void {
    const conn = new Connection(sock, { maxLine: 0, maxOutstanding: 1, idleTimeoutMs: LINGER_MS, requestTimeoutMs: LINGER_MS, writeTimeoutMs: LINGER_MS }, async () => {}, () => {});
    if (this.#lingering >= MAX_LINGERING) {
      void conn.send(reply).finally(() => sock.destroy());
      return;
    }
    this.#lingering++;
    sock.once('close', () => this.#lingering--);
    void conn.refuse('', reply);
  }

  async #handle(conn: Connection, peer: Peer, line: string, log: Logger): Promise<void> {
    let req: Request;
    try {
      req = parseRequest(line);
    } catch (e) {
      // A peer that breaks the protocol gets one line and a closed connection.
      this.#problem('protocol error', { uid: peer.uid, pid: peer.pid, error: (e as Error).message });
      await conn.refuse('', errorReply(0, e));
      return;
    }
    if (conn.aborted) return; // a line still queued when its peer went
    const ctx: Ctx = { conn, peer, log, t0: process.hrtime.bigint() };
    try {
      await this.#ops[req.op](ctx, req as never);
    } catch (e) {
      log.warn('request failed', { op: req.op, error: (e as Error).message });
      await conn.send(errorReply(req.id, e));
    }
  }

  /**
   * What a plan of this domain goes by (read once per request): the settings exec-plan just read
   * from libvirt (`live`), else the record of the domain — the hook's, or exec-plan's for this
   * pid: the host-wide policy on its devices, its policy and its hot-plug setting.
   * The host-wide policy serves a domain the hook recorded nothing for; one with a state of ours
   * chose for itself: enabled (its NICs are the ones enable set rss on; the policy adding others
   * could cost it its start) or opted out. A domain that never asked for eBPF starts without it
   * under the host-wide policy rather than not at all.
   */
  #domainSettings(uuid: string | undefined, pid?: number, live?: { settings?: DomainSettings }): { hostRss: HostRss; policy: Policy; hotplug: boolean } {
    let st: Partial<DomainSettings> & { writer?: StateWriter } = live ? (live.settings ?? {}) : readDomainState(uuid, this.opts.hookEnv?.stateDir);
    // What exec-plan recorded is for the QEMU it was recorded for only.
    if (st.writer?.by === 'exec' && pid !== undefined && st.writer.pid !== pid) st = {};
    const host = this.opts.hostRss?.() ?? 'off';
    const hostRss = st.policy !== undefined || st.hostWideOff ? 'off' : host;
    const unasked: Policy | undefined = hostRss !== 'off' ? 'fallback' : undefined;
    return { hostRss, policy: st.policy ?? unasked ?? this.opts.policy ?? DEFAULT_POLICY, hotplug: st.hotplug ?? true };
  }

  /**
   * At exec-plan on a host without our hook: the settings of the domain libvirt is starting in
   * the peer's process, from libvirt's status XML (src/policy/live.ts: it must name the peer's
   * pid, the `-name` and the peer's `-uuid`), recorded for this QEMU (the hot-plug shim's plans
   * and a start while the broker is down read the record). Undefined when no status matches:
   * the plan then goes by the record as it is.
   */
  async #liveSettings(peer: Peer, name: string | undefined, log: Logger): Promise<{ settings?: DomainSettings } | undefined> {
    const uuid = peer.domain;
    if (peer.root || !uuid || !this.opts.hookless?.()) return undefined;
    const live = liveDomainXml(name, uuid, peer.pid, this.opts.hookEnv?.libvirtRunDir);
    if (!('domain' in live)) {
      log.info('no status of libvirt names this QEMU', { name, why: live.why });
      return undefined;
    }
    let settings: DomainSettings | undefined;
    if (live.domain.includes(XML_NAMESPACE)) {
      // Loaded for the first domain of ours: the XML parser is not needed to answer anything else.
      const { FactsMemo, settingsOf } = await import('../hook/facts');
      settings = settingsOf((this.#facts ??= new FactsMemo()).get(live.domain));
    }
    const dir = this.opts.hookEnv?.stateDir;
    try {
      if (settings) writeDomainState({ name: name!, uuid }, settings, { by: 'exec', pid: peer.pid }, dir);
      else removeDomainState(uuid, dir);
    } catch (e) {
      log.warn('cannot record the domain\'s settings: a start while the broker is down goes by the config\'s policy', { name, error: (e as Error).message });
    }
    if (settings) log.info('settings from libvirt\'s live XML', { name, policy: settings.policy, hotplug: settings.hotplug, ...(settings.hostWideOff ? { hostWide: 'off' } : {}) });
    return { settings };
  }

  /**
   * A QEMU-account peer gets at most `contextsPerMinute` contexts a minute for its domain (its
   * pid when it names none): a start and a burst of hot-plugs fit, a QEMU asking again and again
   * (parking the fds unread in its socket) is refused. Root is not counted.
   */
  #spend(peer: Peer, n: number): void {
    if (peer.root) return;
    // Unread fds stay in flight, counted against root: a process that left some gets no more.
    if (this.#peerDomains.leftFdsUnread(peer.pid)) {
      throw denied(`process ${peer.pid} left eBPF fds the broker sent it unread; it gets no more`, 'restart the domain: a QEMU reads its fds at once, so this one is not working as it should');
    }
    const key = peer.domain ?? `pid:${peer.pid}`;
    const now = Date.now();
    let b = this.#budget.get(key);
    if (!b || now - b.since >= 60_000) {
      for (const [k, v] of this.#budget) if (now - v.since >= 60_000) this.#budget.delete(k);
      b = { since: now, used: 0 };
      this.#budget.set(key, b);
    }
    if (b.used + n > this.#limits.contextsPerMinute) {
      throw new VirtEbpfError('BROKER_LIMIT', `${peer.domain ? `domain ${peer.domain}` : `process ${peer.pid}`} asked for ${b.used + n} contexts within a minute; at most ${this.#limits.contextsPerMinute}`, {
        remedy: 'wait a minute, or raise limits.contextsPerMinute in /etc/virt-ebpf/config.json',
      });
    }
    b.used += n;
  }

  /** The pool key a peer may use: root names any domain; a QEMU-account peer only its own. */
  #keyFor(peer: Peer, claimed?: DomainRef): string | undefined {
    return peer.root ? domainKey(claimed) : peer.domain;
  }

  #us(ctx: Ctx): number {
    return Number((process.hrtime.bigint() - ctx.t0) / 1000n);
  }

  /** Send a reply with the contexts' fds; our copies are closed whatever happens to the send. */
  async #handOut(ctx: Ctx, reply: Reply, contexts: LoadedContext[], what: Record<string, unknown>): Promise<void> {
    const fds = contexts.flatMap((c) => c.fds);
    try {
      const sent = await ctx.conn.send(reply, fds.map((f) => f.fd));
      ctx.log.info(sent ? 'handed out' : 'hand-out failed: peer gone', { ...what, contexts: contexts.length, us: this.#us(ctx) });
    } finally {
      closeAll(fds); // the peer holds its own copies now; ours are never reused
    }
  }

  readonly #ops: { [K in Request['op']]: (ctx: Ctx, req: Extract<Request, { op: K }>) => Promise<void> } = {
    hello: async (ctx, req) => {
      await ctx.conn.send({ v: 1, id: req.id, ok: true, op: 'hello', broker: 'virt-ebpfd', version: BROKER_VERSION, uid: ctx.peer.uid });
    },
    status: async (ctx, req) => {
      await ctx.conn.send({
        v: 1,
        id: req.id,
        ok: true,
        op: 'status',
        pools: this.pool.stats().map((p) => ({ emulator: p.key, ready: p.ready, target: p.target })),
        reserved: this.pool.reservedCount(),
        reservationTtlMs: this.pool.reservationTtlMs,
        peers: this.#admissions.size,
        bound: this.#peerDomains.bound(),
      });
    },
    release: async (ctx, req) => {
      if (!ctx.peer.root) throw denied(`uid ${ctx.peer.uid} may not release reservations`, 'only libvirt\'s hook, as root, releases a domain\'s reservation');
      const dropped = this.pool.release(domainKey(req.domain)!);
      ctx.log.info('released', { domain: req.domain, dropped });
      await ctx.conn.send({ v: 1, id: req.id, ok: true, op: 'release', dropped });
    },
    prewarm: async (ctx, req) => {
      if (req.domain && !ctx.peer.root) throw denied(`uid ${ctx.peer.uid} may not reserve contexts for a domain`, 'reservations are made by libvirt\'s hook (root) at prepare; prewarm without a domain');
      const ready = await this.#prewarm(req.emulator, req.count, domainKey(req.domain), ctx.log);
      await ctx.conn.send({ v: 1, id: req.id, ok: true, op: 'prewarm', ready });
    },
    hook: async (ctx, req) => {
      if (!ctx.peer.root) throw denied(`uid ${ctx.peer.uid} may not run the libvirt hook`, 'only libvirt\'s hook, as root, sends hook requests');
      const event = req.event === 'prepare' ? { kind: 'prepare' as const, name: req.name } : { kind: 'release' as const, name: req.name, reason: '-' };
      // Loaded on the first hook request: the XML parser is not needed to answer anything else.
      const [{ runHook }, { FactsMemo }] = await Promise.all([import('../hook/main'), import('../hook/facts')]);
      const facts = (this.#facts ??= new FactsMemo());
      const r = await runHook(event, req.xml, {
        ...this.opts.hookEnv,
        facts: (xml) => facts.get(xml),
        broker: {
          prewarm: async (emulator, count, domain) => void (await this.#prewarm(emulator, count, domainKey(domain), ctx.log)),
          release: (domain) => void this.pool.release(domainKey(domain)!),
        },
      });
      ctx.log.info('hook', { event: req.event, name: req.name, code: r.code, us: this.#us(ctx) });
      await ctx.conn.send({ v: 1, id: req.id, ok: true, op: 'hook', ...r });
    },
    'exec-plan': async (ctx, req) => {
      const domain = domainIdentity(req.argv);
      const live = await this.#liveSettings(ctx.peer, domain.name, ctx.log);
      const { hostRss, ...settings } = this.#domainSettings(ctx.peer.root ? normalUuid(domain.uuid) : ctx.peer.domain, ctx.peer.root ? undefined : ctx.peer.pid, live);
      const host = applyHostRss(req.argv, hostRss);
      if (host.added.length) ctx.log.info('host policy: rss on', { devices: host.added });
      const plan = planDevices(host.argv);
      if (plan.devices.length === 0) {
        await ctx.conn.send({ v: 1, id: req.id, ok: true, op: 'exec-plan', argv: null, fds: 0, ...settings });
        return;
      }
      if (plan.devices.length > MAX_CONTEXTS_PER_REQUEST) {
        throw new VirtEbpfError('BROKER_LIMIT', `${plan.devices.length} RSS devices on one command line; at most ${MAX_CONTEXTS_PER_REQUEST} get eBPF fds`, {
          remedy: `give at most ${MAX_CONTEXTS_PER_REQUEST} NICs of one domain rss='on'`,
        });
      }
      // Per kind, its contexts from its pool; handed out in the devices' command-line order.
      const byKind = new Map<HandoffKind, number[]>();
      plan.devices.forEach((d, i) => byKind.set(d.kind, [...(byKind.get(d.kind) ?? []), i]));
      const sources = new Map<HandoffKind, Awaited<ReturnType<BrokerOptions['resolve']>>>();
      for (const kind of byKind.keys()) sources.set(kind, await this.opts.resolve(req.emulator, kind.kind));
      this.#spend(ctx.peer, plan.devices.length);
      const contexts: LoadedContext[] = new Array(plan.devices.length);
      try {
        for (const [kind, devices] of byKind) {
          const got = await this.pool.take(sources.get(kind)!, devices.length, this.#keyFor(ctx.peer, domain), () => ctx.conn.aborted);
          devices.forEach((d, j) => (contexts[d] = got[j]));
        }
      } catch (e) {
        contexts.forEach((c) => closeAll(c.fds));
        throw e;
      }
      const propTypes = [...sources.values()][0].propTypes;
      let k = 0;
      const perDevice = contexts.map((c) => ({ fds: Array.from({ length: c.descriptor.fds }, () => fdPlaceholder(k++)), prop: c.descriptor.property }));
      let argv: string[];
      try {
        argv = finalArgv(host.argv, plan, perDevice, propTypes).argv;
      } catch (e) {
        contexts.forEach((c) => closeAll(c.fds));
        throw e;
      }
      await this.#handOut(ctx, { v: 1, id: req.id, ok: true, op: 'exec-plan', argv, fds: k, ...settings }, contexts, { emulator: req.emulator, domain });
    },
    'device-plan': async (ctx, req) => {
      const { hostRss, policy } = this.#domainSettings(ctx.peer.domain, ctx.peer.pid);
      const plan = planDeviceAdd(Buffer.from(req.line64, 'base64'), hostRss);
      if (!plan) {
        await ctx.conn.send({ v: 1, id: req.id, ok: true, op: 'device-plan', at: null, insert: null, fds: 0, say: null });
        return;
      }
      const dev = plan.id ?? 'anon';
      let contexts: LoadedContext[];
      try {
        const source = await this.opts.resolve(req.emulator, plan.kind.kind);
        this.#spend(ctx.peer, 1);
        contexts = await this.pool.take(source, 1, this.#keyFor(ctx.peer), () => ctx.conn.aborted);
      } catch (e) {
        const why = isVirtEbpfError(e) ? e.oneLine() : `virt-ebpf: ${(e as Error).message}`;
        ctx.log.warn('hot-plug without fds', { device: dev, error: why });
        // A device only the host policy would have given rss goes in as it was asked for.
        const reply = plan.addRss
          ? { at: null, insert: null, say: `${why}: ${dev} is added as asked, without the host policy's rss` }
          : policy === 'fallback'
          ? { at: null, insert: null, say: `${why}; policy is fallback: ${dev} is added without eBPF RSS steering` }
          : { at: plan.at, insert: refusal(why, plan.kind), say: `device_add ${dev} refused: ${why}` };
        await ctx.conn.send({ v: 1, id: req.id, ok: true, op: 'device-plan', fds: 0, ...reply });
        return;
      }
      const c = contexts[0];
      const names = Array.from({ length: c.descriptor.fds }, (_, k) => fdPlaceholder(k));
      const insert = `${plan.addRss ? '"rss":true,' : ''}${JSON.stringify(c.descriptor.property.name)}:${JSON.stringify(propertyValue(c.descriptor.property, names))},`;
      const say = `device_add ${dev}: eBPF RSS fds ${names.join(',')} (broker ${(this.#us(ctx) / 1000).toFixed(1)} ms)`;
      await this.#handOut(ctx, { v: 1, id: req.id, ok: true, op: 'device-plan', at: plan.at, insert, fds: names.length, say }, contexts, { emulator: req.emulator, device: dev });
    },
    acquire: async (ctx, req) => {
      // QEMU asks through exec-plan and device-plan, whose plans bound what it gets.
      if (!ctx.peer.root) throw denied(`uid ${ctx.peer.uid} may not acquire contexts directly`, 'a QEMU gets its fds through the emulator wrapper (exec-plan) and the hot-plug shim (device-plan)');
      const source = await this.opts.resolve(req.emulator);
      const contexts = await this.pool.take(source, req.count, this.#keyFor(ctx.peer, req.domain), () => ctx.conn.aborted);
      await this.#handOut(
        ctx,
        { v: 1, id: req.id, ok: true, op: 'acquire', contexts: contexts.map((c) => c.descriptor), propTypes: source.propTypes },
        contexts,
        { emulator: req.emulator, domain: req.domain },
      );
    },
  };

  async #prewarm(emulator: string, count: number, key: string | undefined, log: Logger): Promise<number> {
    const source = await this.opts.resolve(emulator);
    const ready = key ? await this.pool.reserve(source, Math.min(count, this.opts.maxReservedPerDomain), key) : (this.pool.warm(source), 0);
    log.info('prewarmed', { emulator, domain: key, ready });
    return ready;
  }
}
