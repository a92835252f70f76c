/** ELF numbers from the gABI and the psABIs, only those a caller here needs to name. */

export const ET_REL = 1;
export const ET_EXEC = 2;
export const ET_DYN = 3;

export const EM_X86_64 = 62;
export const EM_AARCH64 = 183;
export const EM_BPF = 247;

export const SHT_NULL = 0;
export const SHT_PROGBITS = 1;
export const SHT_SYMTAB = 2;
export const SHT_STRTAB = 3;
export const SHT_NOBITS = 8;
export const SHT_DYNSYM = 11;

export const SHF_ALLOC = 0x2;
export const SHF_EXECINSTR = 0x4;

export const SHN_UNDEF = 0;
export const SHN_LORESERVE = 0xff00;
export const SHN_XINDEX = 0xffff;

export const STB_LOCAL = 0;
export const STB_GLOBAL = 1;
export const STB_WEAK = 2;

export const STT_NOTYPE = 0;
export const STT_OBJECT = 1;
export const STT_FUNC = 2;
export const STT_SECTION = 3;
export const STT_FILE = 4;

/** Fixed record sizes of ELF64; a file that claims others is refused rather than guessed at. */
export const EHDR_SIZE = 64;
export const SHDR_SIZE = 64;
export const SYM_SIZE = 24;
