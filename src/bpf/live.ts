/**
 * Live BPF objects by kernel id: open a program or map another process holds (QEMU only mmaps
 * its maps; root can still open them by id), read and write map elements, describe a program
 * (the maps it uses), and run a program on a crafted packet (BPF_PROG_TEST_RUN). Everything goes
 * through libbpf's thin syscall wrappers, bound here next to src/bpf/libbpf.ts's loader: we call
 * `libbpf()` first so a missing library fails the same way, then bind the few extra symbols.
 * libbpf ≥ 1.0 returns -errno from these calls. All need CAP_SYS_ADMIN (root).
 */
import type * as Koffi from 'koffi';
import koffi from '../sys/koffi';
import { VirtEbpfError } from '../errors';
import { OwnedFd } from '../fdpass';
import * as libc from '../sys/libc';
import { libbpf, libbpfLoadOptions, LIBBPF_SONAME } from './libbpf';

const ENOENT = 2;
const EPERM = 1;
const EACCES = 13;

interface LiveBindings {
  progFdById(id: number): number;
  mapFdById(id: number): number;
  lookup(fd: number, key: Buffer, value: Buffer): number;
  update(fd: number, key: Buffer, value: Buffer, flags: number | bigint): number;
  infoByFd(fd: number, info: Buffer, len: number[]): number;
  testRun(fd: number, opts: TestRunOpts): number;
  enableStats(type: number): number;
}

/** libbpf's `struct bpf_test_run_opts` (1.1 layout, LP64). */
interface TestRunOpts {
  sz: number;
  data_in: Buffer | null;
  data_out: Buffer | null;
  data_size_in: number;
  data_size_out: number;
  ctx_in: Buffer | null;
  ctx_out: Buffer | null;
  ctx_size_in: number;
  ctx_size_out: number;
  retval: number;
  repeat: number;
  duration: number;
  flags: number;
  cpu: number;
  batch_size: number;
}

const bound = new Map<string, LiveBindings>();

function bind(soname: string): LiveBindings {
  libbpf(soname); // same typed error as the loader when the library is missing
  const lib = koffi.load(soname, libbpfLoadOptions()); // the instance libbpf() loaded, bound the same way
  const f = (sig: string): Koffi.KoffiFunction => {
    try {
      return lib.func(sig);
    } catch (e) {
      throw new VirtEbpfError('BPF_LIBBPF_MISSING', `${soname} lacks a function virt-ebpf needs (${sig}): too old?`, {
        remedy: 'install libbpf 1.0 or newer (apt-get install libbpf1)',
        cause: e,
      });
    }
  };
  const tag = `vebpf_live${bound.size}`;
  koffi.struct(`${tag}_test_run_opts`, {
    sz: 'size_t',
    data_in: 'void *',
    data_out: 'void *',
    data_size_in: 'uint32',
    data_size_out: 'uint32',
    ctx_in: 'void *',
    ctx_out: 'void *',
    ctx_size_in: 'uint32',
    ctx_size_out: 'uint32',
    retval: 'uint32',
    repeat: 'int',
    duration: 'uint32',
    flags: 'uint32',
    cpu: 'uint32',
    batch_size: 'uint32',
  });
  return {
    progFdById: f('int bpf_prog_get_fd_by_id(uint32 id)'),
    mapFdById: f('int bpf_map_get_fd_by_id(uint32 id)'),
    lookup: f('int bpf_map_lookup_elem(int fd, const void *key, void *value)'),
    update: f('int bpf_map_update_elem(int fd, const void *key, const void *value, uint64 flags)'),
    infoByFd: f('int bpf_obj_get_info_by_fd(int fd, void *info, _Inout_ uint32 *len)'),
    testRun: f(`int bpf_prog_test_run_opts(int fd, _Inout_ ${tag}_test_run_opts *opts)`),
    enableStats: f('int bpf_enable_stats(int type)'),
  };
}

