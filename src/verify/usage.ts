/** The verify command's summary and line, shared by the CLI's command table and verify/index.ts (no imports: the CLI loads this at start). */
export const VERIFY_SUMMARY = "check a domain's live steering program against a reference RSS on crafted flows (root)";
export const VERIFY_USAGE = 'virt-ebpf verify DOMAIN [--nic ID|MAC|TAP|prog:ID] [--flows N] [--seed S] [--json]';
