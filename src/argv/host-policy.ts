/**
 * The host-wide policy on QEMU's devices (install --host-wide): a virtio-net device that is
 * multiqueue (`mq` on: libvirt sets it for `<driver queues='N'>` with N ≥ 2) and says nothing
 * about `rss` gets `rss` on. A device that says `rss` either way is left as it is: `rss='off'`
 * in the domain XML is how a NIC opts out. Pure.
 */
import { parseQemuBool, keyValGet } from './keyval';
import { deviceArgs, isVirtioNetDriver, type DeviceArg } from './qemu-argv';

export type HostRss = 'off' | 'multiqueue';

/** Whether the host policy turns rss on for this device. */
export function hostTurnsRssOn(d: DeviceArg, policy: HostRss): boolean {
  if (policy === 'off' || !isVirtioNetDriver(d.driver)) return false;
  const get = (k: string): unknown => (d.form === 'json' ? d.json![k] : keyValGet(d.keyval!, k));
  return get('rss') === undefined && parseQemuBool(get('mq')) === true;
}

/**
 * The command line with the policy applied: `"rss":true` added to the JSON -device arguments it
 * names (libvirt writes JSON devices). Returns the ids of the devices it changed.
 */
export function applyHostRss(argv: readonly string[], policy: HostRss): { argv: string[]; added: string[] } {
  const out = [...argv];
  const added: string[] = [];
  for (const d of deviceArgs(argv)) {
    if (d.form !== 'json' || !hostTurnsRssOn(d, policy)) continue;
    out[d.index] = JSON.stringify({ ...d.json, rss: true });
    added.push(d.id ?? `device #${d.index}`);
  }
  return { argv: out, added };
}
