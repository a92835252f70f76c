/**
 * The libc calls Node does not expose, through koffi (prebuilt FFI, no compiler).
 * Thin and typed: each wrapper throws a VirtEbpfError('SYSCALL') with errno on failure.
 * Linux x86_64/aarch64 (LP64) layouts only.
 */
import koffi from './koffi';
import { VirtEbpfError } from '../errors';

const libc = koffi.load('libc.so.6');

export const O_CLOEXEC = 0o2000000;
export const F_GETFD = 1;
export const F_SETFD = 2;
export const F_DUPFD_CLOEXEC = 1030;
export const FD_CLOEXEC = 1;
export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_SEQPACKET = 5;
export const SOCK_CLOEXEC = 0o2000000;
export const SOCK_NONBLOCK = 0o4000;
export const SOL_SOCKET = 1;
export const SO_TYPE = 3;
export const SO_PEERCRED = 17;
export const SO_ACCEPTCONN = 30;
export const SO_DOMAIN = 39;
export const SO_RCVTIMEO = 20;
export const SO_SNDTIMEO = 21;
export const SCM_RIGHTS = 1;
export const MSG_CMSG_CLOEXEC = 0x40000000;
export const MSG_NOSIGNAL = 0x4000;
export const MSG_DONTWAIT = 0x40;
export const EAGAIN = 11;
export const EINTR = 4;

koffi.struct('iovec', { iov_base: 'void *', iov_len: 'size_t' });
koffi.struct('msghdr', {
  msg_name: 'void *',
  msg_namelen: 'uint32',
  msg_iov: 'iovec *',
  msg_iovlen: 'size_t',
  msg_control: 'void *',
  msg_controllen: 'size_t',
  msg_flags: 'int',
});
koffi.struct('ucred', { pid: 'int32', uid: 'uint32', gid: 'uint32' });
koffi.struct('timeval', { tv_sec: 'long', tv_usec: 'long' });

const errnoLocation = libc.func('int *__errno_location(void)');
const strerrorFn = libc.func('const char *strerror(int)');
const closeFn = libc.func('int close(int)');
const fcntlFn = libc.func('int fcntl(int, int, ...)');
const socketpairFn = libc.func('int socketpair(int, int, int, _Out_ int *sv)');
const sendmsgFn = libc.func('long sendmsg(int, const msghdr *, int)');
const recvmsgFn = libc.func('long recvmsg(int, _Inout_ msghdr *, int)');
const getsockoptCredFn = libc.func('int getsockopt(int, int, int, _Out_ ucred *, _Inout_ uint32 *)');
const getsockoptIntFn = libc.func('int getsockopt(int, int, int, _Out_ int *, _Inout_ uint32 *)');
const getsocknameFn = libc.func('int getsockname(int, void *, _Inout_ uint32 *)');
const setsockoptTvFn = libc.func('int setsockopt(int, int, int, const timeval *, uint32)');
const execveFn = libc.func('int execve(const char *, const char **, const char **)');
const setresuidFn = libc.func('int setresuid(uint32, uint32, uint32)');
const setresgidFn = libc.func('int setresgid(uint32, uint32, uint32)');
const setgroupsFn = libc.func('int setgroups(size_t, const uint32 *)');
const prctlFn = libc.func('int prctl(int, unsigned long, unsigned long, unsigned long, unsigned long)');
const socketFn = libc.func('int socket(int, int, int)');
const connectFn = libc.func('int connect(int, const void *, uint32)');

export function errno(): number {
  return koffi.decode(errnoLocation(), 'int') as number;
}

export function strerror(code: number): string {
  return strerrorFn(code) as string;
}

export function sysError(op: string, code = errno()): VirtEbpfError {
  return new VirtEbpfError('SYSCALL', `${op} failed: ${strerror(code)} (errno ${code})`, {
    remedy: 'this is a host-level failure; check permissions and resource limits',
    fields: { errno: code, op },
  });
}

function check(op: string, rc: number | bigint): number {
  const n = Number(rc);
  if (n < 0) throw sysError(op);
  return n;
}

export function close(fd: number): void {
  check('close', closeFn(fd));
}

export function getCloexec(fd: number): boolean {
  return (check('fcntl(F_GETFD)', fcntlFn(fd, F_GETFD, 'int', 0)) & FD_CLOEXEC) !== 0;
}

export function setCloexec(fd: number, on: boolean): void {
  const flags = check('fcntl(F_GETFD)', fcntlFn(fd, F_GETFD, 'int', 0));
  const next = on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC;
  if (next !== flags) check('fcntl(F_SETFD)', fcntlFn(fd, F_SETFD, 'int', next));
}

