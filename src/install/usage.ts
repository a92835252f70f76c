/** What install, uninstall and refresh say about themselves (summary, line), for the CLI's command table (no imports: the CLI loads this at start). */
export const INSTALL_SUMMARY = 'install the hook, emulator wrappers, broker units, default config and the virt-ebpf command (root)';
export const INSTALL_USAGE = 'virt-ebpf install [--prefix DIR] [--host-wide | --no-host-wide] [--no-hook | --hook] [--no-rescan]';
export const UNINSTALL_SUMMARY = 'remove exactly what install added (refuses while domains are enabled, unless --force)';
export const UNINSTALL_USAGE = 'virt-ebpf uninstall [--force] [--no-rescan]';
export const REFRESH_SUMMARY = 'rewrite wrappers whose real QEMU changed, so libvirt re-reads its capabilities';
export const REFRESH_USAGE = 'virt-ebpf refresh [--quiet]';
