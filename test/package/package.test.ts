/**
 * The Debian package, with the real dpkg: build it (`npm run package`'s buildDeb), lintian finds
 * no error, `dpkg -i` runs `virt-ebpf install` and puts `virt-ebpf` on PATH, the command works
 * (version, probe, doctor, man page, completion, the packaged units verify), and `dpkg --purge`
 * leaves the root's file list exactly as it was before the install. The host is restored
 * whatever happens: the package is purged in `finally`. Run under the host lock (it installs
 * for real, as the cold-start suite does).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, SpawnSyncReturns } from 'node:child_process';
import { existsSync, lstatSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { buildDeb } from '../../src/package/build';
import { readManifest } from '../../src/install/manifest';
import { DEFAULT_PATHS } from '../../src/install/plan';
import { DEFAULT_PREFIX, PREFIX_MARKER } from '../../src/install/runtime';
import { QEMU, needRoot, tempDir } from '../harness';

/** Where dpkg and our install and purge may touch the root. */
const WATCHED = ['/etc', '/usr', '/var/lib', '/var/cache', '/run/virt-ebpf'];
/**
 * dpkg's own bookkeeping (its database, the log) and the caches its triggers refresh (man-db's
 * index, debconf): they change with any package and are not files of ours. Our entries in
 * dpkg's database are checked on their own.
 */
const NOT_OURS = ['/var/lib/dpkg', '/var/cache/man', '/var/cache/debconf', '/var/cache/ldconfig'];
/** Ours before the test, moved aside while it runs (purge removes them by design) and put back. */
const STASHED = ['/var/cache/virt-ebpf', '/run/virt-ebpf'];
const ROOT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

function listTree(root: string, out = new Set<string>()): Set<string> {
  let st;
  try {
    st = lstatSync(root);
  } catch {
    return out;
  }
  if (NOT_OURS.some((p) => root === p || root.startsWith(`${p}/`))) return out;
  out.add(`${root} ${st.isDirectory() ? 'd' : st.isSymbolicLink() ? 'l' : 'f'}`);
  if (st.isDirectory()) for (const e of readdirSync(root)) listTree(join(root, e), out);
  return out;
}

function snapshot(): Set<string> {
  const all = new Set<string>();
  for (const r of WATCHED) listTree(r, all);
  return all;
}

function run(cmd: string, args: string[], input?: string): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { encoding: 'utf8', input, env: { ...process.env, PATH: ROOT_PATH, DEBIAN_FRONTEND: 'noninteractive' } });
}

