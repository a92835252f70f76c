/**
 * A starting domain's definition as libvirt keeps it, for hosts without our hook (`install
 * --no-hook`). Before libvirt lets the process it forked exec the emulator, it writes the
 * domain's status to /run/libvirt/qemu/NAME.xml (root only): a `<domstatus>` whose `pid` is that
 * process (the wrapper, then QEMU: exec keeps the pid) around the full `<domain>`, our metadata
 * included. So at `exec-plan` the broker reads there what the hook would have read at prepare.
 * The file is tied to the peer by that pid, its name and its uuid: a process libvirt did not
 * start is named in no status, and a process libvirt started only in its own domain's.
 */
import { closeSync, fstatSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export const LIBVIRT_QEMU_RUN_DIR = '/run/libvirt/qemu';
/** A status XML is a few tens of KiB; nothing past this is read. */
const MAX_STATUS = 4 << 20;

/**
 * The `<domain>` element of a `<domstatus>` document whose pid is `pid`, as text; undefined when
 * the document is another process's, or not a status. Pure.
 */
export function domainOfStatus(status: string, pid: number): string | undefined {
  const root = /<domstatus\b[^>]*>/.exec(status);
  const statusPid = root ? /\bpid=(['"])(\d+)\1/.exec(root[0])?.[2] : undefined;
  if (statusPid === undefined || Number(statusPid) !== pid) return undefined;
  const start = status.search(/<domain[\s>]/);
  const end = status.lastIndexOf('</domain>');
  return start >= 0 && end > start ? status.slice(start, end + '</domain>'.length) : undefined;
}

/** libvirt names its status files after the domain; a name a peer chose never leaves the directory. */
export function statusPath(name: string, runDir = LIBVIRT_QEMU_RUN_DIR): string | undefined {
  return name && !name.includes('/') && name !== '.' && name !== '..' && name.length <= 255 ? join(runDir, `${name}.xml`) : undefined;
}

/** The first `<name>` and `<uuid>` of a `<domain>` (libvirt writes them first). Pure. */
export function domainIds(domain: string): { name?: string; uuid?: string } {
  const entities: Record<string, string> = { amp: '&', lt: '<', gt: '>', apos: "'", quot: '"' };
  const name = /<name>([^<]*)<\/name>/.exec(domain)?.[1]?.replace(/&(amp|lt|gt|apos|quot);/g, (_, e: string) => entities[e]);
  return { name, uuid: /<uuid>([^<]*)<\/uuid>/.exec(domain)?.[1]?.trim().toLowerCase() };
}

/**
 * The `<domain>` libvirt is starting as `name` with `uuid` in process `pid`, or why there is
 * none: the status must name that pid, that name and that uuid (a peer chooses its `-name`
 * and `-uuid`, not the status libvirt wrote for its pid). Reads one file.
 */
export function liveDomainXml(name: string | undefined, uuid: string, pid: number, runDir = LIBVIRT_QEMU_RUN_DIR): { domain: string } | { why: string } {
  const path = name ? statusPath(name, runDir) : undefined;
  if (!path) return { why: 'no usable -name on the command line' };
  let text: string;
  try {
    const fd = openSync(path, 'r');
    try {
      const size = fstatSync(fd).size;
      if (size > MAX_STATUS) return { why: `${path} has ${size} bytes (at most ${MAX_STATUS} are read)` };
      text = readFileSync(fd, 'utf8');
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    return { why: `${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` };
  }
  const domain = domainOfStatus(text, pid);
  if (!domain) return { why: `${path} is not the status of pid ${pid}` };
  const ids = domainIds(domain);
  if (ids.name !== name || ids.uuid !== uuid) return { why: `${path} names ${ids.name} ${ids.uuid}, not ${name} ${uuid}` };
  return { domain };
}
