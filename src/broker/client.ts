/**
 * Broker client for short-lived callers (the emulator wrapper, the hook, the CLI): blocking,
 * one request per call, bounded in time by socket timeouts — no event loop needed, which keeps
 * the wrapper's start-up cost low.
 */
import * as libc from '../sys/libc';
import { VirtEbpfError, isVirtEbpfError } from '../errors';
import { OwnedFd, closeAll, recvFds } from '../fdpass';
import { BROKER_REMEDY, BROKER_SOCKET } from '../shims/constants';
import { encode, MAX_LINE, parseReply, Reply, Request } from './protocol';

export const DEFAULT_SOCKET = BROKER_SOCKET;

type DistributiveOmit<T, K extends keyof any> = T extends unknown ? Omit<T, K> : never;
export type RequestBody = DistributiveOmit<Request, 'v' | 'id'>;

export interface BrokerResult {
  reply: Exclude<Reply, { ok: false }>;
  fds: OwnedFd[];
}

let nextId = 1;

function unreachable(path: string, why: string): VirtEbpfError {
  return new VirtEbpfError('BROKER_UNREACHABLE', `cannot reach the virt-ebpf broker at ${path}: ${why}`, {
    remedy: BROKER_REMEDY,
    fields: { path },
  });
}

export function brokerRequest(body: RequestBody, opts: { socket?: string; timeoutMs?: number } = {}): BrokerResult {
  const path = opts.socket ?? DEFAULT_SOCKET;
  const timeoutMs = opts.timeoutMs ?? 10_000;
  let fd: number;
  try {
    fd = libc.connectUnix(path);
  } catch (e) {
    throw unreachable(path, isVirtEbpfError(e) ? e.message.replace(/^connect\([^)]*\) failed: /, '') : String(e));
  }
  const fds: OwnedFd[] = [];
  try {
    libc.setRecvTimeout(fd, timeoutMs);
    const id = nextId++;
    const line = encode({ v: 1, id, ...body } as Request);
    let sent = 0;
    while (sent < line.length) sent += libc.sendmsg(fd, line.subarray(sent));
    let buf = '';
    for (;;) {
      let msg;
      try {
        msg = recvFds(fd, 256, 64 * 1024);
      } catch (e) {
        if (isVirtEbpfError(e) && e.fields.errno === libc.EAGAIN) throw unreachable(path, `no reply within ${timeoutMs} ms`);
        throw e;
      }
      fds.push(...msg.fds);
      if (msg.payload.length === 0) throw unreachable(path, 'the broker closed the connection without a reply');
      buf += msg.payload.toString('utf8');
      if (buf.length > MAX_LINE * 4) throw unreachable(path, 'reply too long');
      const nl = buf.indexOf('\n');
      if (nl >= 0) {
        const reply = parseReply(buf.slice(0, nl), id);
        return { reply, fds: fds.splice(0) };
      }
    }
  } finally {
    closeAll(fds);
    libc.close(fd);
  }
}
