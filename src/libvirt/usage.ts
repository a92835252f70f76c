/**
 * What `virt-ebpf enable|disable|define` say about themselves (summary, usage, options), in one
 * place for the CLI's help, the man page and the commands' own --help. Plain text only: the CLI
 * lists commands without loading libvirt.
 */
export type DomainCommand = 'enable' | 'disable' | 'define';

const ENABLE_OPTS = '[--all-virtio] [--queues N] [--policy strict|fallback] [--hotplug on|off] [--wrapper-dir DIR]';
export const DOMAIN_COMMAND_USAGE: Record<DomainCommand, string> = {
  enable: `virt-ebpf enable DOMAIN ${ENABLE_OPTS} [--connect URI] [--json]`,
  disable: 'virt-ebpf disable DOMAIN [--connect URI] [--json]',
  define: `virt-ebpf define FILE ${ENABLE_OPTS} [--default-emulator PATH] [--connect URI] [--json]`,
};
export const DOMAIN_COMMAND_SUMMARY: Record<DomainCommand, string> = {
  enable: "give a defined domain eBPF RSS: its persistent definition points at the wrapper (applies at the next start)",
  disable: 'undo enable on a defined domain, restoring exactly what enable changed',
  define: 'define a domain from FILE with eBPF RSS enabled, in one step (like virsh define)',
};

export const DOMAIN_COMMAND_HELP = `
Options:
  --all-virtio          turn rss on for every virtio NIC on a tap backend that has no rss setting
  --queues N            queues (>= 2) for the NICs --all-virtio turns on
  --policy P            what the wrapper does when eBPF fds are unavailable (strict|fallback; default strict)
  --hotplug on|off      give NICs hot-plugged with rss on their eBPF fds (hot-plug shim in QEMU; default on)
  --wrapper-dir DIR     where the wrappers are (default /usr/libexec/virt-ebpf)
  --default-emulator P  define: the emulator to wrap for a FILE without <emulator> (default: libvirt's choice)
  --connect URI         libvirt URI (default: $LIBVIRT_DEFAULT_URI, else qemu:///system)
  --json                print the outcome as JSON
`;

