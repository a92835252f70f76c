/**
 * Who is on the other end of a broker connection: SO_PEERCRED's pid, uid and gid, and which
 * domain that process runs. libvirt puts a domain's uuid on its QEMU's command line (`-uuid`),
 * which the emulator wrapper shim carries too (the kernel runs it with QEMU's argv), so a
 * QEMU-account peer is bound to the domain in its /proc/PID/cmdline: it may take what was
 * reserved for that domain and nothing else. Root (libvirt's hook) is trusted with any domain.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import type { PeerCred } from '../sys/libc';

export interface Peer extends PeerCred {
  root: boolean;
  /** the domain this process runs (its `-uuid`, lower case), if any */
  domain?: string;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function normalUuid(uuid: string | undefined): string | undefined {
  const u = uuid?.toLowerCase();
  return u && UUID.test(u) ? u : undefined;
}

/** libvirt's command lines are a few KiB; nothing past this is read (a peer chooses its argv). */
const CMDLINE_MAX = 256 * 1024;

/**
 * One read buffer for every peer of the thread (the reads are synchronous, so they never
 * overlap). Only the bytes of one read are looked at, and they are cleared after it.
 */
let cmdlineBuf: Buffer | undefined;

/** The value after the last `-uuid` (or `--uuid`) in /proc/PID/cmdline, read up to CMDLINE_MAX bytes. */
export function cmdlineUuid(pid: number): string | undefined {
  const buf = (cmdlineBuf ??= Buffer.allocUnsafe(CMDLINE_MAX));
  let n = 0;
  try {
    const fd = openSync(`/proc/${pid}/cmdline`, 'r');
    try {
      for (let r; n < buf.length && (r = readSync(fd, buf, n, buf.length - n, null)) > 0; ) n += r;
    } finally {
      closeSync(fd);
    }
  } catch {
    return undefined; // gone
  }
  // The bytes read only: the rest of the buffer is not this peer's.
  try {
    return uuidIn(buf.subarray(0, n));
  } finally {
    buf.fill(0, 0, n);
  }
}

/**
 * The value after the last `-uuid` or `--uuid` (whichever comes later, as QEMU reads it) in the
 * NUL-separated arguments `args` (/proc/PID/cmdline). Pure.
 */
export function uuidIn(args: Buffer): string | undefined {
  let found: { at: number; uuid: string } | undefined;
  for (const opt of [Buffer.from('\0-uuid\0'), Buffer.from('\0--uuid\0')]) {
    for (let at = args.indexOf(opt, 0); at >= 0; at = args.indexOf(opt, at + 1)) {
      const start = at + opt.length;
      const end = args.indexOf(0, start);
      const uuid = end > start ? normalUuid(args.subarray(start, end).toString('latin1')) : undefined;
      if (uuid && (!found || at > found.at)) found = { at, uuid };
    }
  }
  return found?.uuid;
}

/** Call only for a peer the allowlist admits: it reads the peer's /proc. */
export function identifyPeer(cred: PeerCred): Peer {
  return { ...cred, root: cred.uid === 0, domain: cred.uid === 0 ? undefined : cmdlineUuid(cred.pid) };
}
