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
import { domainFacts, withoutWrapper } from '../xml';
import { planMigration, type XmlSource } from './plan';

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
  const dir = mkdtempSync(join(tmpdir(), 'virt-ebpf-migrate-'));
  try {
    const extra: string[] = [];
    if (plan.kind === 'plain') {
      const text = (src: XmlSource): string => ('file' in src ? readFileSync(src.file, 'utf8') : src.libvirt === 'live' ? live : (inactive ?? live));
      writeFileSync(join(dir, 'live.xml'), withoutWrapper(text(plan.xml)).xml, { mode: 0o600 });
      extra.push('--xml', join(dir, 'live.xml'));
      if (plan.persistentXml) {
        writeFileSync(join(dir, 'persistent.xml'), withoutWrapper(text(plan.persistentXml)).xml, { mode: 0o600 });
        extra.push('--persistent-xml', join(dir, 'persistent.xml'));
      }
    }
    const r = spawnSync('virsh', ['-c', req.uri, 'migrate', req.name, req.destUri, ...plan.options, ...extra], { stdio: 'inherit' });
    if (r.error) throw new VirtEbpfError('LIBVIRT_MISSING', `cannot run virsh: ${r.error.message}`, { remedy: 'install libvirt-clients (virsh)', cause: r.error });
    if (r.status === 0 && plan.kind === 'plain') err(plan.warning);
    return r.status ?? 1;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