/** Duplicate fd to the lowest free number >= min, close-on-exec set. */
export function dupCloexec(fd: number, min = 3): number {
  return check('fcntl(F_DUPFD_CLOEXEC)', fcntlFn(fd, F_DUPFD_CLOEXEC, 'int', min));
}

export function socketpair(type = SOCK_STREAM, cloexec = true): [number, number] {
  const sv = [0, 0];
  check('socketpair', socketpairFn(AF_UNIX, type | (cloexec ? SOCK_CLOEXEC : 0), 0, sv));
  return [sv[0], sv[1]];
}

const CMSG_HDR = 16; // sizeof(struct cmsghdr) on LP64

/** sendmsg with a payload and optional SCM_RIGHTS fds. Returns bytes sent (may be partial, may throw EAGAIN). */
export function sendmsg(fd: number, payload: Buffer, fds: readonly number[] = [], flags = MSG_NOSIGNAL): number {
  let control: Buffer | null = null;
  if (fds.length > 0) {
    const dataLen = 4 * fds.length;
    control = Buffer.alloc(CMSG_HDR + ((dataLen + 7) & ~7));
    control.writeBigUInt64LE(BigInt(CMSG_HDR + dataLen), 0);
    control.writeInt32LE(SOL_SOCKET, 8);
    control.writeInt32LE(SCM_RIGHTS, 12);
    fds.forEach((f, i) => control!.writeInt32LE(f, CMSG_HDR + 4 * i));
  }
  const msg = {
    msg_name: null,
    msg_namelen: 0,
    msg_iov: [{ iov_base: payload, iov_len: payload.length }],
    msg_iovlen: 1,
    msg_control: control,
    msg_controllen: control ? control.length : 0,
    msg_flags: 0,
  };
  return check('sendmsg', sendmsgFn(fd, msg, flags));
}

export interface Received {
  bytes: number;
  data: Buffer;
  fds: number[];
  truncated: boolean;
}

const MSG_CTRUNC = 0x8;

/** recvmsg collecting SCM_RIGHTS fds (received close-on-exec). Blocking unless the fd is non-blocking. */
export function recvmsg(fd: number, maxBytes = 4096, maxFds = 64, flags = MSG_CMSG_CLOEXEC): Received {
  const data = Buffer.alloc(maxBytes);
  const control = Buffer.alloc(CMSG_HDR + 4 * maxFds + 8);
  const msg = {
    msg_name: null,
    msg_namelen: 0,
    msg_iov: [{ iov_base: data, iov_len: maxBytes }],
    msg_iovlen: 1,
    msg_control: control,
    msg_controllen: control.length,
    msg_flags: 0,
  };
  const n = check('recvmsg', recvmsgFn(fd, msg, flags));
  return { bytes: n, data: data.subarray(0, n), ...parseRights(control, Number(msg.msg_controllen)), truncated: (msg.msg_flags & MSG_CTRUNC) !== 0 };
}

function parseRights(control: Buffer, len: number): { fds: number[] } {
  const fds: number[] = [];
  let off = 0;
  while (off + CMSG_HDR <= len) {
    const cmsgLen = Number(control.readBigUInt64LE(off));
    if (cmsgLen < CMSG_HDR) break;
    const level = control.readInt32LE(off + 8);
    const type = control.readInt32LE(off + 12);
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      for (let p = off + CMSG_HDR; p + 4 <= off + cmsgLen; p += 4) fds.push(control.readInt32LE(p));
    }
    off += (cmsgLen + 7) & ~7;
  }
  return { fds };
}

export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

export function peerCred(fd: number): PeerCred {
  const cred = { pid: 0, uid: 0, gid: 0 };
  const len = [12];
  check('getsockopt(SO_PEERCRED)', getsockoptCredFn(fd, SOL_SOCKET, SO_PEERCRED, cred, len));
  return cred;
}

/** An int-valued SOL_SOCKET option (SO_TYPE, SO_DOMAIN, SO_ACCEPTCONN). */
export function socketOption(fd: number, option: number): number {
  const value = [0];
  const len = [4];
  check(`getsockopt(${option})`, getsockoptIntFn(fd, SOL_SOCKET, option, value, len));
  return value[0];
}

/**
 * The filesystem path an AF_UNIX socket is bound to; undefined for an unnamed socket, and
 * `@name` for an abstract one.
 */
export function unixSocketPath(fd: number): string | undefined {
  const addr = Buffer.alloc(110);
  const len = [addr.length];
  check('getsockname', getsocknameFn(fd, addr, len));
  const path = addr.subarray(2, Math.min(len[0], addr.length));
  if (path.length === 0) return undefined;
  if (path[0] === 0) return '@' + path.subarray(1).toString();
  const end = path.indexOf(0);
  return path.subarray(0, end < 0 ? path.length : end).toString();
}

