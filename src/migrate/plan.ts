/**
 * What `virt-ebpf migrate` does with one domain, decided from facts alone. Pure.
 *
 * A destination "has virt-ebpf" when its libvirtd can run the wrapper the domain's XML names
 * (the only way a source can tell over libvirt's API). When it has, the migration runs as asked:
 * the destination's hook and broker take over (and its prepare hook applies the domain's policy
 * if its broker is down). When it has not: `strict` refuses before anything starts, `fallback`
 * sends the XML with `<emulator>` back to the real QEMU (src/xml withoutWrapper: devices
 * unchanged). With `--persistent` the definition travels too, so its own policy counts as well:
 * a strict definition is never sent where it would later start without eBPF.
 */
import { VirtEbpfError } from '../errors';
import type { Policy } from '../policy';

export interface MigrationFacts {
  name: string;
  destUri: string;
  /** The running domain's: null when it is not enabled (no metadata, or <emulator> is not the wrapper). */
  enabled: null | { policy: Policy; wrapper: string };
  /** The persistent definition's policy, when it is enabled (undefined: transient, or not enabled). */
  definitionPolicy?: Policy;
  /** undefined when not asked (a domain that is not enabled). */
  destHasWrapper?: boolean;
  /** The virsh migrate options the user gave. */
  options: readonly string[];
}

/** Where an XML comes from: libvirt (the live or the inactive definition) or the user's file. */
export type XmlSource = { libvirt: 'live' | 'inactive' } | { file: string };

export type MigrationPlan =
  | { kind: 'as-is'; options: string[] }
  | { kind: 'plain'; options: string[]; warning: string; xml: XmlSource; persistentXml?: XmlSource };

function usage(message: string): VirtEbpfError {
  return new VirtEbpfError('USAGE', `migrate: ${message}`, { remedy: 'see `virsh help migrate`; options go after `--`' });
}

/** The value of `NAME F` / `NAME=F` in virsh options, and the options without it. */
export function takeOption(options: readonly string[], name: string): { value?: string; rest: string[] } {
  const rest: string[] = [];
  let value: string | undefined;
  for (let i = 0; i < options.length; i++) {
    const o = options[i];
    if (o === name) {
      value = options[++i];
      if (value === undefined) throw usage(`${name} needs a file`);
    } else if (o.startsWith(name + '=')) value = o.slice(name.length + 1);
    else rest.push(o);
  }
  return { value, rest };
}

export function planMigration(f: MigrationFacts): MigrationPlan {
  const xml = takeOption(f.options, '--xml');
  const pxml = takeOption(xml.rest, '--persistent-xml');
  const persistent = pxml.rest.includes('--persistent');
  if (pxml.value !== undefined && !persistent) throw usage('--persistent-xml needs --persistent');
  if (!f.enabled || f.destHasWrapper) return { kind: 'as-is', options: [...f.options] };
  const strictBy = f.enabled.policy === 'strict' ? 'its policy' : persistent && f.definitionPolicy === 'strict' ? 'the policy of its definition (which --persistent would take there)' : undefined;
  if (strictBy) {
    throw new VirtEbpfError('MIGRATION_REFUSED', `${f.destUri} cannot run ${f.enabled.wrapper} (virt-ebpf is not installed there) and ${strictBy} is strict: ${f.name} not migrated, it keeps running here`, {
      remedy: `install virt-ebpf on the destination, or make ${f.name}'s policy fallback (\`virt-ebpf enable ${f.name} --policy fallback\` changes its definition; a running domain keeps its policy until it starts again)`,
    });
  }
  return {
    kind: 'plain',
    options: pxml.rest,
    xml: xml.value !== undefined ? { file: xml.value } : { libvirt: 'live' },
    ...(persistent ? { persistentXml: pxml.value !== undefined ? { file: pxml.value } : { libvirt: 'inactive' as const } } : {}),
    warning: `virt-ebpf: ${f.destUri} cannot run ${f.enabled.wrapper} (virt-ebpf is not installed there): ${f.name} runs there without eBPF RSS (policy fallback), with the same devices`,
  };
}
