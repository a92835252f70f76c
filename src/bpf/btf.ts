/**
 * Just enough BTF (the `.BTF` section) to read libbpf-style map definitions: the type table with
 * names, arrays, struct members, VARs and DATASECs, plus size resolution. Pure. Every type id is
 * checked before it is followed and every chain of references is cut at a fixed depth, so a
 * cyclic or hostile table cannot make resolution loop.
 */
import { badElf, cString } from './elf';

export const BTF_MAGIC = 0xeb9f;
/** libbpf's own limit for following modifier/typedef/array chains. */
export const MAX_RESOLVE_DEPTH = 32;
/** The real object has 45 types; the header's own length bounds this too, this just says so early. */
export const MAX_BTF_TYPES = 1 << 16;

export const enum BtfKind {
  Unknown = 0,
  Int = 1,
  Ptr = 2,
  Array = 3,
  Struct = 4,
  Union = 5,
  Enum = 6,
  Fwd = 7,
  Typedef = 8,
  Volatile = 9,
  Const = 10,
  Restrict = 11,
  Func = 12,
  FuncProto = 13,
  Var = 14,
  Datasec = 15,
  Float = 16,
  DeclTag = 17,
  TypeTag = 18,
  Enum64 = 19,
}

export interface BtfMember {
  name: string;
  type: number;
  /** bit offset (or, with kind_flag, bitfield size << 24 | offset) */
  offset: number;
}

export interface BtfVarSecinfo {
  type: number;
  offset: number;
  size: number;
}

export interface BtfType {
  id: number;
  /** byte offset of this type's record inside the .BTF section */
  offset: number;
  kind: BtfKind;
  name: string;
  vlen: number;
  /** `size` for sized kinds, the referenced type id for the others */
  sizeOrType: number;
  array?: { type: number; indexType: number; nelems: number };
  members?: BtfMember[];
  vars?: BtfVarSecinfo[];
}

export interface Btf {
  /** index = type id; id 0 is void */
  types: BtfType[];
  type(id: number, what: string): BtfType;
  /** Follow typedefs and const/volatile/restrict/type-tag to the underlying type. */
  skipModsAndTypedefs(id: number, what: string): BtfType;
  /** Byte size of a type, as libbpf's btf__resolve_size computes it. */
  resolveSize(id: number, what: string): number;
  datasec(name: string): BtfType | undefined;
}

const HDR_MIN = 24;
const VOID: BtfType = { id: 0, offset: 0, kind: BtfKind.Unknown, name: 'void', vlen: 0, sizeOrType: 0 };
const POINTER_SIZE = 8;

function bad(what: string): Error {
  return badElf(`BTF: ${what}`);
}

