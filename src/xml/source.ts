/**
 * A parsed XML document that still knows its source text.
 *
 * Why not DOM edits + XMLSerializer: the serializer rewrites every attribute to double quotes,
 * collapses `<a></a>` to `<a/>` and re-escapes text, so a `virsh dumpxml` document would change
 * on every line. We parse with xmldom (well-formedness, namespaces, line/column of each node)
 * and then change the source text only at the byte ranges of the nodes we touch. Everything
 * else (comments, quotes, attribute order, whitespace, declaration) stays byte-identical.
 */
import { DOMParser } from '@xmldom/xmldom';
import type { Document, Element, Node } from '@xmldom/xmldom';
import { VirtEbpfError } from '../errors';

const ELEMENT_NODE = 1;
const TEXT_NODE = 3;
const CDATA_NODE = 4;

export interface AttrSpan {
  name: string;
  /** The raw (still escaped) value as written. */
  raw: string;
  quote: '"' | "'";
  /** Start of the whitespace that separates this attribute from what precedes it. */
  wsStart: number;
  nameStart: number;
  valueStart: number;
  valueEnd: number;
  /** Just after the closing quote. */
  end: number;
}

export interface TagSpan {
  start: number;
  /** Just after the element name. */
  nameEnd: number;
  attrs: AttrSpan[];
  /** Just after the `>` (or `/>`). */
  end: number;
  selfClosing: boolean;
}

export interface ElementSpan {
  start: number;
  tag: TagSpan;
  /** Content lies in [contentStart, contentEnd); both equal tag.end for `<x/>`. */
  contentStart: number;
  contentEnd: number;
  end: number;
}

export class SourceDoc {
  readonly text: string;
  readonly doc: Document;
  readonly root: Element;
  private readonly lineStarts: number[];

  private constructor(text: string, doc: Document) {
    this.text = text;
    this.doc = doc;
    this.root = doc.documentElement as Element;
    // Same line breaks as xmldom's locator (/\r\n?|\n/), so line/column map back to offsets.
    this.lineStarts = [0];
    const re = /\r\n?|\n/g;
    for (let m = re.exec(text); m; m = re.exec(text)) this.lineStarts.push(m.index + m[0].length);
  }

  /** Parses or throws XML_INVALID naming line and column. Any xmldom report counts. */
  static parse(text: string): SourceDoc {
    if (typeof text !== 'string' || text.trim() === '') {
      throw new VirtEbpfError('XML_INVALID', 'domain XML is empty', { remedy: 'pass the output of `virsh dumpxml DOMAIN`' });
    }
    let first: { message: string; line?: number; col?: number } | undefined;
    const parser = new DOMParser({
      locator: true,
      // Identity: offsets must refer to the caller's text, not a normalised copy.
      normalizeLineEndings: (s: string) => s,
      onError: (level, message, ctx) => {
        if (level === 'warning' && /replacement character/.test(message)) return;
        const loc = (ctx as { locator?: { lineNumber?: number; columnNumber?: number } } | undefined)?.locator;
        first ??= { message: String(message).split('\n')[0], line: loc?.lineNumber, col: loc?.columnNumber };
        throw new Error(message);
      },
    });
    let doc: Document | undefined;
    try {
      doc = parser.parseFromString(text, 'application/xml');
    } catch (e) {
      const where = first?.line !== undefined ? `line ${first.line}, column ${first.col}` : 'unknown position';
      const why = first?.message ?? (e instanceof Error ? e.message.split('\n')[0] : String(e));
      throw new VirtEbpfError('XML_INVALID', `domain XML is malformed at ${where}: ${why}`, {
        remedy: 'fix the XML (or re-export it with `virsh dumpxml DOMAIN`) and retry',
        cause: e,
        fields: { line: first?.line, column: first?.col },
      });
    }
    if (!doc?.documentElement) {
      throw new VirtEbpfError('XML_INVALID', 'domain XML has no root element', { remedy: 'pass the output of `virsh dumpxml DOMAIN`' });
    }
    return new SourceDoc(text, doc);
  }

  /** Offset of the `<` that starts an element (or of the first character of another node). */
  offset(node: Node): number {
    const line = node.lineNumber;
    const col = node.columnNumber;
    if (line === undefined || col === undefined || line < 1 || line > this.lineStarts.length) {
      throw new Error(`internal: node <${node.nodeName}> has no source position`);
    }
    return this.lineStarts[line - 1] + col - 1;
  }

  tag(el: Element): TagSpan {
    const start = this.offset(el);
    const t = this.text;
    if (t[start] !== '<' || !t.startsWith(el.tagName, start + 1)) {
      throw new Error(`internal: source position of <${el.tagName}> does not point at its tag`);
    }
    let p = start + 1 + el.tagName.length;
    const nameEnd = p;
    const attrs: AttrSpan[] = [];
    for (;;) {
      const wsStart = p;
      while (isSpace(t.charCodeAt(p))) p++;
      if (t.startsWith('/>', p)) return { start, nameEnd, attrs, end: p + 2, selfClosing: true };
      if (t[p] === '>') return { start, nameEnd, attrs, end: p + 1, selfClosing: false };
      const nameStart = p;
      while (p < t.length && t[p] !== '=' && !isSpace(t.charCodeAt(p))) p++;
      const name = t.slice(nameStart, p);
      while (isSpace(t.charCodeAt(p))) p++;
      p++; // '='; the parser accepted the document, so it is there
      while (isSpace(t.charCodeAt(p))) p++;
      const quote = t[p] as '"' | "'";
      const valueStart = p + 1;
      const valueEnd = t.indexOf(quote, valueStart);
      if ((quote !== '"' && quote !== "'") || valueEnd < 0) throw new Error(`internal: cannot scan attribute ${name} of <${el.tagName}>`);
      p = valueEnd + 1;
      attrs.push({ name, raw: t.slice(valueStart, valueEnd), quote, wsStart, nameStart, valueStart, valueEnd, end: p });
    }
  }