export function setRecvTimeout(fd: number, ms: number): void {
  const tv = { tv_sec: Math.floor(ms / 1000), tv_usec: (ms % 1000) * 1000 };
  check('setsockopt(SO_RCVTIMEO)', setsockoptTvFn(fd, SOL_SOCKET, SO_RCVTIMEO, tv, 16));
}

/** Replace this process image (same pid). Returns only on failure. */
export function execve(path: string, argv: readonly string[], env: Record<string, string | undefined>): never {
  const envp = Object.entries(env)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${v}`);
  execveFn(path, [...argv, null], [...envp, null]);
  throw sysError(`execve(${path})`);
}

const PR_SET_NO_NEW_PRIVS = 38;

/** Drop to uid/gid permanently (real, effective and saved), with exactly these supplementary groups. */
export function dropPrivileges(uid: number, gid: number, groups: readonly number[]): void {
  check('setgroups', setgroupsFn(groups.length, groups.length ? Uint32Array.from(groups) : null));
  check('setresgid', setresgidFn(gid, gid, gid));
  check('setresuid', setresuidFn(uid, uid, uid));
  check('prctl(PR_SET_NO_NEW_PRIVS)', prctlFn(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
}

/**
 * no_new_privs for this process and everything it starts from now on: no execve can gain
 * privileges (setuid bits, file capabilities) — the broker sets it for the emulators it probes.
 */
export function setNoNewPrivs(): void {
  check('prctl(PR_SET_NO_NEW_PRIVS)', prctlFn(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
}

/** A blocking AF_UNIX stream socket connected to path (close-on-exec). */
export function connectUnix(path: string): number {
  const name = Buffer.from(path);
  if (name.length > 107) throw new VirtEbpfError('SYSCALL', `socket path too long: ${path}`, { remedy: 'use a path shorter than 108 bytes' });
  const addr = Buffer.alloc(110);
  addr.writeUInt16LE(AF_UNIX, 0);
  name.copy(addr, 2);
  const fd = check('socket', socketFn(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (Number(connectFn(fd, addr, 2 + name.length + 1)) < 0) {
    const err = sysError(`connect(${path})`);
    closeFn(fd);
    throw err;
  }
  return fd;
}

const openFn = libc.func('int open(const char *, int, ...)');
const ioctlBufFn = libc.func('int ioctl(int, unsigned long, void *)');
const O_RDWR = 2;
const TUNSETIFF = 0x400454ca;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
const IFF_MULTI_QUEUE = 0x0100;
const IFF_VNET_HDR = 0x4000;

/**
 * One queue of a multi-queue tap, as libvirt opens it for QEMU (`/dev/net/tun`, TUNSETIFF with
 * IFF_TAP|IFF_NO_PI|IFF_MULTI_QUEUE|IFF_VNET_HDR); the fd is close-on-exec.
 */
export function openTapQueue(name: string): number {
  if (Buffer.byteLength(name) > 15) throw new VirtEbpfError('SYSCALL', `interface name too long: ${name}`, { remedy: 'use a name of at most 15 bytes' });
  const fd = check('open(/dev/net/tun)', openFn('/dev/net/tun', O_RDWR | O_CLOEXEC, 'int', 0));
  const ifr = Buffer.alloc(40);
  ifr.write(name, 0);
  ifr.writeUInt16LE(IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE | IFF_VNET_HDR, 16);
  if (Number(ioctlBufFn(fd, TUNSETIFF, ifr)) < 0) {
    const err = sysError(`TUNSETIFF(${name})`);
    closeFn(fd);
    throw err;
  }
  return fd;
}

const mallocTrimFn = libc.func('int malloc_trim(size_t)');

/**
 * Gives the C heap's free memory back to the kernel (glibc keeps what a thread freed in that
 * thread's arena, also after the thread ended). Returns whether anything was released.
 */
export function mallocTrim(): boolean {
  return mallocTrimFn(0) === 1;
}

let glibcMalloc: boolean | undefined;

/**
 * Whether the malloc that libc's own functions call is glibc's: false where another allocator
 * took its place (preloaded, linked into the executable, a sanitizer's runtime) or glibc cannot
 * say (no mallinfo2). Found by asking: a copy made by libc's strdup must show in glibc's
 * statistics. Asked once.
 */
export function libcMallocIsGlibcs(): boolean {
  if (glibcMalloc !== undefined) return glibcMalloc;
  try {
    // Defined here, not at import: asked at most once, at the first bind of libbpf.
    koffi.struct('mallinfo2', {
      arena: 'size_t',
      ordblks: 'size_t',
      smblks: 'size_t',
      hblks: 'size_t',
      hblkhd: 'size_t',
      usmblks: 'size_t',
      fsmblks: 'size_t',
      uordblks: 'size_t',
      fordblks: 'size_t',
      keepcost: 'size_t',
    });
    const stats = libc.func('mallinfo2 mallinfo2(void)');
    const strdup = libc.func('void *strdup(const void *)');
    const inUse = (): number => {
      const m = stats() as { uordblks: number | bigint; hblkhd: number | bigint };
      return Number(m.uordblks) + Number(m.hblkhd);
    };
    const size = 1 << 18;
    const text = Buffer.alloc(size + 1, 0x78);
    text[size] = 0;
    const before = inUse();
    const copy = strdup(text);
    const after = inUse();
    glibcMalloc = copy !== null && after - before >= size;
    // Freed by the allocator that made it: glibc's, or the process's own free (looked up in the
    // process's global scope only then: the lookup pages in node's symbol tables).
    if (copy !== null) (glibcMalloc ? libc : koffi.load(null)).func('void free(void *)')(copy);
  } catch {
    glibcMalloc = false;
  }
  return glibcMalloc;
}

const TUNGETVNETHDRSZ = 0x800454d7; // _IOR('T', 215, int)
let pidfdFns: { open(pid: number, flags: number): number; getfd(pidfd: number, fd: number, flags: number): number } | undefined;

function pidfd(): NonNullable<typeof pidfdFns> {
  if (!pidfdFns) {
    try {
      pidfdFns = { open: libc.func('int pidfd_open(int, unsigned int)'), getfd: libc.func('int pidfd_getfd(int, int, unsigned int)') };
    } catch (e) {
      throw new VirtEbpfError('SYSCALL', `this C library has no pidfd_open/pidfd_getfd (glibc 2.36 or newer has): ${(e as Error).message}`, {
        remedy: 'run on Debian 12 or newer',
        cause: e,
      });
    }
  }
  return pidfdFns;
}

/**
 * A duplicate of another process's fd (pidfd_getfd, close-on-exec): the same open file, so
 * reading its state changes nothing for its owner; closing the duplicate drops only this
 * reference. Needs ptrace access to the process (root).
 */
export function duplicateFdOf(pid: number, fd: number): number {
  const f = pidfd();
  const p = check(`pidfd_open(${pid})`, f.open(pid, 0));
  try {
    return check(`pidfd_getfd(${pid}, ${fd})`, f.getfd(p, fd, 0));
  } finally {
    closeFn(p);
  }
}

/** A pidfd of a process (close-on-exec): it stays that process's, whatever its pid comes to name. */
export function pidfdOpen(pid: number): number {
  return check(`pidfd_open(${pid})`, pidfd().open(pid, 0));
}

const pollFn = libc.func('int poll(void *fds, unsigned long nfds, int timeout)');
const POLLIN = 0x1;
/** POLLIN (the process ended), POLLERR, POLLHUP, POLLNVAL (not an open fd): no live process behind it */
const POLL_GONE = 0x1 | 0x8 | 0x10 | 0x20;

/**
 * Which of these pidfds' processes have ended (a pidfd reads as ready once its process has), in
 * one poll; never waits. An fd that is not open, or reports an error, counts as ended: no answer
 * holds on to a process.
 */
export function pidfdsExited(fds: readonly number[]): boolean[] {
  const pfds = Buffer.alloc(8 * fds.length); // struct pollfd { int fd; short events; short revents; }
  fds.forEach((fd, i) => {
    pfds.writeInt32LE(fd, 8 * i);
    pfds.writeInt16LE(POLLIN, 8 * i + 4);
  });
  if (pollFn(pfds, fds.length, 0) < 0) throw sysError('poll(pidfd)');
  return fds.map((_, i) => (pfds.readInt16LE(8 * i + 6) & POLL_GONE) !== 0);
}

/** Whether the process of a pidfd has ended (pidfdsExited of one). */
export function pidfdExited(fd: number): boolean {
  return pidfdsExited([fd])[0];
}

const SIOCOUTQ = 0x5411; // TIOCOUTQ

/**
 * What a socket sent that its peer has not read yet (SIOCOUTQ: for a unix socket, the memory of
 * the messages still queued at the peer, 0 once it read them or closed its end).
 */
export function unreadBySocketPeer(fd: number): number {
  const n = Buffer.alloc(4);
  check('ioctl(SIOCOUTQ)', ioctlBufFn(fd, SIOCOUTQ, n));
  return n.readInt32LE(0);
}

/** TUNGETVNETHDRSZ: the virtio-net header length a tap queue's reader exchanges with the kernel. */
export function tunVnetHeaderSize(fd: number): number {
  const size = Buffer.alloc(4);
  check('ioctl(TUNGETVNETHDRSZ)', ioctlBufFn(fd, TUNGETVNETHDRSZ, size));
  return size.readInt32LE(0);
}
