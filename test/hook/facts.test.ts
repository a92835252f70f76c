/**
 * The broker's memo of domain-XML facts (src/hook/facts.ts): a restart of a domain (the same XML
 * but for the root's runtime id) is not parsed again; anything else that differs is.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { domainFacts, enableDomain, wrapperInDir } from '../../src/xml';
import { FactsMemo, factsKey } from '../../src/hook/facts';
import { domainXml } from '../coldstart/libvirt';

const plain = domainXml({ name: 'vm', nics: [{ rss: true }] });
const enabled = enableDomain(plain, { wrapperFor: wrapperInDir('/usr/libexec/virt-ebpf') }).xml;
const withId = (xml: string, id: string) => xml.replace("<domain type='qemu'>", `<domain type='qemu' id=${id}>`);

test('the memo key leaves out only the root element\'s runtime id', () => {
  assert.equal(factsKey(withId(enabled, "'322'")), factsKey(withId(enabled, "'323'")));
  assert.equal(factsKey(withId(enabled, '"7"')), factsKey(enabled));
  assert.notEqual(factsKey(enabled), factsKey(plain), 'our metadata differs');
  assert.notEqual(factsKey(enabled), factsKey(enabled.replace("rss='on'", "rss='off'")), 'a NIC differs');
  // An id-like text inside another attribute's value, or an id that is not a number, stays in the key.
  const odd = enabled.replace("<domain type='qemu'>", `<domain type="qemu id='1'">`);
  assert.notEqual(factsKey(odd), factsKey(enabled.replace("<domain type='qemu'>", `<domain type="qemu">`)));
  assert.notEqual(factsKey(withId(enabled, "'x'")), factsKey(enabled));
});

test('a restart is served from the memo; other XML is parsed; errors are not remembered; the memo is bounded', () => {
  let parsed = 0;
  const memo = new FactsMemo(2, (xml) => (parsed++, domainFacts(xml)));
  const first = memo.get(withId(enabled, "'1'"));
  assert.deepEqual(first, domainFacts(enabled));
  assert.equal(memo.get(withId(enabled, "'2'")), first, 'the next start of the same domain');
  assert.equal(parsed, 1);
  memo.get(plain);
  assert.equal(parsed, 2);
  const broken = enabled.replace('</devices>', '</device>');
  assert.throws(() => memo.get(broken), (e: Error & { code?: string }) => e.code === 'XML_INVALID');
  assert.throws(() => memo.get(broken), (e: Error & { code?: string }) => e.code === 'XML_INVALID');
  assert.equal(parsed, 4, 'a failure is computed again');
  memo.get(withId(enabled, "'3'")); // used again: plain is now the least recently used
  assert.equal(parsed, 4);
  memo.get(enabled.replace("queues='4'", "queues='2'")); // a third entry: plain goes
  memo.get(withId(enabled, "'4'"));
  assert.equal(parsed, 5, 'the recently used one stayed');
  memo.get(plain);
  assert.equal(parsed, 6, 'the least recently used one was dropped');
});
