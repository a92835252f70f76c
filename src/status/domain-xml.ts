/**
 * What libvirt's live XML of a running domain says about its NICs' rss: libvirt keeps it at
 * /run/libvirt/qemu/NAME.xml (root only), hot-plugged NICs included. Status compares it with
 * QEMU's devices to tell a NIC the domain asked rss for from one the host-wide policy gave it.
 */
import { readFileSync } from 'node:fs';
import { LIBVIRT_QEMU_RUN_DIR, statusPath } from '../policy/live';

/** The device aliases (`net0`, `ua-…`) of the interfaces whose `<driver>` says rss='on'. Pure. */
export function rssOnAliases(xml: string): { aliases: Set<string>; interfaces: number } {
  const aliases = new Set<string>();
  let interfaces = 0;
  for (const m of xml.matchAll(/<interface\b[\s\S]*?<\/interface>/g)) {
    interfaces++;
    const alias = /<alias\s+name=(['"])([^'"]+)\1/.exec(m[0])?.[2];
    const rss = /<driver\b[^>]*\brss=(['"])on\1/.test(m[0]);
    if (alias && rss) aliases.add(alias);
  }
  return { aliases, interfaces };
}

/** The live XML's rss aliases of domain `name`, or undefined when it cannot be read. */
export function liveRssAliases(name: string | undefined, runDir = LIBVIRT_QEMU_RUN_DIR): Set<string> | undefined {
  const path = name ? statusPath(name, runDir) : undefined;
  if (!path) return undefined;
  try {
    const r = rssOnAliases(readFileSync(path, 'utf8'));
    return r.interfaces > 0 ? r.aliases : undefined;
  } catch {
    return undefined;
  }
}
