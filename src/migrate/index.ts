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
import { planMigration } from './plan';

export { planMigration, takeOption, type MigrationFacts, type MigrationPlan } from './plan';

export { MIGRATE_USAGE, MIGRATE_SUMMARY } from './usage';

function virsh(uri: string, args: readonly string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync('virsh', ['-q', '-c', uri, ...args], { encoding: 'utf8', timeout: 120_000, maxBuffer: 64 << 20 });
  if (r.error) {
    throw new VirtEbpfError('LIBVIRT_MISSING', `cannot run virsh: ${r.error.message}`, { remedy: 'install libvirt-clients (virsh)', cause: r.error });
  }
  return { code: r.status ?? 1, stdout: r.stdout, stderr: r.stderr.trim().replace(/^error: /gm, '').replace(/\n+/g, ': ') };
}

/** Whether libvirt at `uri` can run `emulator` (it answers domcapabilities for it). */
export function canRunEmulator(uri: string, emulator: string, virtType: string): boolean {
  const r = virsh(uri, ['domcapabilities', '--emulatorbin', emulator, '--virttype', virtType]);
  if (r.code === 0) return true;
  if (r.stderr.includes(emulator) && /No such file|not found|Cannot find/i.test(r.stderr)) return false;
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
  const live = virsh(req.uri, ['dumpxml', '--migratable', req.name]);
  if (live.code !== 0) {
    throw new VirtEbpfError('DOMAIN_NOT_FOUND', `cannot read ${req.name}'s XML from ${req.uri}: ${live.stderr}`, { remedy: 'name a running domain (`virsh list`)' });
  }
  const facts = domainFacts(live.stdout);
  const enabled = facts.enabled && facts.config ? { policy: facts.config.policy, wrapper: facts.config.emulator.wrapper } : null;
  const virtType = /<domain\b[^>]*\btype=['"]([a-z]+)['"]/.exec(live.stdout)?.[1] ?? 'kvm';
  const plan = planMigration({
    name: req.name,
    destUri: req.destUri,
    enabled,
    destHasWrapper: enabled ? canRunEmulator(req.destUri, enabled.wrapper, virtType) : undefined,
    options: req.options,
  });
  const dir = mkdtempSync(join(tmpdir(), 'virt-ebpf-migrate-'));
  try {
    const extra: string[] = [];
    if (plan.kind === 'plain') {
      err(plan.warning);
      const xml = plan.xmlFrom === 'live' ? live.stdout : readFileSync(plan.xmlFrom, 'utf8');
      writeFileSync(join(dir, 'live.xml'), withoutWrapper(xml).xml, { mode: 0o600 });
      extra.push('--xml', join(dir, 'live.xml'));
      if (plan.persistentXmlFrom) {
        let inactive = plan.persistentXmlFrom === 'inactive' ? virsh(req.uri, ['dumpxml', '--inactive', '--migratable', req.name]).stdout : readFileSync(plan.persistentXmlFrom, 'utf8');
        if (!inactive.trim()) inactive = xml; // a transient domain: its live XML is all there is
        writeFileSync(join(dir, 'persistent.xml'), withoutWrapper(inactive).xml, { mode: 0o600 });
        extra.push('--persistent-xml', join(dir, 'persistent.xml'));
      }
    }
    const r = spawnSync('virsh', ['-c', req.uri, 'migrate', req.name, req.destUri, ...plan.options, ...extra], { stdio: 'inherit' });
    if (r.error) throw new VirtEbpfError('LIBVIRT_MISSING', `cannot run virsh: ${r.error.message}`, { remedy: 'install libvirt-clients (virsh)', cause: r.error });
    return r.status ?? 1;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
