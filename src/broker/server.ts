/**
 * virt-ebpfd: the only privileged piece. Accepts authenticated peers (SO_PEERCRED against an
 * allowlist), answers versioned JSON requests, and hands over fds it loaded itself from
 * emulators it trusts. It never reads bytecode from a peer: the protocol has no field for it.
 */
import net from 'node:net';
import { chmodSync, mkdirSync, unlinkSync, existsSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import * as libc from '../sys/libc';
import { VirtEbpfError } from '../errors';
import { closeAll } from '../fdpass';
import type { Logger } from '../log';
import { ContextPool, PoolSource, type RefillTiming } from './pool';
import { encode, errorReply, fdPlaceholder, MAX_LINE, parseRequest, Reply, Request, DomainRef } from './protocol';
import { domainIdentity } from '../argv';
import { finalArgv, planDevices } from '../exec/plan';
import { runHook } from '../hook/main';
import { FactsMemo } from '../hook/facts';

export const BROKER_VERSION = '0.1.0';
/** How long a refused peer may keep its end open after our one-line reply. */
export const REFUSED_LINGER_MS = 2_000;

export interface Allowlist {
  uids: ReadonlySet<number>;
  gids: ReadonlySet<number>;
}

export interface BrokerOptions {
  socket: string;
  allow: Allowlist;
  poolSize: number;
  /** when refills wait for starts to settle (default DEFAULT_REFILL_TIMING) */
  refillTiming?: RefillTiming;
  /** run when the broker closes (the background loader's thread ends there) */
  onClose?: () => Promise<void>;
  maxReservedPerDomain: number;
  maxConnectionsPerUid: number;
  maxOutstandingPerConnection: number;
  /** resolve an emulator path to its pool source (trust, allowlist, probe); throws a VirtEbpfError */
  resolve(emulator: string): Promise<PoolSource & { propTypes: Record<string, string> }>;
  logger: Logger;
  /** listen on an inherited fd (systemd socket activation) instead of binding `socket` */
  listenFd?: number;
  /** where the `hook` op keeps domain state and finds the install manifest (tests: scratch dirs) */
  hookEnv?: { stateDir?: string; manifest?: string };
}

function domainKey(d?: DomainRef): string | undefined {
  return d ? (d.uuid ?? `name:${d.name}`) : undefined;
}

function fdOf(sock: net.Socket): number {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('socket has no fd');
  return fd;
}

export class Broker {
  readonly pool: ContextPool;
  /** domain XML facts for the hook op: a restart of a domain is not parsed again */
  readonly #facts = new FactsMemo();
  #server?: net.Server;
  readonly #perUid = new Map<number, number>();
  #connections = new Set<net.Socket>();

  constructor(private readonly opts: BrokerOptions) {
    this.pool = new ContextPool(opts.poolSize, (e, key) => opts.logger.warn('pool refill failed', { key, error: (e as Error).message }), opts.refillTiming);
  }

  async start(): Promise<void> {
    const server = net.createServer((sock) => this.#accept(sock));
    this.#server = server;
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
    this.opts.logger.info('broker listening', { socket: this.opts.listenFd !== undefined ? `fd ${this.opts.listenFd}` : this.opts.socket, version: BROKER_VERSION });
  }

  async close(): Promise<void> {
    for (const s of this.#connections) s.destroy();
    await new Promise<void>((r) => (this.#server ? this.#server.close(() => r()) : r()));
    this.pool.close();
    await this.opts.onClose?.();
  }

  #accept(sock: net.Socket): void {
    let cred: libc.PeerCred;
    try {
      cred = libc.peerCred(fdOf(sock));
    } catch (e) {
      this.opts.logger.warn('peer credentials unavailable', { error: (e as Error).message });
      sock.destroy();
      return;
    }
    const log = this.opts.logger.child({ peer: cred });
    const { allow } = this.opts;
    if (!allow.uids.has(cred.uid) && !allow.gids.has(cred.gid)) {
      log.warn('peer refused: not in allowlist');
      this.#send(sock, errorReply(0, new VirtEbpfError('BROKER_DENIED', `uid ${cred.uid} gid ${cred.gid} may not use the broker`, {
        remedy: 'add the account to allowUsers/allowGroups in /etc/virt-ebpf/config.json',
      })));
      this.#hangUp(sock);
      return;
    }
    const n = (this.#perUid.get(cred.uid) ?? 0) + 1;
    if (n > this.opts.maxConnectionsPerUid) {
      log.warn('peer refused: too many connections');
      this.#send(sock, errorReply(0, new VirtEbpfError('BROKER_LIMIT', `uid ${cred.uid} has too many open connections`, { remedy: 'close idle connections or raise limits.maxConnectionsPerUid' })));
      this.#hangUp(sock);
      return;
    }
    this.#perUid.set(cred.uid, n);
    this.#connections.add(sock);
    let buf = '';
    let outstanding = 0;
    sock.on('data', (chunk) => {
      buf += chunk.toString('utf8');
      // Only the new chunk can hold a newline the last look did not see (requests may be MiBs).
      if (buf.length > MAX_LINE && !chunk.includes(0x0a)) {
        this.#send(sock, errorReply(0, new VirtEbpfError('BROKER_LIMIT', `request longer than ${MAX_LINE} bytes`, { remedy: 'send smaller requests' })));
        sock.destroy();
        return;
      }
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (outstanding >= this.opts.maxOutstandingPerConnection) {
          this.#send(sock, errorReply(0, new VirtEbpfError('BROKER_LIMIT', 'too many requests in flight on this connection', { remedy: 'wait for replies before sending more' })));
          continue;
        }
        outstanding++;
        void this.#handle(sock, line, cred, log).finally(() => outstanding--);
      }
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      this.#connections.delete(sock);
      const left = (this.#perUid.get(cred.uid) ?? 1) - 1;
      if (left <= 0) this.#perUid.delete(cred.uid);
      else this.#perUid.set(cred.uid, left);
    });
  }

  /**
   * Close a refused connection without losing the reply: read (and drop) what the peer sent so
   * its EOF is seen (a paused socket never sees it, and destroying one with unread input makes
   * the peer read ECONNRESET instead of our line); a peer that keeps its end open is cut off.
   */
  #hangUp(sock: net.Socket): void {
    sock.on('error', () => {});
    sock.end();
    sock.resume();
    setTimeout(() => sock.destroy(), REFUSED_LINGER_MS).unref();
  }

  async #handle(sock: net.Socket, line: string, cred: libc.PeerCred, log: Logger): Promise<void> {
    let req: Request;
    try {
      req = parseRequest(line);
    } catch (e) {
      this.#send(sock, errorReply(0, e));
      return;
    }
    const t0 = process.hrtime.bigint();
    try {
      switch (req.op) {
        case 'hello':
          this.#send(sock, { v: 1, id: req.id, ok: true, op: 'hello', broker: 'virt-ebpfd', version: BROKER_VERSION, uid: cred.uid });
          return;
        case 'status':
          this.#send(sock, { v: 1, id: req.id, ok: true, op: 'status', pools: this.pool.stats().map((p) => ({ emulator: p.key, ready: p.ready, target: p.target })), peers: this.#connections.size });
          return;
        case 'release': {
          const dropped = this.pool.release(domainKey(req.domain)!);
          log.info('released', { domain: req.domain, dropped });
          this.#send(sock, { v: 1, id: req.id, ok: true, op: 'release', dropped });
          return;
        }
        case 'prewarm': {
          const ready = await this.#prewarm(req.emulator, req.count, req.domain, log);
          this.#send(sock, { v: 1, id: req.id, ok: true, op: 'prewarm', ready });
          return;
        }
        case 'hook': {
          if (cred.uid !== 0) {
            throw new VirtEbpfError('BROKER_DENIED', `uid ${cred.uid} may not run the libvirt hook`, { remedy: 'only libvirt\'s hook, as root, sends hook requests' });
          }
          const event = req.event === 'prepare' ? { kind: 'prepare' as const, name: req.name } : { kind: 'release' as const, name: req.name, reason: '-' };
          const r = await runHook(event, req.xml, {
            ...this.opts.hookEnv,
            facts: (xml) => this.#facts.get(xml),
            broker: {
              prewarm: async (emulator, count, domain) => void (await this.#prewarm(emulator, count, domain, log)),
              release: (domain) => void this.pool.release(domainKey(domain)!),
            },
          });
          log.info('hook', { event: req.event, name: req.name, code: r.code, us: Number((process.hrtime.bigint() - t0) / 1000n) });
          this.#send(sock, { v: 1, id: req.id, ok: true, op: 'hook', ...r });
          return;
        }
        case 'exec-plan': {
          const plan = planDevices(req.argv);
          if (plan.devices.length === 0) {
            this.#send(sock, { v: 1, id: req.id, ok: true, op: 'exec-plan', argv: null, fds: 0 });
            return;
          }
          const source = await this.opts.resolve(req.emulator);
          const domain = domainIdentity(req.argv);
          const contexts = await this.pool.take(source, plan.devices.length, domainKey(domain));
          const fds = contexts.flatMap((c) => c.fds);
          try {
            let k = 0;
            const perDevice = contexts.map((c) => Array.from({ length: c.descriptor.fds }, () => fdPlaceholder(k++)));
            const { argv } = finalArgv(req.argv, plan, perDevice, contexts[0].descriptor.property, source.propTypes);
            this.#send(sock, { v: 1, id: req.id, ok: true, op: 'exec-plan', argv, fds: fds.length }, fds.map((f) => f.fd));
          } finally {
            closeAll(fds); // the peer holds its own copies now; ours are never reused
          }
          log.info('handed out', { emulator: req.emulator, domain, contexts: contexts.length, us: Number((process.hrtime.bigint() - t0) / 1000n) });
          return;
        }
        case 'acquire': {
          const source = await this.opts.resolve(req.emulator);
          const contexts = await this.pool.take(source, req.count, domainKey(req.domain));
          const fds = contexts.flatMap((c) => c.fds);
          try {
            this.#send(
              sock,
              { v: 1, id: req.id, ok: true, op: 'acquire', contexts: contexts.map((c) => c.descriptor), propTypes: source.propTypes },
              fds.map((f) => f.fd),
            );
          } finally {
            closeAll(fds); // the peer holds its own copies now; ours are never reused
          }
          log.info('handed out', { emulator: req.emulator, domain: req.domain, contexts: contexts.length, us: Number((process.hrtime.bigint() - t0) / 1000n) });
          return;
        }
      }
    } catch (e) {
      log.warn('request failed', { op: req.op, error: (e as Error).message });
      this.#send(sock, errorReply(req.id, e));
    }
  }

  async #prewarm(emulator: string, count: number, domain: DomainRef | undefined, log: Logger): Promise<number> {
    const source = await this.opts.resolve(emulator);
    const key = domainKey(domain);
    const ready = key ? await this.pool.reserve(source, Math.min(count, this.opts.maxReservedPerDomain), key) : (this.pool.warm(source), 0);
    log.info('prewarmed', { emulator, domain, ready });
    return ready;
  }

  #send(sock: net.Socket, reply: Reply, fds: number[] = []): void {
    if (sock.destroyed) throw new VirtEbpfError('BROKER_UNREACHABLE', 'peer went away before the reply', { remedy: 'retry the request' });
    const data = encode(reply);
    const fd = fdOf(sock);
    let off = 0;
    let first = true;
    for (let spins = 0; off < data.length; spins++) {
      try {
        off += libc.sendmsg(fd, data.subarray(off), first ? fds : []);
        first = false;
      } catch (e) {
        if ((e as VirtEbpfError).fields?.errno === libc.EAGAIN && spins < 1000) continue;
        throw e;
      }
    }
  }
}
