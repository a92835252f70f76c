/**
 * Passing fds between processes over AF_UNIX sockets (SCM_RIGHTS). Received fds are
 * close-on-exec (MSG_CMSG_CLOEXEC): whoever wants one to survive an exec clears the flag on
 * purpose (see wrapper/exec), so nothing leaks into a child by accident.
 */
import { readFileSync } from 'node:fs';
import * as libc from '../sys/libc';
import { VirtEbpfError } from '../errors';
import { OwnedFd } from './owned-fd';

export { OwnedFd, closeAll } from './owned-fd';

/** Send fds (borrowed: the caller keeps its copies) with a payload in one message. */
export function sendFds(sock: number, fds: readonly number[], payload: Buffer = Buffer.from([0])): void {
  if (payload.length === 0) throw new RangeError('SCM_RIGHTS needs at least one payload byte');
  for (;;) {
    try {
      const n = libc.sendmsg(sock, payload, fds);
      if (n !== payload.length) {
        throw new VirtEbpfError('FD_PASS', `short send of fd message (${n}/${payload.length} bytes)`, {
          remedy: 'the peer closed the socket early; retry the operation',
        });
      }
      return;
    } catch (e) {
      if (e instanceof VirtEbpfError && e.fields.errno === libc.EINTR) continue;
      throw e;
    }
  }
}

export interface FdMessage {
  payload: Buffer;
  fds: OwnedFd[];
}

function toMessage(r: libc.Received): FdMessage {
  const fds = r.fds.map((f) => new OwnedFd(f));
  if (r.truncated) {
    fds.forEach((f) => f.close());
    throw new VirtEbpfError('FD_PASS', 'peer sent more fds than expected (control data truncated)', {
      remedy: 'the peer does not follow the protocol; check that it is the expected program',
    });
  }
  return { payload: r.data, fds };
}

/** Receive one message with its fds, blocking this thread. */
export function recvFds(sock: number, maxFds = 16, maxBytes = 4096): FdMessage {
  return toMessage(libc.recvmsg(sock, maxBytes, maxFds));
}

/** Kernel identity of a BPF fd, from /proc/self/fdinfo: prog_id / map_id, type. */
export interface BpfFdInfo {
  kind: 'prog' | 'map' | 'other';
  id?: number;
  type?: number;
  raw: Record<string, string>;
}

export function bpfFdInfo(fd: number, pid: number | 'self' = 'self'): BpfFdInfo {
  const text = readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
  const raw: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+):\s*(.*)$/.exec(line);
    if (m) raw[m[1]] = m[2];
  }
  if (raw.prog_id !== undefined) return { kind: 'prog', id: Number(raw.prog_id), type: Number(raw.prog_type), raw };
  if (raw.map_id !== undefined) return { kind: 'map', id: Number(raw.map_id), type: Number(raw.map_type), raw };
  return { kind: 'other', raw };
}
