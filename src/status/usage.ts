/** The status command's summary and line, shared by the CLI's command table and status/index.ts (no imports: the CLI loads this at start). */
export const STATUS_SUMMARY = 'show which running NICs steer with eBPF RSS and what the guest set (root)';
export const STATUS_USAGE = 'virt-ebpf status [DOMAIN] [--json | --prometheus] [--sample MS]';