function live(soname = LIBBPF_SONAME): LiveBindings {
  let b = bound.get(soname);
  if (!b) {
    b = bind(soname);
    bound.set(soname, b);
  }
  return b;
}

function callError(op: string, errno: number, fields: Record<string, unknown> = {}): VirtEbpfError {
  const why = `${libc.strerror(errno)} (errno ${errno})`;
  if (errno === EPERM || errno === EACCES) {
    return new VirtEbpfError('BPF_PERMISSION', `${op} was refused: ${why}`, { remedy: 'reading BPF objects of other processes needs root (CAP_SYS_ADMIN); run as root', fields: { errno, ...fields } });
  }
  return new VirtEbpfError('SYSCALL', `${op} failed: ${why}`, { remedy: 'check that the kernel supports bpf() and that the object still exists', fields: { errno, ...fields } });
}

function byId(kind: 'prog' | 'map', id: number): OwnedFd {
  if (!Number.isInteger(id) || id <= 0 || id > 0xffffffff) throw new RangeError(`not a BPF ${kind} id: ${id}`);
  const b = live();
  const fd = kind === 'prog' ? b.progFdById(id) : b.mapFdById(id);
  if (fd === -ENOENT) {
    throw new VirtEbpfError('BPF_NOT_FOUND', `BPF ${kind} ${id} does not exist (any more)`, {
      remedy: 'the process that held it has exited or replaced it; run the command again',
      fields: { kind, id },
    });
  }
  if (fd < 0) throw callError(`opening BPF ${kind} ${id}`, -fd, { kind, id });
  // The kernel creates BPF fds close-on-exec; they must not leak into children anyway.
  return new OwnedFd(fd);
}

/** BPF_PROG_GET_FD_BY_ID. The fd is close-on-exec. Throws BPF_NOT_FOUND when the program is gone. */
export function openProgById(id: number): OwnedFd {
  return byId('prog', id);
}

/** BPF_MAP_GET_FD_BY_ID. The fd is close-on-exec. Throws BPF_NOT_FOUND when the map is gone. */
export function openMapById(id: number): OwnedFd {
  return byId('map', id);
}

function u32Key(key: number): Buffer {
  const k = Buffer.alloc(4);
  k.writeUInt32LE(key >>> 0);
  return k;
}

/**
 * BPF_MAP_LOOKUP_ELEM with a u32 key (array maps). Returns the value as the syscall gives it:
 * exactly `valueSize` bytes per element, whatever padding the map's mmap layout has.
 */
export function mapLookup(fd: number, key: number, valueSize: number): Buffer {
  const value = Buffer.alloc(valueSize);
  const rc = live().lookup(fd, u32Key(key), value);
  if (rc < 0) throw callError(`reading element ${key} of a BPF map`, -rc, { key });
  return value;
}

/** BPF_MAP_UPDATE_ELEM (BPF_ANY) with a u32 key. */
export function mapUpdate(fd: number, key: number, value: Buffer): void {
  const rc = live().update(fd, u32Key(key), value, 0);
  if (rc < 0) throw callError(`writing element ${key} of a BPF map`, -rc, { key });
}

export interface BpfMapInfo {
  id: number;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
  name: string;
}

export interface BpfProgInfo {
  id: number;
  type: number;
  /** hex */
  tag: string;
  name: string;
  /** The maps the program uses, in the kernel's order. */
  mapIds: number[];
  /** Only counted while run statistics are on (kernel.bpf_stats_enabled=1, or an enableRunStats() fd open). */
  runCnt: number;
  runTimeNs: number;
}

const MAP_INFO_SIZE = 40; // type .. name (struct bpf_map_info, first fields)
const PROG_INFO_SIZE = 208; // type .. run_cnt (struct bpf_prog_info)

function cString(b: Buffer): string {
  const end = b.indexOf(0);
  return b.toString('utf8', 0, end < 0 ? b.length : end);
}