  span(el: Element): ElementSpan {
    const tag = this.tag(el);
    if (tag.selfClosing) return { start: tag.start, tag, contentStart: tag.end, contentEnd: tag.end, end: tag.end };
    // Walk markup to the matching end tag. The document is known to be well-formed, so a
    // small scanner that skips comments, CDATA, PIs and quoted attribute values suffices.
    const t = this.text;
    let depth = 1;
    let p = tag.end;
    for (;;) {
      const lt = t.indexOf('<', p);
      if (lt < 0) throw new Error(`internal: no end tag for <${el.tagName}>`);
      if (t.startsWith('<!--', lt)) p = t.indexOf('-->', lt + 4) + 3;
      else if (t.startsWith('<![CDATA[', lt)) p = t.indexOf(']]>', lt + 9) + 3;
      else if (t.startsWith('<?', lt)) p = t.indexOf('?>', lt + 2) + 2;
      else if (t.startsWith('</', lt)) {
        const gt = t.indexOf('>', lt);
        if (--depth === 0) return { start: tag.start, tag, contentStart: tag.end, contentEnd: lt, end: gt + 1 };
        p = gt + 1;
      } else {
        p = scanTagEnd(t, lt);
        if (t[p - 2] !== '/') depth++;
      }
    }
  }

  /** The run of spaces/tabs between the line start and the element (empty if not on its own line). */
  indentOf(el: Element): string {
    const start = this.offset(el);
    let p = start;
    while (p > 0 && (this.text[p - 1] === ' ' || this.text[p - 1] === '\t')) p--;
    return p === 0 || this.text[p - 1] === '\n' || this.text[p - 1] === '\r' ? this.text.slice(p, start) : '';
  }

  /** Start of the whitespace run that ends at `offset`. */
  wsBefore(offset: number): number {
    let p = offset;
    while (p > 0 && isSpace(this.text.charCodeAt(p - 1))) p--;
    return p;
  }

  /** The document's line break, so inserted lines match the file. */
  get newline(): string {
    const m = /\r\n?|\n/.exec(this.text);
    return m ? m[0] : '\n';
  }
}

function isSpace(c: number): boolean {
  return c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d;
}

function scanTagEnd(t: string, lt: number): number {
  let p = lt + 1;
  while (p < t.length) {
    const c = t[p];
    if (c === '"' || c === "'") p = t.indexOf(c, p + 1) + 1;
    else if (c === '>') return p + 1;
    else p++;
  }
  throw new Error('internal: unterminated tag');
}

export function childElements(el: Element, localName?: string, ns: string | null = null): Element[] {
  const out: Element[] = [];
  for (let n = el.firstChild; n; n = n.nextSibling) {
    if (n.nodeType !== ELEMENT_NODE) continue;
    const e = n as Element;
    if (localName === undefined || (e.localName === localName && e.namespaceURI === ns)) out.push(e);
  }
  return out;
}

export function firstChild(el: Element, localName: string, ns: string | null = null): Element | undefined {
  return childElements(el, localName, ns)[0];
}

/** True when the element holds only text (no child elements, comments or PIs). */
export function isTextOnly(el: Element): boolean {
  for (let n = el.firstChild; n; n = n.nextSibling) {
    if (n.nodeType !== TEXT_NODE && n.nodeType !== CDATA_NODE) return false;
  }
  return true;
}

/** One text change: replace [start, end) with `text`. Inserts have start === end. */
interface Splice {
  start: number;
  end: number;
  text: string;
}

/** Collects non-overlapping splices against one source text and applies them at once. */
export class Edits {
  private readonly list: Splice[] = [];

  replace(start: number, end: number, text: string): void {
    for (const s of this.list) {
      const overlaps = start < s.end && s.start < end;
      if (overlaps) throw new Error(`internal: overlapping edits at ${start}-${end} and ${s.start}-${s.end}`);
    }
    this.list.push({ start, end, text });
  }

  insert(at: number, text: string): void {
    this.replace(at, at, text);
  }

  get size(): number {
    return this.list.length;
  }

  apply(source: string): string {
    // Stable order: equal positions keep the order they were added in.
    const sorted = this.list.map((s, i) => ({ s, i })).sort((a, b) => a.s.start - b.s.start || a.i - b.i);
    let out = '';
    let p = 0;
    for (const { s } of sorted) {
      out += source.slice(p, s.start) + s.text;
      p = s.end;
    }
    return out + source.slice(p);
  }
}

/** Escapes an attribute value for the given quote (libvirt and libxml2 both escape these). */
export function escapeAttr(value: string, quote: '"' | "'"): string {
  let out = value.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  out = out.replace(/\n/g, '&#10;').replace(/\r/g, '&#13;').replace(/\t/g, '&#9;');
  return quote === '"' ? out.replace(/"/g, '&quot;') : out.replace(/'/g, '&apos;');
}

/** Escapes element text the way libvirt formats `<emulator>` (virBufferEscapeString). */
export function escapeText(value: string): string {
  return value.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
}
