/**
 * The managers' recorded inputs (test/fixtures/managers/README.md says where each comes from),
 * the few inputs derived from them (each derivation is the one edit its manager makes, named
 * here), and a way to run the shipped executables as their manager does.
 */
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO } from '../harness';

export const FIXTURES = join(REPO, 'test', 'fixtures', 'managers');
export const read = (name: string): string => readFileSync(join(FIXTURES, name), 'utf8');

/** The domain KubeVirt's converter tests expect for their test VMI (one NIC: ethernet, virtio-non-transitional, alias ua-default). */
export const KUBEVIRT_DOMAIN = read('kubevirt/domain_x86_64.xml');
/** KubeVirt's example VMI that declares a hook sidecar (examples/vmi-with-sidecar-hook.yaml as JSON). */
export const KUBEVIRT_VMI = read('kubevirt/vmi-with-sidecar-hook.json');
/** A domain as oVirt runs it (bridge NIC, virtio, no multi-queue), with VDSM's metadata. */
export const VDSM_DOMAIN = read('vdsm/hostedengine.xml');
/** A NIC as VDSM writes it for a vNIC profile with the custom property queues=7. */
export const VDSM_NIC = read('vdsm/interface-queues.xml');

/** The VMI with our annotations (and, when asked, KubeVirt's multi-queue switch), as JSON. */
export function vmiWith(annotations: Record<string, unknown>, multiqueue = false): string {
  const vmi = JSON.parse(KUBEVIRT_VMI);
  Object.assign(vmi.metadata.annotations, annotations);
  if (multiqueue) vmi.spec.domain.devices.networkInterfaceMultiqueue = true;
  return JSON.stringify(vmi);
}

/**
 * KUBEVIRT_DOMAIN for a VMI with networkInterfaceMultiqueue and `queues` vCPUs: KubeVirt's
 * converter (network/configurator.go newVirtioDriver) gives the NIC `<driver name="vhost"
 * queues="N">`, marshalled by encoding/xml after `<alias>` (api.Interface's field order).
 */
export function kubevirtMultiqueue(queues: number): string {
  const out = KUBEVIRT_DOMAIN.replace('<alias name="ua-default"></alias>\n', `$&      <driver name="vhost" queues="${queues}"></driver>\n`);
  if (out === KUBEVIRT_DOMAIN) throw new Error('fixture changed: no ua-default alias');
  return out;
}

/** virt-launcher hands hooks `xml.MarshalIndent(spec, "", "\t")`: the same document indented with tabs. */
export function withTabs(xml: string): string {
  return xml.replace(/^((?: {2})+)/gm, (lead: string) => '\t'.repeat(lead.length / 2));
}

/** VDSM_DOMAIN with oVirt's multi-queue on its NIC (libvirt prints `<driver>` after `<model>`). */
export function vdsmMultiqueue(queues: number): string {
  const out = VDSM_DOMAIN.replace("<model type='virtio'/>\n", `$&      <driver name='vhost' queues='${queues}'/>\n`);
  if (out === VDSM_DOMAIN) throw new Error('fixture changed: no virtio model');
  return out;
}

/**
 * A directory holding a `virt-ebpf` that runs this checkout's CLI, for PATH: the shipped
 * executables exec `virt-ebpf` by name, as on an installed host.
 */
export function cliOnPath(dir: string): string {
  const launcher = join(dir, 'virt-ebpf');
  writeFileSync(launcher, `#!/bin/sh\nexec ${process.execPath} ${join(REPO, 'dist', 'src', 'cli', 'main.js')} "$@"\n`);
  chmodSync(launcher, 0o755);
  return `${dir}:${process.env.PATH ?? '/usr/bin:/bin'}`;
}

/** Runs a shipped executable without a shell, as Go's exec.Command and VDSM's commands.start do. */
export function runExecutable(file: string, args: string[], env: Record<string, string>): SpawnSyncReturns<string> {
  return spawnSync(file, args, { encoding: 'utf8', env, maxBuffer: 16 << 20 });
}