/** BPF_OBJ_GET_INFO_BY_FD for a map. */
export function mapInfo(fd: number): BpfMapInfo {
  const info = Buffer.alloc(MAP_INFO_SIZE);
  const rc = live().infoByFd(fd, info, [info.length]);
  if (rc < 0) throw callError('describing a BPF map', -rc);
  return {
    type: info.readUInt32LE(0),
    id: info.readUInt32LE(4),
    keySize: info.readUInt32LE(8),
    valueSize: info.readUInt32LE(12),
    maxEntries: info.readUInt32LE(16),
    flags: info.readUInt32LE(20),
    name: cString(info.subarray(24, 40)),
  };
}

/** BPF_OBJ_GET_INFO_BY_FD for a program, with the ids of the maps it uses. */
export function progInfo(fd: number): BpfProgInfo {
  const b = live();
  const info = Buffer.alloc(PROG_INFO_SIZE);
  // First ask how many maps, then pass an array that large (the kernel fills min(nr, actual)).
  let rc = b.infoByFd(fd, info, [info.length]);
  if (rc < 0) throw callError('describing a BPF program', -rc);
  const nr = info.readUInt32LE(52);
  const ids = Buffer.alloc(4 * Math.max(nr, 1));
  if (nr > 0) {
    info.fill(0);
    info.writeUInt32LE(nr, 52);
    info.writeBigUInt64LE(BigInt(koffi.address(ids) as bigint), 56);
    rc = b.infoByFd(fd, info, [info.length]);
    if (rc < 0) throw callError('listing the maps of a BPF program', -rc);
  }
  const got = Math.min(nr, info.readUInt32LE(52));
  return {
    type: info.readUInt32LE(0),
    id: info.readUInt32LE(4),
    tag: info.subarray(8, 16).toString('hex'),
    name: cString(info.subarray(64, 80)),
    mapIds: Array.from({ length: got }, (_, i) => ids.readUInt32LE(4 * i)),
    runTimeNs: Number(info.readBigUInt64LE(192)),
    runCnt: Number(info.readBigUInt64LE(200)),
  };
}

export interface TestRunResult {
  /** The program's return value (u32). */
  retval: number;
  /** Average run time per repetition, ns (kernel-measured). */
  durationNs: number;
}

/**
 * BPF_PROG_TEST_RUN on one packet. For a socket filter the kernel builds an skb from `data` as
 * if received on loopback: `data` must start with an Ethernet header, which becomes the MAC
 * header; the network header follows it.
 */
export function progTestRun(fd: number, data: Buffer, repeat = 1): TestRunResult {
  const opts: TestRunOpts = {
    sz: 72, // through `flags`: every field we set, nothing a 1.0 libbpf would not know
    data_in: data,
    data_out: null,
    data_size_in: data.length,
    data_size_out: 0,
    ctx_in: null,
    ctx_out: null,
    ctx_size_in: 0,
    ctx_size_out: 0,
    retval: 0,
    repeat,
    duration: 0,
    flags: 0,
    cpu: 0,
    batch_size: 0,
  };
  const rc = live().testRun(fd, opts);
  if (rc < 0) throw callError('running a BPF program on a test packet (BPF_PROG_TEST_RUN)', -rc);
  return { retval: opts.retval >>> 0, durationNs: opts.duration };
}

const BPF_STATS_RUN_TIME = 0;

/**
 * BPF_ENABLE_STATS: the kernel counts every program's runs (run_cnt, run_time_ns) for as long
 * as the returned fd is open, whatever kernel.bpf_stats_enabled says, and stops when the last
 * such fd closes — also when this process dies, so nothing is left switched on. Root.
 */
export function enableRunStats(): OwnedFd {
  const fd = live().enableStats(BPF_STATS_RUN_TIME);
  if (fd < 0) throw callError('turning on BPF run statistics (BPF_ENABLE_STATS)', -fd);
  return new OwnedFd(fd);
}
