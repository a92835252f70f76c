/**
 * systemd socket activation (sd_listen_fds(3)): the broker's listening socket can come from
 * systemd (virt-ebpfd.socket) or anything that speaks the same protocol, such as
 * `systemd-socket-activate`. LISTEN_PID names the process the sockets are for, LISTEN_FDS how
 * many there are (fds 3, 4, …), LISTEN_FDNAMES (optional) their names, colon-separated.
 *
 * The broker listens on one socket: with one fd it takes fd 3; with several it takes the one
 * named `broker` (FileDescriptorName=broker). The variables are removed from the environment
 * whether they name this process or not, so no child inherits them; every fd passed is
 * close-on-exec, and those the broker does not take are closed.
 */
import { fstatSync } from 'node:fs';
import { VirtEbpfError } from '../errors';
import * as libc from '../sys/libc';

export const SD_LISTEN_FDS_START = 3;
/** FileDescriptorName= that picks the broker's socket when systemd passes several. */
export const BROKER_FD_NAME = 'broker';

export interface ActivationVars {
  LISTEN_PID?: string;
  LISTEN_FDS?: string;
  LISTEN_FDNAMES?: string;
}

export interface ActivationChoice {
  /** The fd to listen on. */
  fd: number;
  /** Its name from LISTEN_FDNAMES, when given. */
  name?: string;
  /** Every fd passed (the chosen one included). */
  passed: number[];
}

const REMEDY = 'give virt-ebpfd.socket one ListenStream= with a filesystem path and Accept=no (templates/virt-ebpfd.socket), or start the broker without LISTEN_FDS';

function refuse(message: string, remedy = REMEDY): VirtEbpfError {
  return new VirtEbpfError('BROKER_ACTIVATION', `socket activation: ${message}`, { remedy });
}

/**
 * Which passed fd is the broker's, from the variables alone (pure). Undefined when the
 * variables are absent, name another process, or pass no fd: the broker then binds its own.
 */
export function chooseActivationFd(vars: ActivationVars, pid: number): ActivationChoice | undefined {
  if (vars.LISTEN_PID === undefined || vars.LISTEN_FDS === undefined) return undefined;
  if (!/^[1-9]\d*$/.test(vars.LISTEN_PID)) throw refuse(`LISTEN_PID="${vars.LISTEN_PID}" is not a process id`);
  if (Number(vars.LISTEN_PID) !== pid) return undefined;
  if (!/^\d+$/.test(vars.LISTEN_FDS) || Number(vars.LISTEN_FDS) > 1024) throw refuse(`LISTEN_FDS="${vars.LISTEN_FDS}" is not a count of fds`);
  const count = Number(vars.LISTEN_FDS);
  if (count === 0) return undefined;
  const passed = Array.from({ length: count }, (_, i) => SD_LISTEN_FDS_START + i);
  const names = vars.LISTEN_FDNAMES === undefined ? undefined : vars.LISTEN_FDNAMES.split(':');
  if (names && names.length !== count) {
    throw refuse(`LISTEN_FDNAMES names ${names.length} fds but LISTEN_FDS is ${count}`);
  }
  if (count === 1) return { fd: SD_LISTEN_FDS_START, name: names?.[0], passed };
  const named = names ? passed.filter((_, i) => names[i] === BROKER_FD_NAME) : [];
  if (named.length !== 1) {
    const which = names ? `named ${names.join(', ')}` : 'without names';
    throw refuse(
      `${count} sockets were passed (${which}) and ${named.length === 0 ? 'none is' : 'more than one is'} named "${BROKER_FD_NAME}"`,
      `give virt-ebpfd.socket a single ListenStream=, or FileDescriptorName=${BROKER_FD_NAME} on the one the broker serves`,
    );
  }
  return { fd: named[0], name: BROKER_FD_NAME, passed };
}

export interface ActivationSocket {
  fd: number;
  name?: string;
  /** The path it is bound to (what peers connect to), when it has one. */
  path?: string;
}

function kindOf(fd: number): string {
  const st = fstatSync(fd);
  if (st.isFile()) return 'a regular file';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isFIFO()) return 'a pipe';
  if (st.isDirectory()) return 'a directory';
  if (st.isBlockDevice()) return 'a block device';
  return 'not a socket';
}

const FAMILIES: Record<number, string> = { 2: 'AF_INET', 10: 'AF_INET6', 16: 'AF_NETLINK', 40: 'AF_VSOCK' };
const TYPES: Record<number, string> = { 2: 'a datagram (SOCK_DGRAM)', 5: 'a SOCK_SEQPACKET' };

/** Refuse an fd the broker cannot serve on, with what it is instead. */
function checkListening(fd: number): void {
  try {
    fstatSync(fd);
  } catch {
    throw refuse(`fd ${fd} is not open although LISTEN_FDS says it was passed`);
  }
  if (!fstatSync(fd).isSocket()) throw refuse(`fd ${fd} is ${kindOf(fd)}, not a socket`);
  const family = libc.socketOption(fd, libc.SO_DOMAIN);
  if (family !== libc.AF_UNIX) throw refuse(`fd ${fd} is an ${FAMILIES[family] ?? `address family ${family}`} socket; the broker serves local peers on AF_UNIX only (it checks them with SO_PEERCRED)`);
  const type = libc.socketOption(fd, libc.SO_TYPE);
  if (type !== libc.SOCK_STREAM) throw refuse(`fd ${fd} is ${TYPES[type] ?? `a type ${type}`} socket, not a stream (ListenStream=)`);
  if (libc.socketOption(fd, libc.SO_ACCEPTCONN) !== 1) throw refuse(`fd ${fd} is a connected stream, not a listening socket (Accept=yes passes connections)`);
}

/**
 * Take the broker's socket from the environment's activation variables (default
 * process.env), removing them from it. Undefined when the broker is not socket-activated.
 */
export function takeActivationSocket(env: NodeJS.ProcessEnv = process.env, pid = process.pid): ActivationSocket | undefined {
  const vars: ActivationVars = { LISTEN_PID: env.LISTEN_PID, LISTEN_FDS: env.LISTEN_FDS, LISTEN_FDNAMES: env.LISTEN_FDNAMES };
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  const choice = chooseActivationFd(vars, pid);
  if (!choice) return undefined;
  checkListening(choice.fd);
  for (const fd of choice.passed) {
    if (fd === choice.fd) libc.setCloexec(fd, true);
    else {
      try {
        libc.close(fd);
      } catch {
        /* not open: nothing to close */
      }
    }
  }
  return { fd: choice.fd, name: choice.name, path: libc.unixSocketPath(choice.fd) };
}

/**
 * Why an allowlisted unprivileged peer could not connect to a socket with this owner and
 * mode (connect(2) needs write permission on the socket file), or undefined. `groups`: the
 * groups whose members the broker serves (allowlisted groups, allowlisted accounts' own). Pure.
 */
export function socketModeProblem(st: { mode: number; uid: number; gid: number }, groups: ReadonlySet<number>): string | undefined {
  if (st.mode & 0o002) return undefined;
  if (st.mode & 0o020 && groups.has(st.gid)) return undefined;
  const mode = (st.mode & 0o7777).toString(8).padStart(4, '0');
  return `mode ${mode}, owner ${st.uid}:${st.gid}: QEMU running as an allowlisted account cannot connect (connect needs write permission); set SocketMode=0666 (or SocketMode=0660 with SocketGroup= the QEMU account's group) in virt-ebpfd.socket`;
}
