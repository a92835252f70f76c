/**
 * Find the running QEMU processes with RSS NICs and tie each NIC to its live eBPF program and
 * maps: through the fd numbers its command line names (/proc/PID/fdinfo gives the kernel ids),
 * or, when it names none (QEMU loaded the program itself) or names QMP `getfd` fds, through
 * the bpf-prog fds QEMU holds that no NIC claimed. Reads /proc and opens programs by id: root.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { bpfFdInfo, type BpfFdInfo } from '../fdpass';
import { capsIn, readCmdline } from '../sys/proc';
import { mapInfo, openMapById, openProgById, progInfo } from '../bpf/live';
import { BPF_PROG_TYPE_SOCKET_FILTER } from '../bpf/rss';
import { resolvePolicy } from '../policy';
import { assignRssMapRoles, looksLikeQemu, numericFds, parseQemuRssArgs, type MapShape, type NicArgs, type QemuArgs } from './nics';

/** What we know about a QEMU process besides its command line. */
export interface QemuFacts {
  pid: number;
  argv: string[];
  exe?: string;
  uid?: number;
  /** Its effective capabilities include CAP_BPF or CAP_SYS_ADMIN (it could load eBPF itself). */
  canLoadBpf: boolean;
  domain: { name?: string; uuid?: string };
  /** its command line's NICs and domain, parsed once */
  args: QemuArgs;
}

export interface NicEbpf {
  /**
   * How the NIC names its program: inherited fd numbers, QMP getfd names, not at all (QEMU
   * loaded it), or unknown (a program no command-line NIC could take: a hot-plugged NIC's).
   */
  source: 'fd-numbers' | 'fd-names' | 'self-loaded' | 'unnamed';
  /** How the program was tied to the NIC: named on the command line, the only unclaimed program, device order, or not at all. */
  matchedBy: 'command-line' | 'only-candidate' | 'order' | 'none';
  /** QEMU's fd numbers [program, configuration, key, table] when known. */
  fds?: number[];
  progId: number;
  /** [configuration, key, indirection table] */
  mapIds: [number, number, number];
}

export interface DiscoveredNic extends NicArgs {
  /**
   * 'command-line': a -device of QEMU's command line. 'unnamed-program': an RSS program QEMU
   * holds that no command-line NIC names or could take — a NIC hot-plugged over QMP, whose
   * device arguments /proc cannot show (index -1, no id or MAC).
   */
  origin: 'command-line' | 'unnamed-program';
  /** The tap's interface name: `ifname=`, or from the tap fds' fdinfo. */
  tap?: string;
  ebpf?: NicEbpf;
  /** Set when the NIC wants RSS (or names fds) but has no eBPF program: why, as far as known. */
  noEbpf?: string;
  /** Inconsistencies found while tying fds to the NIC. */
  problems: string[];
}

export interface QemuProcess extends QemuFacts {
  nics: DiscoveredNic[];
  /** Its virtio-net NICs without RSS (no rss, no eBPF fds), with their taps. */
  plainNics: DiscoveredNic[];
}

/**
 * Says why a NIC that asked for RSS runs without eBPF. The default looks at QEMU's privileges,
 * the backend and the domain's policy; a libvirt-aware caller can add what the domain log says.
 */
export type NoEbpfExplainer = (qemu: QemuFacts, nic: NicArgs) => string | undefined;

export interface DiscoverOptions {
  /** Only these pids (default: every process). */
  pids?: readonly number[];
  explainNoEbpf?: NoEbpfExplainer;
  /** Where per-domain policies live (default the wrapper's). */
  domainStateDir?: string;
}

const CAP_SYS_ADMIN = 21n;
const CAP_BPF = 39n;

function readFacts(pid: number, argv: string[]): QemuFacts {
  let exe: string | undefined;
  try {
    exe = readlinkSync(`/proc/${pid}/exe`);
  } catch {
    /* not ours to read, or gone */
  }
  let uid: number | undefined;
  let canLoadBpf = false;
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const u = /^Uid:\s+\d+\s+(\d+)/m.exec(status);
    if (u) uid = Number(u[1]);
    const caps = capsIn(status);
    if (caps !== undefined) canLoadBpf = ((caps >> CAP_BPF) & 1n) === 1n || ((caps >> CAP_SYS_ADMIN) & 1n) === 1n;
  } catch {
    /* gone */
  }
  const args = parseQemuRssArgs(argv);
  return { pid, argv, ...(exe ? { exe } : {}), ...(uid !== undefined ? { uid } : {}), canLoadBpf, domain: args.domain, args };
}

