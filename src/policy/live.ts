/**
 * A starting domain's definition as libvirt keeps it, for hosts without our hook (`install
 * --no-hook`). Before libvirt lets the process it forked exec the emulator, it writes the
 * domain's status to /run/libvirt/qemu/NAME.xml (root only): a `<domstatus>` whose `pid` is that
 * process (the wrapper, then QEMU: exec keeps the pid) around the full `<domain>`, our metadata
 * included. So at `exec-plan` the broker reads there what the hook would have read at prepare.
 * The file is tied to the peer by that pid: a process libvirt did not start is named in no status.
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

/** The `<domain>` libvirt is starting in process `pid` under `name`, or undefined. Reads one file. */
export function liveDomainXml(name: string | undefined, pid: number, runDir = LIBVIRT_QEMU_RUN_DIR): string | undefined {
  const path = name ? statusPath(name, runDir) : undefined;
  if (!path) return undefined;
  let text: string;
  try {
    const fd = openSync(path, 'r');
    try {
      if (fstatSync(fd).size > MAX_STATUS) return undefined;
      text = readFileSync(fd, 'utf8');
    } finally {
      closeSync(fd);
    }
  } catch {
    return undefined;
  }
  return domainOfStatus(text, pid);
}
