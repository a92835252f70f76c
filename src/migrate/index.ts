/**
 * `virt-ebpf migrate`: `virsh migrate` for an enabled domain, after asking the destination
 * whether it can run virt-ebpf's wrapper (src/migrate/plan decides what follows). The side
 * effects live here: virsh to read the domain and the destination, temporary XML files, and the
 * migration itself, whose output goes straight to the terminal.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VirtEbpfError } from '../errors';
import { domainFacts, interfacesOf, isVirtioModel, withoutWrapper, withRssOn } from '../xml';
import { isHostWide } from '../install/manifest';
import { DEFAULT_PATHS } from '../install/plan';
import { planMigration, takeOption, type XmlSource } from './plan';

export { planMigration, takeOption, type MigrationFacts, type MigrationPlan, type XmlSource } from './plan';

export { MIGRATE_USAGE, MIGRATE_SUMMARY } from './usage';

function virsh(uri: string, args: readonly string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync('virsh', ['-q', '-c', uri, ...args], { encoding: 'utf8', timeout: 120_000, maxBuffer: 64 << 20 });
  if (r.error) {
    const missing = (r.error as NodeJS.ErrnoException).code === 'ENOENT';
    throw new VirtEbpfError(missing ? 'LIBVIRT_MISSING' : 'LIBVIRT_ERROR', `virsh ${args[0]} against ${uri}: ${r.error.message}`, {
      remedy: missing ? 'install libvirt-clients (virsh)' : 'check that libvirtd at that URI answers (`virsh -c URI version`)',
      cause: r.error,
    });
  }
  return { code: r.status ?? 1, stdout: r.stdout, stderr: r.stderr.trim().replace(/^error: /gm, '').replace(/\n+/g, ': ') };
}

/**
 * Whether libvirt at `uri` can run `emulator` (it answers domcapabilities for it). Only libvirt's
 * own "no such file" for that very path means no; any other failure is an error, never a no.
 */
export function canRunEmulator(uri: string, emulator: string, virtType: string): boolean {
  const r = virsh(uri, ['domcapabilities', '--emulatorbin', emulator, '--virttype', virtType]);
  if (r.code === 0) return true;
  if (r.stderr.includes(`Cannot check QEMU binary ${emulator}: No such file or directory`)) return false;
  throw new VirtEbpfError('LIBVIRT_ERROR', `cannot ask ${uri} whether it can run ${emulator}: ${r.stderr}`, {
    remedy: 'check that the destination URI is right and its libvirtd answers (`virsh -c DESTURI version`)',
  });
}

/**
 * The MACs of the domain's virtio NICs that run with rss although its XML does not ask (the
 * host-wide policy's, cold-plugged or hot-plugged): QEMU's own `rss` property of each, asked
 * through libvirt's monitor.
 */
export function hostPolicyMacs(uri: string, name: string): Set<string> {
  const out = new Set<string>();
  const live = virsh(uri, ['dumpxml', name]);
  if (live.code !== 0) return out;
  for (const i of interfacesOf(live.stdout)) {
    if (i.rss !== undefined || !i.alias || !i.mac || !isVirtioModel(i.model)) continue;
    const q = virsh(uri, ['qemu-monitor-command', name, JSON.stringify({ execute: 'qom-get', arguments: { path: `/machine/peripheral/${i.alias}`, property: 'rss' } })]);
    try {
      if (q.code === 0 && (JSON.parse(q.stdout) as { return?: unknown }).return === true) out.add(i.mac.toLowerCase());
    } catch {
      /* not JSON: QEMU could not say */
    }
  }
  return out;
}

export interface MigrateRequest {
  uri: string;
  name: string;
  destUri: string;
  options: readonly string[];
}

/** Runs the migration; the exit status is virsh's (0: migrated). */
export function migrateDomain(req: MigrateRequest, err: (line: string) => void): number {
  const read = (inactive: boolean): string => {
    const r = virsh(req.uri, ['dumpxml', ...(inactive ? ['--inactive'] : []), '--migratable', req.name]);
    if (r.code !== 0) throw new VirtEbpfError('DOMAIN_NOT_FOUND', `cannot read ${req.name}'s ${inactive ? 'definition' : 'XML'} from ${req.uri}: ${r.stderr}`, { remedy: 'name a running domain (`virsh list`)' });
    return r.stdout;
  };
  const live = read(false);
  const facts = domainFacts(live);
  const enabled = facts.enabled && facts.config ? { policy: facts.config.policy, wrapper: facts.config.emulator.wrapper } : null;
  const persistent = enabled ? virsh(req.uri, ['dominfo', req.name]).stdout.match(/^Persistent:\s+yes/m) !== null : false;
  const inactive = persistent ? read(true) : undefined;
  const definition = inactive ? domainFacts(inactive) : undefined;
  const virtType = /<domain\b[^>]*\btype=['"]([a-z]+)['"]/.exec(live)?.[1] ?? 'kvm';
  const plan = planMigration({
    name: req.name,
    destUri: req.destUri,
    enabled,
    definitionPolicy: definition?.enabled ? definition.config?.policy : undefined,
    destHasWrapper: enabled ? canRunEmulator(req.destUri, enabled.wrapper, virtType) : undefined,
    options: req.options,
  });
  // NICs the host-wide policy gave rss: the XML that travels says so, or the destination's QEMU
  // (under another policy) would have other virtio features and fail to load the stream.
  // Asked only on a host-wide host (a monitor command marks the domain custom-monitor in libvirt).
  const hostRss = isHostWide(DEFAULT_PATHS.manifest) ? hostPolicyMacs(req.uri, req.name) : new Set<string>();
  let options = plan.options;
  let xmlSource = plan.kind === 'plain' ? plan.xml : undefined;
  if (hostRss.size && !xmlSource) {
    const t = takeOption(options, '--xml');
    options = t.rest;
    xmlSource = t.value !== undefined ? { file: t.value } : { libvirt: 'live' };
  }
  const dir = mkdtempSync(join(tmpdir(), 'virt-ebpf-migrate-'));
  try {
    const extra: string[] = [];
    const text = (src: XmlSource): string => ('file' in src ? readFileSync(src.file, 'utf8') : src.libvirt === 'live' ? live : (inactive ?? live));
    if (xmlSource) {
      let xml = text(xmlSource);
      if (hostRss.size) {
        xml = withRssOn(xml, hostRss).xml;
        err(`virt-ebpf: the NICs ${[...hostRss].join(', ')} of ${req.name} run with rss from this host's host-wide policy: the migration XML says rss='on' for them, so the destination's QEMU has the same devices`);
      }
      if (plan.kind === 'plain') xml = withoutWrapper(xml).xml;
      writeFileSync(join(dir, 'live.xml'), xml, { mode: 0o600 });
      extra.push('--xml', join(dir, 'live.xml'));
    }
    if (plan.kind === 'plain' && plan.persistentXml) {
      writeFileSync(join(dir, 'persistent.xml'), withoutWrapper(text(plan.persistentXml)).xml, { mode: 0o600 });
      extra.push('--persistent-xml', join(dir, 'persistent.xml'));
    }
    const r = spawnSync('virsh', ['-c', req.uri, 'migrate', req.name, req.destUri, ...options, ...extra], { stdio: 'inherit' });
    if (r.error) throw new VirtEbpfError('LIBVIRT_MISSING', `cannot run virsh: ${r.error.message}`, { remedy: 'install libvirt-clients (virsh)', cause: r.error });
    if (r.status === 0 && plan.kind === 'plain') err(plan.warning);
    return r.status ?? 1;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