function fdTarget(pid: number, fd: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/fd/${fd}`);
  } catch {
    return undefined;
  }
}

function fdInfo(pid: number, fd: number): BpfFdInfo | undefined {
  try {
    return bpfFdInfo(fd, pid);
  } catch {
    return undefined;
  }
}

function tapName(pid: number, nic: NicArgs): string | undefined {
  if (nic.backend?.ifname) return nic.backend.ifname;
  for (const fd of nic.backend?.fds ?? []) {
    const iff = fdInfo(pid, fd)?.raw.iff;
    if (iff) return iff;
  }
  return undefined;
}

/** The maps a program uses, by role, from the kernel (used when the command line names no map fds). */
function mapsOfProgram(progId: number): { ids: [number, number, number] } | { problem: string } {
  const prog = openProgById(progId);
  try {
    const shapes: MapShape[] = progInfo(prog.fd).mapIds.map((id) => {
      const m = openMapById(id);
      try {
        const i = mapInfo(m.fd);
        return { id, valueSize: i.valueSize, maxEntries: i.maxEntries };
      } finally {
        m.close();
      }
    });
    return assignRssMapRoles(shapes);
  } finally {
    prog.close();
  }
}

/** The role-ordered map ids of a program, or undefined with the reason in `problems`. */
function inspect(progId: number, problems: string[]): [number, number, number] | undefined {
  try {
    const maps = mapsOfProgram(progId);
    if ('ids' in maps) return maps.ids;
    problems.push(`program ${progId}: ${maps.problem}`);
  } catch (e) {
    problems.push(`cannot inspect program ${progId}: ${(e as Error).message}`);
  }
  return undefined;
}

/** Tie a NIC to the fds its command line names by number; problems explain any mismatch. */
function fromFdNumbers(pid: number, fds: number[], problems: string[]): NicEbpf | undefined {
  if (fds.length !== 4) {
    problems.push(`names ${fds.length} eBPF fds (${fds.join(':')}); only the 4-fd layout (program + 3 maps) can be read`);
    return undefined;
  }
  const infos = fds.map((fd) => fdInfo(pid, fd));
  const missing = fds.filter((_, i) => infos[i] === undefined);
  if (missing.length) {
    problems.push(`fd ${missing.join(', ')} named in the command line ${missing.length > 1 ? 'are' : 'is'} not open in QEMU`);
    return undefined;
  }
  const [prog, ...maps] = infos as BpfFdInfo[];
  if (prog.kind !== 'prog' || maps.some((m) => m.kind !== 'map')) {
    problems.push(`fds ${fds.join(', ')} are ${infos.map((i) => i!.kind).join(', ')}, expected prog, map, map, map`);
    return undefined;
  }
  const shapes = maps.map((m) => ({ id: m.id!, valueSize: Number(m.raw.value_size), maxEntries: Number(m.raw.max_entries) }));
  const roles = assignRssMapRoles(shapes);
  if ('problem' in roles) {
    problems.push(roles.problem);
    return undefined;
  }
  if (roles.ids.some((id, i) => id !== shapes[i].id)) problems.push('the map fds are not in configuration, key, table order; QEMU would misuse them');
  // The program must read the very maps QEMU writes, or steering ignores what the guest set.
  try {
    const used = mapsOfProgram(prog.id!);
    if ('ids' in used && used.ids.join() !== roles.ids.join()) {
      problems.push(`program ${prog.id} uses maps ${used.ids.join(', ')}, but QEMU holds ${roles.ids.join(', ')}: guest settings would not reach the program`);
    }
  } catch (e) {
    problems.push(`cannot inspect program ${prog.id}: ${(e as Error).message}`);
  }
  return { source: 'fd-numbers', matchedBy: 'command-line', fds, progId: prog.id!, mapIds: roles.ids };
}

/** QEMU's socket-filter program fds that no NIC named, in fd order. */
function unclaimedPrograms(pid: number, claimed: ReadonlySet<number>): Array<{ fd: number; id: number }> {
  let names: string[];
  try {
    names = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return [];
  }
  const out: Array<{ fd: number; id: number }> = [];
  for (const fd of names.map(Number).sort((a, b) => a - b)) {
    if (claimed.has(fd) || fdTarget(pid, fd) !== 'anon_inode:bpf-prog') continue;
    const info = fdInfo(pid, fd);
    if (info?.kind === 'prog' && info.type === BPF_PROG_TYPE_SOCKET_FILTER) out.push({ fd, id: info.id! });
  }
  return out;
}

/** The default explanation for a NIC that asked for RSS but holds no eBPF program. */
export function defaultNoEbpfReason(qemu: QemuFacts, nic: NicArgs, opts: { domainStateDir?: string } = {}): string {
  const why: string[] = [];
  if (nic.ebpfFds) {
    why.push(`its ${nic.ebpfFds.property} (${nic.ebpfFds.entries.join(', ')}) name no program QEMU holds`);
  } else if (!qemu.canLoadBpf) {
    why.push(`QEMU runs${qemu.uid !== undefined ? ` as uid ${qemu.uid}` : ''} without CAP_BPF and was given no ebpf-rss-fds`);
  } else {
    why.push('QEMU could have loaded eBPF itself but holds no RSS program (see its log)');
  }
  if (qemu.domain.uuid && resolvePolicy(qemu.domain.uuid, { stateDir: opts.domainStateDir }) === 'fallback') {
    why.push("the domain's policy is fallback, so it was started without eBPF when fds could not be had (see the domain log)");
  }
  why.push(nic.backend?.vhost ? 'with vhost on, QEMU then does not offer RSS to the guest' : 'QEMU then steers in software');
  return why.join('; ');
}

/** Tie each NIC of one QEMU to its program and maps. */
export function discoverNics(qemu: QemuFacts, opts: DiscoverOptions = {}): DiscoveredNic[] {
  const args = qemu.args.nics;
  const nics: DiscoveredNic[] = args.map((a) => {
    const tap = tapName(qemu.pid, a);
    return { ...a, origin: 'command-line', ...(tap ? { tap } : {}), problems: [] };
  });
  const claimed = new Set<number>();
  for (const nic of nics) {
    const fds = numericFds(nic);
    if (!fds) continue;
    fds.forEach((f) => claimed.add(f));
    const e = fromFdNumbers(qemu.pid, fds, nic.problems);
    if (e) nic.ebpf = e;
  }
  // NICs whose program the command line does not name by number: QEMU loaded it (rss=on, no
  // fds), or got it by QMP getfd name. Only attribute what is unambiguous or follows device order.
  const open = nics.filter((n) => !n.ebpf && !numericFds(n));
  const candidates = unclaimedPrograms(qemu.pid, claimed);
  const attribute = open.length > 0 && open.length === candidates.length;
  if (attribute) {
    open.forEach((nic, i) => {
      const maps = inspect(candidates[i].id, nic.problems);
      if (maps) {
        nic.ebpf = {
          source: nic.ebpfFds ? 'fd-names' : 'self-loaded',
          matchedBy: open.length === 1 ? 'only-candidate' : 'order',
          progId: candidates[i].id,
          mapIds: maps,
        };
      }
    });
  } else if (open.length > 0 && candidates.length > 0) {
    for (const nic of open) nic.problems.push(`QEMU holds ${candidates.length} unnamed RSS programs for ${open.length} NICs: cannot tell which is this NIC's`);
  }
  if (!attribute) {
    // Still show what those programs steer: a hot-plugged NIC is only visible this way.
    for (const c of candidates) {
      const problems: string[] = [];
      const maps = inspect(c.id, problems);
      nics.push({
        index: -1,
        driver: 'virtio-net',
        rss: true,
        origin: 'unnamed-program',
        ...(maps ? { ebpf: { source: 'unnamed', matchedBy: 'none', fds: [c.fd], progId: c.id, mapIds: maps } } : {}),
        problems,
      });
    }
  }
  const explain = opts.explainNoEbpf ?? ((q: QemuFacts, n: NicArgs) => defaultNoEbpfReason(q, n, { domainStateDir: opts.domainStateDir }));
  for (const nic of nics) {
    if (!nic.ebpf && nic.origin === 'command-line' && (nic.rss || nic.ebpfFds)) nic.noEbpf = explain(qemu, nic) ?? 'no eBPF program found for it';
  }
  return nics;
}

/** A QEMU's virtio-net NICs that neither want RSS nor name eBPF fds. */
export function discoverPlainNics(qemu: QemuFacts): DiscoveredNic[] {
  return qemu.args.plainNics.map((a) => {
    const tap = tapName(qemu.pid, a);
    return { ...a, origin: 'command-line', ...(tap ? { tap } : {}), problems: [] };
  });
}

function allPids(): number[] {
  return readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .map(Number)
    .sort((a, b) => a - b);
}

/**
 * Every running QEMU with a virtio-net NIC that has rss on or names eBPF fds on its command
 * line, or that holds an RSS program anyway (NICs hot-plugged over QMP).
 */
export function discoverQemus(opts: DiscoverOptions = {}): QemuProcess[] {
  const out: QemuProcess[] = [];
  for (const pid of opts.pids ?? allPids()) {
    if (pid === process.pid) continue;
    const argv = readCmdline(pid);
    if (!argv) continue;
    const facts = readFacts(pid, argv);
    if (!looksLikeQemu(argv[0], facts.exe)) continue;
    const nics = discoverNics(facts, opts);
    if (nics.length > 0) out.push({ ...facts, nics, plainNics: discoverPlainNics(facts) });
  }
  return out;
}
