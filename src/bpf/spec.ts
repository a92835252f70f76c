/**
 * `parseBpfObject(bytes) → BpfSpec`: what an eBPF object declares, read without libbpf, without
 * the kernel and without privilege (a spec, not a loaded object). It describes what libbpf would
 * create from the object — programs, BTF-defined maps, legacy `maps`, and the implicit maps
 * that global data sections turn into — so that a validator can refuse anything unexpected
 * before a single byte reaches the kernel.
 */
import { BtfKind, parseBtf, type Btf } from './btf';
import { badElf, parseElf, SHF_ALLOC, SHF_EXECINSTR, SHT_NOBITS, SHT_PROGBITS, STT_FUNC, symbolSection, type ElfObject } from './elf';

export interface BpfProgramSpec {
  name: string;
  section: string;
  /** number of 8-byte instructions (a 16-byte ld_imm64 counts as two) */
  insns: number;
}

/** Where a map comes from: a BTF `.maps` definition, a legacy `maps` struct, or a global data section. */
export type BpfMapSource = 'btf' | 'legacy' | 'data';

/** What makes two maps the same shape: shared by the parsed spec, libbpf's view and the RSS expectation. */
export interface MapShape {
  name: string;
  /** BPF_MAP_TYPE_* */
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  /** BPF_F_* map flags as declared */
  flags: number;
}

export interface BpfMapSpec extends MapShape {
  source: BpfMapSource;
  /** LIBBPF_PIN_* (0 none, 1 by name): a pinned map is shared through bpffs */
  pinning: number;
  numaNode: number;
  mapExtra: number;
}

export interface BpfSpec {
  programs: BpfProgramSpec[];
  maps: BpfMapSpec[];
  /** bytes in the object */
  size: number;
  license?: string;
}

const INSN_SIZE = 8;
const MAX_LICENSE = 256;
const LEGACY_MAP_DEF = 20; // five u32: type, key_size, value_size, max_entries, map_flags

/** Sections libbpf turns into implicit single-entry array maps. */
function isDataSection(name: string): boolean {
  return /^\.(data|rodata|bss)(\..*)?$/.test(name) || name === '.kconfig' || /^\.struct_ops(\.link)?$/.test(name);
}

export function parseBpfObject(bytes: Buffer): BpfSpec {
  const elf = parseElf(bytes);
  const btfSec = elf.section('.BTF');
  const btf = btfSec ? parseBtf(elf.data(btfSec)) : undefined;

  const spec: BpfSpec = { programs: programs(elf), maps: [...btfMaps(elf, btf), ...legacyMaps(elf), ...dataMaps(elf)], size: bytes.length };
  const lic = elf.section('license');
  if (lic && lic.type !== SHT_NOBITS) {
    const raw = elf.data(lic).subarray(0, MAX_LICENSE);
    const nul = raw.indexOf(0);
    spec.license = raw.toString('latin1', 0, nul < 0 ? raw.length : nul);
  }
  return spec;
}

function programs(elf: ElfObject): BpfProgramSpec[] {
  const found: { sec: number; value: number; spec: BpfProgramSpec }[] = [];
  for (const sym of elf.symbols) {
    if (sym.type !== STT_FUNC) continue;
    const sec = symbolSection(elf, sym);
    if (!sec || sec.type !== SHT_PROGBITS || (sec.flags & SHF_EXECINSTR) === 0) continue;
    const where = `program ${sym.name || `#${sym.index}`} in section ${sec.name}`;
    if (sym.value % INSN_SIZE !== 0 || sym.size % INSN_SIZE !== 0) throw badElf(`${where} is not aligned to whole instructions (offset ${sym.value}, ${sym.size} bytes)`);
    if (sym.value > sec.size || sym.size > sec.size - sym.value) throw badElf(`${where} (offset ${sym.value}, ${sym.size} bytes) lies outside its ${sec.size}-byte section`);
    if (sym.size === 0) throw badElf(`${where} is empty`);
    found.push({ sec: sec.index, value: sym.value, spec: { name: sym.name, section: sec.name, insns: sym.size / INSN_SIZE } });
  }
  // Declaration order: section by section, then by position inside it (what libbpf iterates).
  return found.sort((a, b) => a.sec - b.sec || a.value - b.value).map((f) => f.spec);
}

function btfMaps(elf: ElfObject, btf: Btf | undefined): BpfMapSpec[] {
  if (!elf.section('.maps')) return [];
  if (!btf) throw badElf('section .maps needs BTF to describe its maps, but there is no .BTF section');
  const sec = btf.datasec('.maps');
  if (!sec) throw badElf('section .maps has no BTF description (no DATASEC ".maps")');
  return sec.vars!.map((v, i) => {
    const variable = btf.type(v.type, `.maps entry ${i}`);
    if (variable.kind !== BtfKind.Var) throw badElf(`BTF: .maps entry ${i} is type ${v.type} of kind ${variable.kind}, expected a VAR`);
    return btfMap(btf, variable.name || `#${i}`, variable.sizeOrType);
  });
}

