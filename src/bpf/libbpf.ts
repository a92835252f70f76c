/**
 * libbpf.so.1 through koffi, loaded on first use so that parsing and validation never need it.
 * Only the calls the loader and its tests use. libbpf ≥ 1.0 semantics: pointer-returning calls
 * give NULL and set errno, int-returning calls give -errno. Layouts checked against libbpf 1.1
 * (Debian 12's libbpf1), LP64.
 *
 * libbpf's messages go through one print callback (libbpf_set_print is process-wide). We format
 * them with vsnprintf on the spot (the va_list is only valid during the callback) and hand them
 * to whoever is inside `withLibbpfMessages`; outside it they are dropped instead of reaching
 * stderr, where a daemon's caller would never see them. A process that loads off its main thread
 * (the broker: `LibbpfObject.loadAsync`) calls `quietLibbpf()`: then no callback is set at all
 * (a callback is the main thread's JavaScript, and libbpf would call it from the pool's
 * threads); the verifier's own log still comes through each program's log buffer.
 */
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import type * as Koffi from 'koffi';
import koffi from '../sys/koffi';
import { VirtEbpfError } from '../errors';
import { libcMallocIsGlibcs } from '../sys/libc';
import type { MapShape } from './spec';
import { NICED_LOAD_FILE } from './niced-load';

export const LIBBPF_SONAME = 'libbpf.so.1';
export const LIBBPF_WARN = 0;
export const LIBBPF_INFO = 1;
export const LIBBPF_DEBUG = 2;

/** Opaque libbpf handles (koffi external pointers). */
export type Ptr = unknown;

export type LibbpfMapInfo = MapShape;

export interface LibbpfProgramInfo {
  name: string;
  section: string;
  insns: number;
  type: number;
}

interface Bindings {
  openMem(buf: Buffer, size: number, opts: object): Ptr;
  close(obj: Ptr): void;
  load(obj: Ptr): number;
  findProgram(obj: Ptr, name: string): Ptr;
  nextProgram(obj: Ptr, prev: Ptr): Ptr;
  programName(p: Ptr): string;
  programSection(p: Ptr): string;
  programInsnCnt(p: Ptr): number | bigint;
  programType(p: Ptr): number;
  setProgramType(p: Ptr, type: number): number;
  setLogBuf(p: Ptr, buf: Buffer, size: number): number;
  setLogLevel(p: Ptr, level: number): number;
  programFd(p: Ptr): number;
  findMap(obj: Ptr, name: string): Ptr;
  nextMap(obj: Ptr, prev: Ptr): Ptr;
  mapName(m: Ptr): string;
  mapType(m: Ptr): number;
  mapKeySize(m: Ptr): number;
  mapValueSize(m: Ptr): number;
  mapMaxEntries(m: Ptr): number;
  mapFlags(m: Ptr): number;
  mapFd(m: Ptr): number;
  errno(): number;
}

const loaded = new Map<string, Bindings>();
/** The broker's niced load (src/bpf/niced-load.c, built beside this module), bound on its first use. */
export const NICED_LOAD_SO = join(__dirname, basename(NICED_LOAD_FILE));
let nicedLoad: Koffi.KoffiFunction | undefined;
let sink: { debug: boolean; put(level: number, text: string): void } | undefined;
let quiet = false;
/** The libraries bound with libbpf's print callback set (then no load may run off this thread), and how to unset it. */
const printHooks = new Map<string, () => void>();

/** libbpf without a print callback from now on, in libraries bound already too: see above. */
export function quietLibbpf(): void {
  quiet = true;
  for (const unset of printHooks.values()) unset();
  printHooks.clear();
}

