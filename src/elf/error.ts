/**
 * The one error the ELF reader throws. It is not a VirtEbpfError on purpose: whether a malformed
 * file is a broken QEMU package (BPF_BAD_ELF) or just "no stamp here" (the helper check) is the
 * caller's call, so callers translate it and keep it as the `cause`.
 */
export type ElfFields = Readonly<Record<string, number | string>>;

export class ElfFormatError extends Error {
  override readonly name = 'ElfFormatError';
  /** What is wrong, without the evidence: "not an ELF file". Equals `message` when there is no evidence. */
  readonly problem: string;
  /** Offsets, sizes and counts the message was built from, for logs and tests. */
  readonly fields: ElfFields;

  /** `evidence` (what was seen) leads the message: `bad magic 23212f62, …: not an ELF file`. */
  constructor(problem: string, init: { evidence?: string; fields?: ElfFields } = {}) {
    super(init.evidence ? `${init.evidence}: ${problem}` : problem);
    this.problem = problem;
    this.fields = init.fields ?? {};
  }
}
