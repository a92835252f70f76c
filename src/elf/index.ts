/**
 * ELF64 little-endian, read-only and pure over a Buffer: the file header, the section table with
 * names, string tables and both kinds of symbol table. Nothing machine-specific: callers judge
 * type and machine (bpf/ wants EM_BPF relocatables, helper/ any executable). The input is
 * untrusted — an object an emulator handed us, whatever file sits at a reported path — so every
 * offset, size and count is checked before use, sizes and counts have limits, and the work is
 * bounded by them; anything malformed is one ElfFormatError saying what is wrong.
 */
export { ElfFormatError, type ElfFields } from './error';
export { readElfHeader, DEFAULT_OPTIONS, type ElfHeader, type ElfReadOptions, type ResolvedElfOptions } from './header';
export { readElf, readElfSections, sectionData, findSection, type ElfFile, type ElfSection } from './sections';
export { openSymbolTable, readSymbols, isSymbolTable, symbolSection, type ElfSymbol, type SymbolTable, type SymbolTableKind } from './symbols';
export { cString } from './bytes';
export * from './constants';
