/**
 * Which domains use virt-ebpf: uninstall must not pull the wrapper out from under them.
 * A domain counts when its persistent definition or, while it runs, its live XML is enabled
 * (a domain disabled while running still runs through the wrapper until it stops).
 */
import { isVirtEbpfError } from '../errors';
import { isEnabled } from '../xml';
import { withConnection, type Connection } from './connection';
import { VIR_ERR } from './error';

function usesWrapper(xml: string): boolean {
  try {
    return isEnabled(xml);
  } catch (e) {
    // Our metadata is there but damaged: that domain was enabled once; count it.
    if (isVirtEbpfError(e, 'XML_METADATA')) return true;
    throw e;
  }
}

export function enabledDomainsOn(conn: Connection): string[] {
  const out: string[] = [];
  for (const d of conn.listDomains()) {
    try {
      const xmls = [...(d.isPersistent() ? [d.xml({ inactive: true })] : []), ...(d.isActive() ? [d.xml()] : [])];
      if (xmls.some(usesWrapper)) out.push(d.name);
    } catch (e) {
      // Undefined between the list and our look: it uses nothing any more.
      if (!(isVirtEbpfError(e, 'LIBVIRT_ERROR') && e.fields.virCode === VIR_ERR.NO_DOMAIN)) throw e;
    } finally {
      d.free();
    }
  }
  return out.sort();
}

/** Names of the domains that use virt-ebpf, over a connection of their own (default URI). */
export function enabledDomains(uri?: string): string[] {
  return withConnection(uri, enabledDomainsOn);
}
