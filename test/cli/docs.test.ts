/**
 * The man page and the bash completion the package ships are made from the commands' usage
 * text: every command and option is in both, and man renders the page without a warning.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { COMMANDS } from '../../src/cli/commands';
import { bashCompletion, manPage, roff, usageOptions } from '../../src/cli/docs';
import { DEFAULT_PATHS } from '../../src/install/plan';
import { tempDir } from '../harness';

const page = manPage(COMMANDS, { version: '9.8.7', date: '2026-01-02', prefix: '/usr/lib/virt-ebpf', paths: DEFAULT_PATHS });

test('roff escaping: dashes, backslashes, a leading dot', () => {
  assert.equal(roff('--prefix DIR'), '\\-\\-prefix DIR');
  assert.equal(roff('a\\b'), 'a\\eb');
  assert.equal(roff('.hidden'), '\\&.hidden');
});

test('the man page names every command with its usage, and man renders it without a warning', () => {
  for (const [name, c] of Object.entries(COMMANDS)) {
    assert.ok(page.includes(`.B ${roff(name)}\n${roff(c.summary)}`), name);
    for (const o of usageOptions(c.usage)) assert.ok(page.includes(roff(o)), `${name} ${o}`);
  }
  const d = tempDir();
  try {
    const file = join(d.path, 'virt-ebpf.8');
    writeFileSync(file, page);
    const r = spawnSync('man', ['--warnings', '-E', 'UTF-8', '-l', '-P', 'cat', file], { encoding: 'utf8', env: { ...process.env, MANWIDTH: '100' } });
    assert.equal(r.error, undefined, 'man must be installed');
    assert.equal(r.stderr, '', 'no warning');
    assert.match(r.stdout, /VIRT-EBPF\(8\)/);
    // man justifies the text: a long usage line comes back with its spaces widened
    assert.match(r.stdout, /install\s+\[--prefix\s+DIR\]/);
  } finally {
    d.remove();
  }
});

test('the completion offers every command, then that command\'s options', () => {
  const script = bashCompletion(COMMANDS);
  const complete = (words: string[]) =>
    spawnSync('bash', ['-c', `${script}\nCOMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _virt_ebpf; echo "\${COMPREPLY[*]}"`], { encoding: 'utf8' }).stdout.trim();
  assert.deepEqual(complete(['virt-ebpf', '']).split(' ').sort(), [...Object.keys(COMMANDS), 'help'].sort());
  assert.equal(complete(['virt-ebpf', 'unin']), 'uninstall');
  assert.deepEqual(complete(['virt-ebpf', 'probe', '--']).split(' ').sort(), ['--cache-dir', '--json', '--no-cache']);
});
