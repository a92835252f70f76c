/**
 * Who is on the other end of a broker connection: SO_PEERCRED's pid, uid and gid, and which
 * domain that process runs. libvirt puts a domain's uuid on its QEMU's command line (`-uuid`),
 * which the emulator wrapper shim carries too (the kernel runs it with QEMU's argv), so a
 * QEMU-account peer is bound to the domain in its /proc/PID/cmdline: it may take what was
 * reserved for that domain and nothing else. Root (libvirt's hook) is trusted with any domain.
 */
import { optionValue } from '../argv';
import type { PeerCred } from '../sys/libc';
import { readCmdline } from '../sys/proc';

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

export function identifyPeer(cred: PeerCred): Peer {
  const argv = cred.uid === 0 ? undefined : readCmdline(cred.pid);
  return { ...cred, root: cred.uid === 0, domain: argv ? normalUuid(optionValue(argv, '-uuid')) : undefined };
}
