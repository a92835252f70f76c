/**
 * A libvirt guest that sets its own RSS table, for the suites that move it to another QEMU
 * (save/restore, migration) and check the table travelled: the guest started ready for
 * `ethtool -X`, the table and key it then sets, and the program and maps a QEMU's device holds.
 */
import { ensureFixture, parseEthtoolRss, startLibvirtGuest, type LibvirtGuest, type RssConfig } from '../support/guest';
import { bpfFds, cmdline, virtioNetDevices } from '../coldstart/libvirt';

/** The guest fixture under libvirt, enabled, its channels at the maximum (before any `ethtool -X`). */
export async function startTableGuest(name: string, guestCidr: string): Promise<LibvirtGuest> {
  return startLibvirtGuest({
    name,
    fixture: await ensureFixture(),
    // Channels first: an `ethtool -L` after `ethtool -X` would turn RSS off in QEMU.
    script: ['@channels vebpf_maxq eth0'],
    ip: guestCidr,
  });
}

/** The guest sets `weight 1 2 3 4` and a key of its own (40 bytes from `seed`); returns what `ethtool -x` then shows. */
export async function setOwnTable(guest: LibvirtGuest, seed: number): Promise<RssConfig> {
  const key = Array.from({ length: 40 }, (_, i) => ((i * 37 + seed) & 0xff).toString(16).padStart(2, '0')).join(':');
  await guest.console.run(`ethtool -X eth0 weight 1 2 3 4 hkey ${key}`);
  return parseEthtoolRss((await guest.console.run('ethtool -x eth0')).output);
}

/** The program and maps the QEMU's first virtio-net device names, with their kernel ids (-1: not held). */
export function heldByDevice(pid: number): { fds: number[]; ids: number[] } {
  const dev = virtioNetDevices(cmdline(pid))[0];
  const fds = (dev['ebpf-rss-fds'] as string[] | undefined)?.map(Number) ?? [];
  const held = bpfFds(pid);
  return { fds, ids: fds.map((fd) => held.find((h) => h.fd === fd)?.id ?? -1) };
}