export function parseBtf(data: Buffer): Btf {
  if (data.length < HDR_MIN) throw bad(`section is ${data.length} bytes, shorter than the header`);
  const magic = data.readUInt16LE(0);
  if (magic !== BTF_MAGIC) throw bad(`bad magic 0x${magic.toString(16)}${magic === 0x9feb ? ' (big-endian)' : ''}, expected 0x${BTF_MAGIC.toString(16)}`);
  if (data[2] !== 1) throw bad(`version ${data[2]}, expected 1`);
  const hdrLen = data.readUInt32LE(4);
  if (hdrLen < HDR_MIN || hdrLen > data.length) throw bad(`header length ${hdrLen} is invalid for a ${data.length}-byte section`);
  const typeOff = data.readUInt32LE(8);
  const typeLen = data.readUInt32LE(12);
  const strOff = data.readUInt32LE(16);
  const strLen = data.readUInt32LE(20);
  const body = data.subarray(hdrLen);
  if (typeOff > body.length || typeLen > body.length - typeOff) throw bad('type table lies outside the section');
  if (strOff > body.length || strLen > body.length - strOff) throw bad('string table lies outside the section');
  if (typeLen % 4 !== 0) throw bad(`type table length ${typeLen} is not a multiple of 4`);
  const strStart = hdrLen + strOff;
  const strEnd = strStart + strLen;
  const name = (off: number, what: string): string => {
    if (off === 0) return '';
    if (off >= strLen) throw bad(`${what} name offset ${off} is outside the string table`);
    return cString(data, strStart + off, strEnd, `BTF ${what} name`);
  };

  const types: BtfType[] = [VOID];
  const end = hdrLen + typeOff + typeLen;
  let at = hdrLen + typeOff;
  const need = (n: number, id: number): void => {
    if (at + n > end) throw bad(`type ${id} is truncated`);
  };
  while (at < end) {
    const id = types.length;
    if (id > MAX_BTF_TYPES) throw bad(`more than ${MAX_BTF_TYPES} types`);
    need(12, id);
    const offset = at;
    const nameOff = data.readUInt32LE(at);
    const info = data.readUInt32LE(at + 4);
    const sizeOrType = data.readUInt32LE(at + 8);
    at += 12;
    const kind = ((info >>> 24) & 0x1f) as BtfKind;
    const vlen = info & 0xffff;
    const t: BtfType = { id, offset, kind, name: name(nameOff, `type ${id}`), vlen, sizeOrType };
    switch (kind) {
      case BtfKind.Int:
      case BtfKind.Var:
      case BtfKind.DeclTag:
        need(4, id);
        at += 4;
        break;
      case BtfKind.Array:
        need(12, id);
        t.array = { type: data.readUInt32LE(at), indexType: data.readUInt32LE(at + 4), nelems: data.readUInt32LE(at + 8) };
        at += 12;
        break;
      case BtfKind.Struct:
      case BtfKind.Union:
        need(12 * vlen, id);
        t.members = [];
        for (let i = 0; i < vlen; i++, at += 12) {
          t.members.push({ name: name(data.readUInt32LE(at), `type ${id} member ${i}`), type: data.readUInt32LE(at + 4), offset: data.readUInt32LE(at + 8) });
        }
        break;
      case BtfKind.Datasec:
        need(12 * vlen, id);
        t.vars = [];
        for (let i = 0; i < vlen; i++, at += 12) {
          t.vars.push({ type: data.readUInt32LE(at), offset: data.readUInt32LE(at + 4), size: data.readUInt32LE(at + 8) });
        }
        break;
      case BtfKind.Enum:
      case BtfKind.FuncProto:
        need(8 * vlen, id);
        at += 8 * vlen;
        break;
      case BtfKind.Enum64:
        need(12 * vlen, id);
        at += 12 * vlen;
        break;
      case BtfKind.Ptr:
      case BtfKind.Fwd:
      case BtfKind.Typedef:
      case BtfKind.Volatile:
      case BtfKind.Const:
      case BtfKind.Restrict:
      case BtfKind.Func:
      case BtfKind.Float:
      case BtfKind.TypeTag:
        break;
      default:
        throw bad(`type ${id} has unknown kind ${kind}`);
    }
    types.push(t);
  }

  const type = (id: number, what: string): BtfType => {
    const t = types[id];
    if (!Number.isInteger(id) || t === undefined) throw bad(`${what} refers to type ${id}, which does not exist (${types.length - 1} types)`);
    return t;
  };

  const skipModsAndTypedefs = (id: number, what: string): BtfType => {
    let t = type(id, what);
    for (let depth = 0; ; depth++) {
      if (depth > MAX_RESOLVE_DEPTH) throw bad(`${what}: type chain deeper than ${MAX_RESOLVE_DEPTH} (cycle?)`);
      switch (t.kind) {
        case BtfKind.Typedef:
        case BtfKind.Volatile:
        case BtfKind.Const:
        case BtfKind.Restrict:
        case BtfKind.TypeTag:
          t = type(t.sizeOrType, what);
          continue;
        default:
          return t;
      }
    }
  };

  const resolveSize = (id: number, what: string): number => {
    let nelems = 1;
    let t = type(id, what);
    for (let depth = 0; ; depth++) {
      if (depth > MAX_RESOLVE_DEPTH) throw bad(`${what}: type chain deeper than ${MAX_RESOLVE_DEPTH} (cycle?)`);
      let size: number | undefined;
      switch (t.kind) {
        case BtfKind.Int:
        case BtfKind.Struct:
        case BtfKind.Union:
        case BtfKind.Enum:
        case BtfKind.Enum64:
        case BtfKind.Datasec:
        case BtfKind.Float:
          size = t.sizeOrType;
          break;
        case BtfKind.Ptr:
          size = POINTER_SIZE;
          break;
        case BtfKind.Typedef:
        case BtfKind.Volatile:
        case BtfKind.Const:
        case BtfKind.Restrict:
        case BtfKind.Var:
        case BtfKind.DeclTag:
        case BtfKind.TypeTag:
          t = type(t.sizeOrType, what);
          continue;
        case BtfKind.Array:
          nelems *= t.array!.nelems;
          if (nelems > 0xffffffff) throw bad(`${what}: array size overflows 32 bits`);
          t = type(t.array!.type, what);
          continue;
        default:
          throw bad(`${what}: type ${t.id} (kind ${t.kind}) has no size`);
      }
      const total = nelems * size;
      if (total > 0xffffffff) throw bad(`${what}: size overflows 32 bits`);
      return total;
    }
  };

  const datasec = (n: string): BtfType | undefined => types.find((t) => t.kind === BtfKind.Datasec && t.name === n);

  return { types, type, skipModsAndTypedefs, resolveSize, datasec };
}
