/**
 * scripts/setup.sh's decisions that do not install anything, run for real in a mount namespace
 * of their own (`unshare -m`) where /etc/os-release or /etc/apt is a file or folder of the
 * test's: which archive a backports source comes from (deb822 and one-line sources, disabled
 * ones skipped, the keyring kept), and the one line an unsupported system gets.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO, needRoot, tempDir } from '../harness';

const LIB = join(REPO, 'scripts/lib/debian.sh');

/** bash SCRIPT in a private mount namespace where /etc/apt is APT (a folder made by the test). */
function withApt(files: Record<string, string>, script: string): { status: number | null; stdout: string; stderr: string } {
  const d = tempDir('virt-ebpf-setup-');
  try {
    const apt = join(d.path, 'apt');
    mkdirSync(join(apt, 'sources.list.d'), { recursive: true });
    for (const [name, text] of Object.entries(files)) writeFileSync(join(apt, name), text);
    const inner = `mount --bind ${apt} /etc/apt && . ${LIB} && ${script}`;
    return spawnSync('unshare', ['-m', '--propagation', 'private', 'bash', '-c', inner], { encoding: 'utf8', timeout: 30_000 });
  } finally {
    d.remove();
  }
}

test('debian_source: the first enabled deb822 stanza of the suite, with its keyring; disabled and deb-src ones skipped', () => {
  needRoot('bind-mounts over /etc/apt in a mount namespace');
  const r = withApt(
    {
      'sources.list.d/debian.sources': [
        'Types: deb',
        'URIs: http://disabled.example/debian',
        'Suites: trixie',
        'Components: main',
        'Enabled: no',
        '',
        'Types: deb-src',
        'URIs: http://src.example/debian',
        'Suites: trixie',
        '',
        '# a comment',
        'Types: deb',
        'URIs: http://archive.example/debian http://second.example/debian',
        'Suites: trixie trixie-updates',
        'Components: main',
        'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg',
        '',
      ].join('\n'),
    },
    'debian_source trixie; echo "uri=$(debian_uri trixie)"; debian_source bookworm | wc -l',
  );
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, 'http://archive.example/debian\t/usr/share/keyrings/debian-archive-keyring.gpg\nuri=http://archive.example/debian\n0\n');
});

test('debian_source: one-line sources, with or without [options]; add_debian_suite writes backports on that archive and keyring', () => {
  needRoot('bind-mounts over /etc/apt in a mount namespace');
  const r = withApt(
    {
      'sources.list': '# deb http://commented.example/debian trixie main\ndeb-src http://src.example/debian trixie main\ndeb [arch=amd64 signed-by=/etc/keys/debian.gpg] http://mirror.example/debian trixie main contrib\n',
      'sources.list.d/other.list': 'deb http://plain.example/debian bookworm main\n',
    },
    'debian_source trixie; debian_source bookworm; f=$(mktemp); add_debian_suite trixie-backports "$f" && cat "$f"; add_debian_suite forky-backports "$f" || echo "no forky source"; rm -f "$f"',
  );
  assert.equal(r.status, 0, r.stderr);
  assert.equal(
    r.stdout,
    [
      'http://mirror.example/debian\t/etc/keys/debian.gpg',
      'http://plain.example/debian\t',
      'Types: deb',
      'URIs: http://mirror.example/debian',
      'Suites: trixie-backports',
      'Components: main',
      'Signed-By: /etc/keys/debian.gpg',
      'no forky source',
      '',
    ].join('\n'),
  );
});

test('setup.sh on a system that is not Debian 12 or 13 stops at once with one line naming what is needed', () => {
  needRoot('bind-mounts over /etc/os-release in a mount namespace');
  const d = tempDir('virt-ebpf-setup-');
  try {
    const osRelease = join(d.path, 'os-release');
    writeFileSync(osRelease, 'PRETTY_NAME="Ubuntu 24.04 LTS"\nID=ubuntu\nVERSION_ID="24.04"\nVERSION_CODENAME=noble\n');
    const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'bash', '-c', `mount --bind ${osRelease} /etc/os-release && exec bash ${join(REPO, 'scripts/setup.sh')}`], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    assert.equal(r.status, 1);
    assert.equal(r.stdout, '', 'nothing was done');
    assert.equal(
      r.stderr,
      'setup.sh: Ubuntu 24.04 LTS is not supported: setup.sh needs Debian 12 (bookworm) or 13 (trixie); elsewhere install QEMU >= 9.0, libvirt >= 9.0, Node.js >= 20 and the packages listed in this script by hand\n',
    );
  } finally {
    d.remove();
  }
});