/**
 * How libbpf (with libelf and libz under it) and `vebpf-niced-load.so` are dlopen'ed: with
 * RTLD_DEEPBIND, so that the symbols they import are looked up in themselves and their own
 * dependencies first. Without it each lookup starts in node's executable: a node built with its
 * bundled libraries exports V8, OpenSSL, zlib and libuv (~7 MiB of dynamic symbol tables), the
 * lookups page in ~0.4 MiB of them that stays resident in the broker, and libbpf's gz* and
 * libelf's inflate/deflate calls bind to node's copy of zlib rather than the system's libz they
 * were built against. Variables the executable holds copies of (`stderr`) then resolve to libc's
 * originals, which hold the same values; libbpf prints through its callback or not at all.
 *
 * Only where the malloc libc calls is glibc's own (libcMallocIsGlibcs): bound first to glibc,
 * libbpf's free would otherwise be handed what libc's strdup took from another allocator
 * (preloaded, or linked into the executable), and the process would abort. Then the lookups go
 * the usual way.
 */
export function libbpfLoadOptions(): { deep: boolean } {
  return { deep: libcMallocIsGlibcs() };
}

function bind(soname: string): Bindings {
  let lib: Koffi.IKoffiLib;
  try {
    lib = koffi.load(soname, libbpfLoadOptions());
  } catch (e) {
    throw new VirtEbpfError('BPF_LIBBPF_MISSING', `cannot load ${soname}: ${(e as Error).message.split('\n')[0]}`, {
      remedy: 'install libbpf (apt-get install libbpf1)',
      cause: e,
    });
  }
  const libc = koffi.load('libc.so.6');
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
  // Named per soname: koffi's type registry is process-wide.
  const tag = `vebpf${loaded.size}`;
  koffi.opaque(`${tag}_obj`);
  koffi.opaque(`${tag}_prog`);
  koffi.opaque(`${tag}_map`);
  // The first fields of struct bpf_object_open_opts (1.1: sz, object_name, relaxed_maps, …).
  // We pass sz = 16 so libbpf reads object_name and nothing after it.
  koffi.struct(`${tag}_open_opts`, { sz: 'size_t', object_name: 'const char *' });
  const printProto = koffi.proto(`int ${tag}_print(int level, void *fmt, void *ap)`);
  const obj = `${tag}_obj *`;
  const prog = `${tag}_prog *`;
  const map = `${tag}_map *`;

  const errnoLocation = libc.func('int *__errno_location(void)');
  // va_list is passed as a pointer on x86_64 (array type) and aarch64 (large struct, by reference).
  const vsnprintf = libc.func('int vsnprintf(void *buf, size_t size, void *fmt, void *ap)');
  const setPrint = f(`void *libbpf_set_print(${tag}_print *fn)`);
  const scratch = Buffer.alloc(4096);
  const print = koffi.register((level: number, fmt: unknown, ap: unknown): number => {
    try {
      const target = sink;
      if (!target || (level >= LIBBPF_DEBUG && !target.debug)) return 0;
      const n = Number(vsnprintf(scratch, scratch.length, fmt, ap));
      if (n > 0) target.put(level, scratch.toString('utf8', 0, Math.min(n, scratch.length - 1)));
    } catch {
      /* never throw into C */
    }
    return 0;
  }, koffi.pointer(printProto));
  setPrint(quiet ? null : print);
  if (!quiet) printHooks.set(soname, () => setPrint(null));

  const b: Bindings = {
    openMem: f(`${obj} bpf_object__open_mem(const void *buf, size_t size, const ${tag}_open_opts *opts)`),
    close: f(`void bpf_object__close(${obj} o)`),
    load: f(`int bpf_object__load(${obj} o)`),
    findProgram: f(`${prog} bpf_object__find_program_by_name(${obj} o, const char *name)`),
    nextProgram: f(`${prog} bpf_object__next_program(${obj} o, ${prog} p)`),
    programName: f(`const char *bpf_program__name(${prog} p)`),
    programSection: f(`const char *bpf_program__section_name(${prog} p)`),
    programInsnCnt: f(`size_t bpf_program__insn_cnt(${prog} p)`),
    programType: f(`int bpf_program__type(${prog} p)`),
    setProgramType: f(`int bpf_program__set_type(${prog} p, int type)`),
    setLogBuf: f(`int bpf_program__set_log_buf(${prog} p, void *buf, size_t size)`),
    setLogLevel: f(`int bpf_program__set_log_level(${prog} p, uint32 level)`),
    programFd: f(`int bpf_program__fd(${prog} p)`),
    findMap: f(`${map} bpf_object__find_map_by_name(${obj} o, const char *name)`),
    nextMap: f(`${map} bpf_object__next_map(${obj} o, ${map} m)`),
    mapName: f(`const char *bpf_map__name(${map} m)`),
    mapType: f(`int bpf_map__type(${map} m)`),
    mapKeySize: f(`uint32 bpf_map__key_size(${map} m)`),
    mapValueSize: f(`uint32 bpf_map__value_size(${map} m)`),
    mapMaxEntries: f(`uint32 bpf_map__max_entries(${map} m)`),
    mapFlags: f(`uint32 bpf_map__map_flags(${map} m)`),
    mapFd: f(`int bpf_map__fd(${map} m)`),
    errno: () => koffi.decode(errnoLocation(), 'int') as number,
  };
  return b;
}

