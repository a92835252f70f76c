/** What `virt-ebpf xml` says about itself (summary, line, --help), for the CLI's command table and xml/cli.ts (no imports: the CLI loads this at start). */
export const XML_SUMMARY = 'transform domain XML: enable|disable eBPF RSS, or show our settings (stdin/stdout or FILE)';
export const XML_USAGE = 'virt-ebpf xml enable|disable|show [--all-virtio] [--queues N] [--policy strict|fallback] [--hotplug on|off] [--wrapper-dir DIR] [--default-emulator PATH] [FILE|-]';

/** `virt-ebpf xml --help`, naming the default wrapper directory (xml/cli.ts owns it). */
export function xmlHelp(defaultWrapperDir: string): string {
  return `usage: virt-ebpf xml enable [--all-virtio] [--queues N] [--policy strict|fallback] [--hotplug on|off]
                          [--wrapper-dir DIR] [--default-emulator PATH] [FILE]
       virt-ebpf xml disable [FILE]
       virt-ebpf xml show [FILE]
Reads domain XML from FILE (or stdin when FILE is absent or -), writes the result to stdout
and what changed to stderr. show prints our metadata and the RSS NICs as JSON.
  --all-virtio          turn rss on for every virtio NIC on a tap backend that has no rss setting
  --queues N            queues (>= 2) for the NICs --all-virtio turns on; without it, NICs
                        with fewer than 2 queues are skipped with a warning
  --policy P            what the wrapper does when eBPF fds are unavailable (default strict)
  --hotplug on|off      give NICs hot-plugged with rss on their eBPF fds (the hot-plug
                        shim in QEMU; default on)
  --wrapper-dir DIR     where the wrappers are (default ${defaultWrapperDir}); the wrapper
                        of /x/y/qemu-system-x86_64 is DIR/qemu-system-x86_64
  --default-emulator P  the emulator libvirt picks for a domain without <emulator>
`;
}
