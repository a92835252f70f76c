/** The exec command's summary and line, for the CLI's command table (no imports: the CLI loads this at start). */
export const EXEC_SUMMARY = 'run QEMU with eBPF RSS fds for its rss=on virtio-net devices, as another user';
export const EXEC_USAGE = 'virt-ebpf exec [--user USER] [--verbose] [--cache-dir DIR] -- EMULATOR ARGS…';