function ok(r: SpawnSyncReturns<string>, what: string): string {
  assert.equal(r.error, undefined, `${what}: ${r.error?.message}`);
  assert.equal(r.status, 0, `${what} failed (${r.status}):\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

const installed = () => /install ok installed|config-files|half/.test(run('dpkg-query', ['-W', '-f=${Status}', 'virt-ebpf']).stdout);

test('the .deb: lintian finds no error; dpkg -i puts a working virt-ebpf on PATH; dpkg --purge leaves the root as it was', (t) => {
  needRoot('dpkg -i and --purge');
  assert.ok(!installed(), 'the virt-ebpf package is installed on this host already: purge it (dpkg --purge virt-ebpf) before this test');
  assert.equal(readManifest(DEFAULT_PATHS.manifest), null, `this host has a checkout's install (${DEFAULT_PATHS.manifest}): run \`virt-ebpf uninstall\` before this test`);
  assert.ok(!existsSync(DEFAULT_PATHS.launcher), `${DEFAULT_PATHS.launcher} exists without an install that lists it: remove it before this test (it would come first on PATH)`);
  const d = tempDir();
  const stashed: Array<[string, string]> = [];
  try {
    const deb = buildDeb({ outDir: d.path });
    assert.match(deb, /\/virt-ebpf_\d+\.\d+\.\d+_amd64\.deb$/);
    const control = ok(run('dpkg-deb', ['-f', deb, 'Depends']), 'dpkg-deb -f');
    assert.match(control, /nodejs \(>= 20\), libbpf1, qemu-system-x86 \(>= 1:9\.0\), libvirt-daemon-system/);

    const lint = run('lintian', ['--tag-display-limit', '0', deb]);
    assert.equal(lint.error, undefined, 'lintian must be installed (scripts/setup.sh installs it)');
    const tags = lint.stdout.split('\n').filter((l) => /^[EW]: /.test(l));
    t.diagnostic(`lintian: ${tags.filter((l) => l.startsWith('E:')).length} errors, ${tags.filter((l) => l.startsWith('W:')).length} warnings`);
    assert.deepEqual(tags.filter((l) => l.startsWith('E:')), [], 'lintian reports no error');

    for (const p of STASHED) {
      if (!existsSync(p)) continue;
      renameSync(p, `${p}.package-test`);
      stashed.push([p, `${p}.package-test`]);
    }
    const before = snapshot();

    ok(run('dpkg', ['-i', deb]), 'dpkg -i');
    assert.equal(run('sh', ['-c', 'command -v virt-ebpf']).stdout.trim(), '/usr/sbin/virt-ebpf');
    assert.match(ok(run('virt-ebpf', ['version']), 'virt-ebpf version'), /^virt-ebpf \d+\.\d+\.\d+\n$/);
    const probe = JSON.parse(ok(run('virt-ebpf', ['probe', '--json', QEMU]), 'virt-ebpf probe')) as Array<{ supported: boolean }>;
    assert.equal(probe[0].supported, true);
    const doctor = run('virt-ebpf', ['doctor', '--json']);
    assert.ok(Array.isArray(JSON.parse(doctor.stdout)), `doctor --json: ${doctor.stderr}`);
    const m = readManifest(DEFAULT_PATHS.manifest);
    assert.equal(m?.prefix, DEFAULT_PREFIX, 'postinst ran `virt-ebpf install` from the packaged runtime');
    assert.match(readFileSync(DEFAULT_PATHS.hookFile, 'utf8'), new RegExp(`^#!${DEFAULT_PREFIX}/dist/shims/vebpf-hook\\n`));
    assert.match(readFileSync(join(DEFAULT_PREFIX, PREFIX_MARKER), 'utf8'), /"owner":"package"/);
    assert.ok(!m!.entries.some((e) => e.kind === 'unit' || e.kind === 'launcher'), 'the package ships its units and command: install writes none');
    assert.equal(ok(run('man', ['-w', 'virt-ebpf']), 'man -w').trim(), '/usr/share/man/man8/virt-ebpf.8.gz');
    assert.match(ok(run('man', ['-P', 'cat', '8', 'virt-ebpf']), 'man virt-ebpf'), /virt-ebpf - virtio-net eBPF RSS/);
    const completion = run('bash', ['-c', 'source /usr/share/bash-completion/completions/virt-ebpf; COMP_WORDS=(virt-ebpf ins); COMP_CWORD=1; _virt_ebpf; echo "${COMPREPLY[*]}"; COMP_WORDS=(virt-ebpf install --p); COMP_CWORD=2; _virt_ebpf; echo "${COMPREPLY[*]}"']);
    assert.equal(ok(completion, 'bash completion'), 'install\n--prefix\n');
    const units = ['virt-ebpfd.socket', 'virt-ebpfd.service'].map((u) => join('/usr/lib/systemd/system', u));
    const verify = run('systemd-analyze', ['verify', ...units]);
    assert.equal(`${verify.stdout}${verify.stderr}`, '', 'the packaged units verify, man page included');

    ok(run('dpkg', ['--purge', 'virt-ebpf']), 'dpkg --purge');
    const after = snapshot();
    assert.deepEqual([...after].filter((p) => !before.has(p)).sort(), [], 'no file of ours is left');
    assert.deepEqual([...before].filter((p) => !after.has(p)).sort(), [], 'nothing that was there is gone');
    assert.deepEqual(readdirSync('/var/lib/dpkg/info').filter((f) => f.startsWith('virt-ebpf.')), [], "dpkg's database forgot the package");
  } finally {
    if (installed()) {
      // Restore the host whatever failed: the hook and wrappers out (prerm would refuse while
      // a domain uses them), then the package.
      if (existsSync('/usr/sbin/virt-ebpf')) run('/usr/sbin/virt-ebpf', ['uninstall', '--force']);
      run('dpkg', ['--purge', 'virt-ebpf']);
    }
    for (const [p, aside] of stashed) {
      rmSync(p, { recursive: true, force: true });
      renameSync(aside, p);
    }
    d.remove();
  }
});
