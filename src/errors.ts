/**
 * One error type for the whole project. Every failure a user can see carries a stable
 * `code`, a one-line `message` (operation + reason) and a `remedy` (what to do).
 * Long evidence (verifier logs, QEMU stderr) goes in `detail`, never in the message.
 */
export type ErrorCode =
  // emulator / probe
  | 'EMULATOR_NOT_FOUND'
  | 'EMULATOR_NOT_EXECUTABLE'
  | 'EMULATOR_TIMEOUT'
  | 'EMULATOR_NOT_QEMU'
  | 'EMULATOR_EXITED'
  | 'EMULATOR_UNSUPPORTED'
  | 'EMULATOR_UNTRUSTED'
  | 'EMULATOR_NOT_ALLOWED'
  // qmp
  | 'QMP_CONNECT'
  | 'QMP_PROTOCOL'
  | 'QMP_TIMEOUT'
  | 'QMP_CLOSED'
  | 'QMP_COMMAND'
  | 'QMP_LINE_TOO_LONG'
  // bpf
  | 'BPF_BAD_BASE64'
  | 'BPF_BAD_ELF'
  | 'BPF_UNEXPECTED_OBJECT'
  | 'BPF_LIBBPF_MISSING'
  | 'BPF_PERMISSION'
  | 'BPF_VERIFIER'
  | 'BPF_LOAD'
  | 'BPF_NOT_FOUND'
  // helper protocol
  | 'HELPER_NOT_FOUND'
  | 'HELPER_UNTRUSTED'
  | 'HELPER_STAMP_MISMATCH'
  | 'HELPER_FAILED'
  | 'HELPER_TIMEOUT'
  | 'HELPER_NO_FDS'
  // fd passing / system
  | 'FD_PASS'
  | 'SYSCALL'
  | 'NOT_ROOT'
  | 'NO_SUCH_USER'
  // domain XML
  | 'XML_INVALID'
  | 'XML_UNSUPPORTED_DOMAIN'
  | 'XML_UNSUPPORTED_NIC'
  | 'XML_METADATA'
  // a virtualization manager's input (KubeVirt VMI, oVirt custom properties)
  | 'MANAGER_INPUT'
  // argv / usage
  | 'ARGV_INVALID'
  | 'USAGE'
  | 'CACHE_CORRUPT'
  // guest fixture (tests)
  // broker
  | 'BROKER_PROTOCOL'
  | 'BROKER_UNREACHABLE'
  | 'BROKER_REFUSED'
  | 'BROKER_DENIED'
  | 'BROKER_LIMIT'
  | 'BROKER_INTERNAL'
  | 'BROKER_ACTIVATION'
  | 'CONFIG_INVALID'
  | 'SHIMS_MISSING'
  // install
  | 'INSTALL_PREFIX_FOREIGN'
  | 'INSTALL_UNTRUSTED'
  // status / verify
  | 'DOMAIN_NOT_FOUND'
  | 'NIC_NOT_FOUND'
  | 'NIC_NO_EBPF'
  | 'MIGRATION_REFUSED'
  // libvirt API
  | 'LIBVIRT_MISSING'
  | 'LIBVIRT_ERROR';

export interface ErrorInit {
  remedy: string;
  detail?: string;
  cause?: unknown;
  fields?: Record<string, unknown>;
}

/** `C`: the product's codes; a test fixture may name its own (test/support/guest GuestError). */
export class VirtEbpfError<C extends string = ErrorCode> extends Error {
  readonly code: C;
  readonly remedy: string;
  readonly detail?: string;
  readonly fields: Record<string, unknown>;

  constructor(code: C, message: string, init: ErrorInit) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = 'VirtEbpfError';
    this.code = code;
    this.remedy = init.remedy;
    this.detail = init.detail;
    this.fields = init.fields ?? {};
  }

  /** The single line a user sees: what failed, why, what to do. */
  oneLine(): string {
    return `virt-ebpf: ${this.message} (${this.code}); ${this.remedy}`;
  }
}

export function isVirtEbpfError(e: unknown, code?: ErrorCode | string): e is VirtEbpfError {
  return e instanceof VirtEbpfError && (code === undefined || e.code === code);
}

/** Shorten a long text (stderr, verifier log) to its last lines for a summary. */
export function tail(text: string, lines = 6): string {
  const all = text.trimEnd().split('\n');
  return (all.length > lines ? ['…', ...all.slice(-lines)] : all).join('\n');
}