/** Decode one libbpf map definition: a struct whose members are `__uint(name, N)` (pointer to int[N]) or `__type(key, T)` (pointer to T). */
function btfMap(btf: Btf, name: string, typeId: number): BpfMapSpec {
  const what = `map ${name}`;
  const def = btf.skipModsAndTypedefs(typeId, what);
  if (def.kind !== BtfKind.Struct) throw badElf(`BTF: ${what} is not a struct`);
  const map: BpfMapSpec = { name, type: 0, keySize: 0, valueSize: 0, maxEntries: 0, flags: 0, source: 'btf', pinning: 0, numaNode: 0, mapExtra: 0 };
  let keyType: number | undefined;
  let valueType: number | undefined;
  let keySize: number | undefined;
  let valueSize: number | undefined;
  const seen = new Set<string>();
  for (const m of def.members!) {
    if (seen.has(m.name)) throw badElf(`BTF: ${what} sets '${m.name}' twice`);
    seen.add(m.name);
    const field = `${what} attribute '${m.name}'`;
    const int = (): number => {
      const ptr = btf.skipModsAndTypedefs(m.type, field);
      if (ptr.kind !== BtfKind.Ptr) throw badElf(`BTF: ${field} is not a pointer to an array`);
      const arr = btf.skipModsAndTypedefs(ptr.sizeOrType, field);
      if (arr.kind !== BtfKind.Array) throw badElf(`BTF: ${field} is not a pointer to an array`);
      return arr.array!.nelems;
    };
    const pointee = (): number => {
      const ptr = btf.skipModsAndTypedefs(m.type, field);
      if (ptr.kind !== BtfKind.Ptr) throw badElf(`BTF: ${field} is not a pointer to a type`);
      return ptr.sizeOrType;
    };
    switch (m.name) {
      case 'type': map.type = int(); break;
      case 'max_entries': map.maxEntries = int(); break;
      case 'map_flags': map.flags = int(); break;
      case 'numa_node': map.numaNode = int(); break;
      case 'pinning': map.pinning = int(); break;
      case 'map_extra': map.mapExtra = int(); break;
      case 'key_size': keySize = int(); break;
      case 'value_size': valueSize = int(); break;
      case 'key': keyType = pointee(); break;
      case 'value': valueType = pointee(); break;
      case 'values':
        throw badElf(`${what} has initial 'values' (map-in-map or program array), which is not supported`);
      default:
        throw badElf(`${what} has unknown attribute '${m.name}'`);
    }
  }
  const resolved = (ty: number | undefined, size: number | undefined, label: string): number => {
    const fromType = ty === undefined ? undefined : btf.resolveSize(ty, `${what} ${label}`);
    if (fromType !== undefined && size !== undefined && fromType !== size) {
      throw badElf(`${what} declares ${label}_size ${size} but its ${label} type is ${fromType} bytes`);
    }
    return fromType ?? size ?? 0;
  };
  map.keySize = resolved(keyType, keySize, 'key');
  map.valueSize = resolved(valueType, valueSize, 'value');
  return map;
}

function legacyMaps(elf: ElfObject): BpfMapSpec[] {
  const sec = elf.section('maps');
  if (!sec || sec.type === SHT_NOBITS) return [];
  const data = elf.data(sec);
  const syms = elf.symbols.filter((s) => s.shndx === sec.index && s.name !== '' && s.type !== 3 /* STT_SECTION */);
  return syms
    .sort((a, b) => a.value - b.value)
    .map((s) => {
      if (s.value > data.length || data.length - s.value < LEGACY_MAP_DEF) throw badElf(`legacy map ${s.name} (offset ${s.value}) lies outside section maps`);
      const u = (i: number): number => data.readUInt32LE(s.value + 4 * i);
      return { name: s.name, type: u(0), keySize: u(1), valueSize: u(2), maxEntries: u(3), flags: u(4), source: 'legacy', pinning: 0, numaNode: 0, mapExtra: 0 };
    });
}

function dataMaps(elf: ElfObject): BpfMapSpec[] {
  return elf.sections
    .filter((s) => (s.flags & SHF_ALLOC) !== 0 && (s.flags & SHF_EXECINSTR) === 0 && s.size > 0 && isDataSection(s.name))
    .map((s) => ({ name: s.name, type: 2 /* ARRAY */, keySize: 4, valueSize: s.size, maxEntries: 1, flags: 0, source: 'data', pinning: 0, numaNode: 0, mapExtra: 0 }));
}
