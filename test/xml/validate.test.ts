/**
 * Every enabled golden must validate against libvirt's own RNG schema (`virt-xml-validate`,
 * from libvirt-clients, which runs xmllint from libxml2-utils): our metadata has to be the kind
 * of namespaced element libvirt's <metadata> accepts, and our <driver>/<emulator> edits valid.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../harness';
import { enableDomain } from '../../src/xml';
import { FIXTURES, GOLDEN, read, wrapperFor } from './cases';

function validate(file: string): { ok: boolean; output: string } {
  const r = spawnSync('virt-xml-validate', [file, 'domain'], { encoding: 'utf8', timeout: 30_000 });
  if (r.error) assert.fail(`cannot run virt-xml-validate (${r.error.message}); install libvirt-clients and libxml2-utils (scripts/setup.sh does)`);
  return { ok: r.status === 0, output: `${r.stdout}${r.stderr}` };
}

for (const c of GOLDEN) {
  test(`virt-xml-validate accepts ${c.name}.enabled.xml`, () => {
    const r = validate(join(FIXTURES, `${c.name}.enabled.xml`));
    assert.ok(r.ok, r.output);
  });
}

test('the validator is not a rubber stamp: our config outside <metadata> is rejected', () => {
  const dir = tempDir();
  try {
    const enabled = enableDomain(read('one-rss-nic.in.xml'), { wrapperFor }).xml;
    // move our element out of <metadata> to the domain level, where the schema forbids it
    const m = /\n  <metadata>\n([\s\S]*?)\n  <\/metadata>/.exec(enabled)!;
    const broken = enabled.replace(m[0], `\n${m[1]}`);
    const file = join(dir.path, 'broken.xml');
    writeFileSync(file, broken);
    const r = validate(file);
    assert.equal(r.ok, false, 'expected a validation failure');
    assert.match(r.output, /config/);
  } finally {
    dir.remove();
  }
});