/** The bindings, loading libbpf on first use. Throws BPF_LIBBPF_MISSING if it is not installed. */
export function libbpf(soname = LIBBPF_SONAME): Bindings {
  let b = loaded.get(soname);
  if (!b) {
    b = bind(soname);
    loaded.set(soname, b);
  }
  return b;
}

/**
 * Run `body` while collecting libbpf's warnings and info lines into `messages` (debug lines only
 * go to `onMessage`). Not re-entrant: libbpf's print hook is process-wide, and loads are synchronous.
 */
export function withLibbpfMessages<T>(body: (messages: string[]) => T, onMessage?: (level: number, text: string) => void): T {
  const messages: string[] = [];
  const prev = sink;
  sink = {
    debug: onMessage !== undefined,
    put(level, text) {
      if (level < LIBBPF_DEBUG) messages.push(text.trimEnd());
      onMessage?.(level, text.trimEnd());
    },
  };
  try {
    return body(messages);
  } finally {
    sink = prev;
  }
}

/** A libbpf `struct bpf_object`, open (parsed by libbpf) and possibly loaded. Close it exactly once. */
export class LibbpfObject {
  #b: Bindings;
  #obj: Ptr | null;
  readonly #soname: string;

  private constructor(b: Bindings, obj: Ptr, soname: string) {
    this.#b = b;
    this.#obj = obj;
    this.#soname = soname;
  }

  /** bpf_object__open_mem: libbpf's parse, no kernel call. Throws BPF_LOAD with libbpf's errno if it refuses the object. */
  static open(bytes: Buffer, objectName: string, soname = LIBBPF_SONAME): LibbpfObject {
    const b = libbpf(soname);
    const opts = { sz: 16, object_name: objectName };
    const obj = b.openMem(bytes, bytes.length, opts);
    if (!obj) {
      const code = b.errno();
      throw new VirtEbpfError('BPF_LOAD', `libbpf could not open the eBPF object (errno ${code})`, {
        remedy: 'the object is not one libbpf accepts; see the detail for libbpf messages',
        fields: { errno: code },
      });
    }
    return new LibbpfObject(b, obj, soname);
  }

