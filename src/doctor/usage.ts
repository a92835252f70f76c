/** The doctor command's summary and line, for the CLI's command table (no imports: the CLI loads this at start). */
export const DOCTOR_SUMMARY = 'check everything eBPF RSS under libvirt needs, with the fix for each failure';
export const DOCTOR_USAGE = 'virt-ebpf doctor [--json] [--cache-dir DIR]';
