/** The broker command's summary and line, for the CLI's command table (no imports: the CLI loads this at start). */
export const BROKER_SUMMARY = 'run the privileged broker in the foreground (what virt-ebpfd runs)';
export const BROKER_USAGE = 'virt-ebpf broker [--config FILE]';
