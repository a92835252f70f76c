/**
 * The hook's facts of a domain XML (src/xml domainFacts), remembered. libvirt hands the hook the
 * same XML at every start of a domain but for the root's runtime `id='N'`, and parsing it
 * (xmldom) costs 1–5 ms inside `virsh start` in the broker. The memo is keyed by a hash of the
 * XML without that one attribute; the facts do not depend on it. Errors are not remembered.
 */
import { createHash } from 'node:crypto';
import { domainFacts } from '../xml';
import type { DomainSettings } from '../policy';

export type DomainFacts = ReturnType<typeof domainFacts>;

// The root start tag, attribute by attribute (quoted values may hold anything but their quote),
// up to an `id` attribute with a decimal value: that attribute is left out of the key.
const ROOT_ID = /^(\s*(?:<\?xml[^>]*\?>\s*)?<domain(?:\s+[\w:.-]+\s*=\s*(?:'[^']*'|"[^"]*"))*?)\s+id\s*=\s*(?:'\d+'|"\d+")/;

/** Pure: the memo key of a domain XML (its root's runtime id left out). */
export function factsKey(xml: string): string {
  return createHash('sha256').update(xml.replace(ROOT_ID, '$1')).digest('hex');
}

export class FactsMemo {
  readonly #memo = new Map<string, DomainFacts>();

  constructor(
    private readonly max = 256,
    private readonly compute: (xml: string) => DomainFacts = domainFacts,
  ) {}

  get(xml: string): DomainFacts {
    const key = factsKey(xml);
    const hit = this.#memo.get(key);
    if (hit) {
      this.#memo.delete(key); // most recently used last
      this.#memo.set(key, hit);
      return hit;
    }
    const facts = this.compute(xml);
    this.#memo.set(key, facts);
    if (this.#memo.size > this.max) this.#memo.delete(this.#memo.keys().next().value!);
    return facts;
  }
}

/**
 * What a domain's facts make its plans go by, or undefined when the domain is not ours. Enabled:
 * its policy and hot-plug setting. Opted out of the host-wide mode only: it never asked for eBPF,
 * so it never waits for it (fallback) and gets no hot-plug shim. Pure.
 */
export function settingsOf(facts: DomainFacts): DomainSettings | undefined {
  if (facts.enabled && facts.config) return { policy: facts.config.policy, hotplug: facts.config.hotplug === 'on', ...(facts.hostWideOff ? { hostWideOff: true } : {}) };
  return facts.hostWideOff ? { policy: 'fallback', hotplug: false, hostWideOff: true } : undefined;
}
