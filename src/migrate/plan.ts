/**
 * What `virt-ebpf migrate` does with one domain, decided from facts alone. Pure.
 *
 * A destination "has virt-ebpf" when its libvirtd can run the wrapper the domain's XML names
 * (the only way a source can tell over libvirt's API). When it has, the migration runs as asked:
 * the destination's hook and broker take over (and its hook applies the domain's policy if its
 * broker is down). When it has not: `strict` refuses before anything starts, `fallback` sends
 * the XML with `<emulator>` back to the real QEMU (src/xml withoutWrapper: devices unchanged).
 */
import { VirtEbpfError } from '../errors';
import type { Policy } from '../policy';

export interface MigrationFacts {
  name: string;
  destUri: string;
  /** null: the domain is not enabled (no metadata, or <emulator> is not the wrapper). */
  enabled: null | { policy: Policy; wrapper: string };
  /** undefined when not asked (a domain that is not enabled). */
  destHasWrapper?: boolean;
  /** The virsh migrate options the user gave. */
  options: readonly string[];
}

export type MigrationPlan =
  | { kind: 'as-is'; options: string[] }
  | { kind: 'plain'; options: string[]; warning: string; xmlFrom: 'live' | string; persistentXmlFrom?: 'inactive' | string };

/** The value of `--xml F` / `--xml=F` in virsh options, and the options without it. */
export function takeOption(options: readonly string[], name: string): { value?: string; rest: string[] } {
  const rest: string[] = [];
  let value: string | undefined;
  for (let i = 0; i < options.length; i++) {
    const o = options[i];
    if (o === name) value = options[++i];
    else if (o.startsWith(name + '=')) value = o.slice(name.length + 1);
    else rest.push(o);
  }
  return { value, rest };
}

export function planMigration(f: MigrationFacts): MigrationPlan {
  if (!f.enabled || f.destHasWrapper) return { kind: 'as-is', options: [...f.options] };
  if (f.enabled.policy === 'strict') {
    throw new VirtEbpfError('MIGRATION_REFUSED', `${f.destUri} cannot run ${f.enabled.wrapper} (virt-ebpf is not installed there) and ${f.name}'s policy is strict: not migrated, ${f.name} keeps running here`, {
      remedy: `install virt-ebpf on the destination, or \`virt-ebpf enable ${f.name} --policy fallback\` to let it run there without eBPF RSS`,
    });
  }
  const xml = takeOption(f.options, '--xml');
  const pxml = takeOption(xml.rest, '--persistent-xml');
  const persistent = pxml.rest.includes('--persistent');
  return {
    kind: 'plain',
    options: pxml.rest,
    xmlFrom: xml.value ?? 'live',
    ...(persistent ? { persistentXmlFrom: pxml.value ?? 'inactive' } : {}),
    warning: `virt-ebpf: ${f.destUri} cannot run ${f.enabled.wrapper} (virt-ebpf is not installed there): ${f.name} runs there without eBPF RSS (policy fallback), with the same devices`,
  };
}
