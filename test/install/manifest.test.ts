/**
 * The install manifest's readers (src/install/manifest.ts) load none of the installer: the
 * broker at every start, status, doctor and migrate only read what install wrote.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { REPO } from '../harness';

/** The installer's own modules: writing, copying the runtime, diverting. */
const INSTALLER = ['install/apply.js', 'install/runtime.js', 'install/divert.js', 'install/host.js'];

for (const reader of ['broker/daemon', 'status/index', 'doctor/index', 'migrate/index']) {
  test(`${reader} loads none of the installer`, () => {
    const out = execFileSync(process.execPath, ['-e', `require(${JSON.stringify(join(REPO, 'dist/src', `${reader}.js`))}); process.stdout.write(JSON.stringify(Object.keys(require.cache)))`], { encoding: 'utf8' });
    const loaded = (JSON.parse(out) as string[]).map((f) => f.replace(/.*\/dist\/src\//, ''));
    assert.ok(loaded.includes('install/manifest.js'), `${reader} reads the manifest through install/manifest`);
    assert.deepEqual(loaded.filter((f) => INSTALLER.includes(f)), []);
  });
}
