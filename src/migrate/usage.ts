/** The migrate command's line and summary, shared by the CLI's command table and src/migrate (no imports: the CLI loads this at start). */
export const MIGRATE_USAGE = 'virt-ebpf migrate [--connect URI] DOMAIN DESTURI [-- VIRSH-MIGRATE-OPTION…]';
export const MIGRATE_SUMMARY = 'virsh migrate an enabled domain after checking the destination can run virt-ebpf (strict refuses, fallback runs it there plain)';