  get handle(): Ptr {
    if (this.#obj === null) throw new Error('LibbpfObject used after close()');
    return this.#obj;
  }

  program(name: string): Ptr | null {
    return this.#b.findProgram(this.handle, name) ?? null;
  }

  map(name: string): Ptr | null {
    return this.#b.findMap(this.handle, name) ?? null;
  }

  setProgramType(prog: Ptr, type: number): void {
    const rc = this.#b.setProgramType(prog, type);
    if (rc < 0) throw libbpfCallError('bpf_program__set_type', rc);
  }

  /** `buf` must stay alive until load() returns: libbpf keeps the pointer. */
  setProgramLog(prog: Ptr, buf: Buffer, level: number): void {
    let rc = this.#b.setLogBuf(prog, buf, buf.length);
    if (rc < 0) throw libbpfCallError('bpf_program__set_log_buf', rc);
    rc = this.#b.setLogLevel(prog, level);
    if (rc < 0) throw libbpfCallError('bpf_program__set_log_level', rc);
  }

  /** bpf_object__load: creates the maps and loads the programs (the privileged step). Returns 0 or -errno. */
  load(): number {
    return this.#b.load(this.handle);
  }

  /**
   * bpf_object__load on a thread of libuv's pool at nice `nice` (src/bpf/niced-load.c), so the
   * calling thread goes on meanwhile. The object must not be used or closed until it settles.
   * libbpf must run without its print callback (`quietLibbpf`): the callback is JavaScript of
   * the thread that set it. `niceStuck`: the pool thread's nice could not be set or put back.
   */
  loadAsync(nice: number): Promise<{ rc: number; niceStuck: boolean }> {
    if (printHooks.size > 0) throw new Error('libbpf has its print callback: call quietLibbpf() before loading off the main thread');
    const load = nicedLoadFunction();
    const handle = this.handle;
    const soname = this.#soname;
    const status = new Int32Array(1);
    return new Promise((resolve, reject) => {
      load.async(soname, handle, nice, status, (err: unknown, rc: number) => {
        if (err) return reject(err);
        if (status[0] & NICED_NO_LIBBPF) return reject(new VirtEbpfError('BPF_LIBBPF_MISSING', `${soname} is not loaded in this process, or has no bpf_object__load`, { remedy: 'install libbpf 1.0 or newer (apt-get install libbpf1)' }));
        resolve({ rc, niceStuck: (status[0] & NICED_NICE_STUCK) !== 0 });
      });
    });
  }

  programFd(prog: Ptr): number {
    return this.#b.programFd(prog);
  }

  mapFd(map: Ptr): number {
    return this.#b.mapFd(map);
  }

  programs(): LibbpfProgramInfo[] {
    const out: LibbpfProgramInfo[] = [];
    for (let p = this.#b.nextProgram(this.handle, null); p; p = this.#b.nextProgram(this.handle, p)) {
      out.push({ name: this.#b.programName(p), section: this.#b.programSection(p), insns: Number(this.#b.programInsnCnt(p)), type: this.#b.programType(p) });
    }
    return out;
  }

  mapInfo(m: Ptr): LibbpfMapInfo {
    const b = this.#b;
    return { name: b.mapName(m), type: b.mapType(m), keySize: b.mapKeySize(m), valueSize: b.mapValueSize(m), maxEntries: b.mapMaxEntries(m), flags: b.mapFlags(m) };
  }

  maps(): LibbpfMapInfo[] {
    const out: LibbpfMapInfo[] = [];
    for (let m = this.#b.nextMap(this.handle, null); m; m = this.#b.nextMap(this.handle, m)) out.push(this.mapInfo(m));
    return out;
  }

  /** bpf_object__close: frees libbpf's state and closes every fd it created. Idempotent. */
  close(): void {
    if (this.#obj === null) return;
    const obj = this.#obj;
    this.#obj = null;
    this.#b.close(obj);
  }
}

/** niced-load.c's `*status` bits. */
const NICED_NO_LIBBPF = 1;
const NICED_NICE_STUCK = 2;

function nicedLoadFunction(): Koffi.KoffiFunction {
  if (nicedLoad) return nicedLoad;
  const remedy = 'npm run build in the checkout (needs gcc, libc6-dev), then virt-ebpf install';
  if (!existsSync(NICED_LOAD_SO)) throw new VirtEbpfError('SHIMS_MISSING', `${NICED_LOAD_SO} is missing: the broker cannot load eBPF programs`, { remedy });
  try {
    nicedLoad = koffi.load(NICED_LOAD_SO, libbpfLoadOptions()).func('int vebpf_load_niced(const char *soname, void *obj, int nice, _Out_ int *status)');
  } catch (e) {
    throw new VirtEbpfError('SHIMS_MISSING', `cannot load ${NICED_LOAD_SO}: ${(e as Error).message.split('\n')[0]}`, { remedy, cause: e });
  }
  return nicedLoad;
}

function libbpfCallError(op: string, rc: number): VirtEbpfError {
  return new VirtEbpfError('BPF_LOAD', `${op} failed (errno ${-rc})`, { remedy: 'this is a libbpf usage error; report it', fields: { errno: -rc } });
}
