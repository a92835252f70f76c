/** The probe command's summary and line, for the CLI's command table (no imports: the CLI loads this at start). */
export const PROBE_SUMMARY = 'show which emulators can take eBPF RSS fds, and how';
export const PROBE_USAGE = 'virt-ebpf probe [EMULATOR…] [--json] [--no-cache] [--cache-dir DIR]';
