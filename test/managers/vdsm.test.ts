/**
 * The oVirt/VDSM hooks, replayed with VDSM's own inputs: a domain as oVirt runs it and a NIC as
 * VDSM writes it for a multi-queue vNIC profile (test/fixtures/managers). The file contract
 * ($_hook_domxml edited in place, exit codes) is tested in-process and by running the shipped
 * hook files the way VDSM's hooks.py runs a hook directory.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, chownSync, copyFileSync, lstatSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { REPO, tempDir } from '../harness';
import { beforeNicHotplug, beforeVmStart, runVdsmHook, VDSM_EMULATOR } from '../../src/managers';
import { disableDomain, isEnabled, readConfig, rssNics } from '../../src/xml';
import { cliOnPath, runExecutable, VDSM_DOMAIN, VDSM_NIC, vdsmMultiqueue } from './recorded';

const OPTS = { wrapperDir: '/usr/libexec/virt-ebpf', defaultEmulator: VDSM_EMULATOR };
const ON = { virt_ebpf: 'on' };

/** A hook data file as VDSM makes it (tempfile.mkstemp: mode 0600). */
function dataFile(dir: string, content: string): string {
  const file = join(dir, `tmp${Math.random().toString(36).slice(2, 10)}`);
  writeFileSync(file, content, { mode: 0o600 });
  return file;
}

function withFile<T>(content: string, body: (file: string, dir: string) => T): T {
  const d = tempDir('vebpf-vdsm-');
  try {
    return body(dataFile(d.path, content), d.path);
  } finally {
    d.remove();
  }
}

test('a VM without virt_ebpf=on is passed through untouched and unparsed, at both hook points', () => {
  for (const env of [{}, { virt_ebpf: 'off' }]) {
    for (const [point, xml] of [['before_vm_start', VDSM_DOMAIN], ['before_nic_hotplug', VDSM_NIC], ['before_vm_start', 'not xml at all']] as const) {
      withFile(xml, (file) => {
        const ino = statSync(file).ino;
        const r = runVdsmHook([point], { ...env, _hook_domxml: file });
        assert.equal(r.code, 0, r.stderr);
        assert.equal(readFileSync(file, 'utf8'), xml);
        assert.equal(statSync(file).ino, ino, 'not rewritten');
        assert.equal(r.stderr, '', 'nothing to say about a VM that did not ask');
      });
    }
  }
});

test('before_vm_start on the recorded domain (no multi-queue): the emulator becomes the wrapper for later hot-plugs, the NIC is skipped with the reason', () => {
  const r = beforeVmStart(VDSM_DOMAIN, ON, OPTS);
  assert.equal(r.changed, true);
  assert.match(r.xml, /^ {4}<emulator>\/usr\/libexec\/virt-ebpf\/qemu-kvm<\/emulator>$/m);
  assert.deepEqual(rssNics(r.xml), []);
  assert.ok(r.warnings.some((w) => /interface 0 \(00:1a:4a:16:10:9f\): skipped, it has no multiqueue/.test(w)), r.warnings.join('\n'));
  assert.equal(disableDomain(r.xml).xml, VDSM_DOMAIN);
});

test('before_vm_start with multi-queue: rss on, our record beside VDSM\'s metadata, policy from virt_ebpf_policy, reversible', () => {
  const input = vdsmMultiqueue(4);
  const r = beforeVmStart(input, { ...ON, virt_ebpf_policy: 'fallback' }, OPTS);
  assert.match(r.xml, /<driver name='vhost' queues='4' rss='on'\/>/);
  assert.ok(isEnabled(r.xml));
  const cfg = readConfig(r.xml)!;
  assert.deepEqual([cfg.policy, cfg.emulator.original, cfg.emulator.elementCreated], ['fallback', VDSM_EMULATOR, false]);
  assert.deepEqual(rssNics(r.xml), [{ index: 0, mac: '00:1a:4a:16:10:9f', alias: 'net0', type: 'bridge', queues: 4 }]);
  assert.match(r.xml, /<ovirt-vm:vm [\s\S]*<\/ovirt-vm:vm>\n {4}<virt-ebpf:config /);
  assert.equal(disableDomain(r.xml).xml, input);
  assert.deepEqual(beforeVmStart(r.xml, ON, OPTS).xml, r.xml, 'a second run (a restart with the same XML) changes nothing');
});

test('before_nic_hotplug on the recorded multi-queue NIC: only rss is added, the rest is byte-identical', () => {
  const r = beforeNicHotplug(VDSM_NIC, ON);
  assert.equal(r.changed, true);
  assert.equal(r.xml, VDSM_NIC.replace('<driver name="vhost" queues="7"/>', '<driver name="vhost" queues="7" rss="on"/>'));
  assert.equal(r.why, 'the NIC has eBPF RSS');
  const single = VDSM_NIC.replace(' queues="7"', '');
  const s = beforeNicHotplug(single, ON);
  assert.equal(s.changed, false);
  assert.equal(s.xml, single);
  assert.match(s.warnings.join('\n'), /skipped, it has no multiqueue/);
  const macvtap = VDSM_NIC.replace('<interface type="bridge">', '<interface type="direct">');
  assert.equal(beforeNicHotplug(macvtap, ON).xml, macvtap, 'a NIC that cannot carry eBPF RSS is left alone');
});

test('the file is edited in place: same name, mode kept, no temporary file left; stderr says what changed', () => {
  withFile(vdsmMultiqueue(2), (file, dir) => {
    const r = runVdsmHook(['before_vm_start'], { ...ON, _hook_domxml: file });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '');
    assert.equal(readFileSync(file, 'utf8'), beforeVmStart(vdsmMultiqueue(2), ON, OPTS).xml);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.deepEqual(readdirSync(dir), [file.slice(dir.length + 1)]);
    assert.match(r.stderr, /^virt-ebpf: changed: <emulator> \/usr\/libexec\/qemu-kvm -> \/usr\/libexec\/virt-ebpf\/qemu-kvm$/m);
    assert.match(r.stderr, /^virt-ebpf: eBPF RSS on for 1 NIC\(s\)$/m);
  });
});

test('every refusal: exit 1, one line on stderr that says what to do, the file byte-identical and not rewritten', () => {
  const e1000 = VDSM_DOMAIN.replace("<model type='virtio'/>", "<model type='e1000'/>\n      <driver rss='on'/>");
  const cases: Array<[string, string, Record<string, string>, RegExp]> = [
    ['before_vm_start', VDSM_DOMAIN, { virt_ebpf: 'yes' }, /the VM custom property virt_ebpf is "yes", not one of "on", "off" \(MANAGER_INPUT\); set virt_ebpf \(engine: Edit VM > Custom Properties\) to "on" or "off", or remove it/],
    ['before_vm_start', VDSM_DOMAIN, { ...ON, virt_ebpf_policy: 'lenient' }, /virt_ebpf_policy is "lenient"/],
    ['before_vm_start', VDSM_NIC, ON, /root element is <interface>, not <domain> \(XML_INVALID\)/],
    ['before_vm_start', VDSM_DOMAIN.slice(0, 300), ON, /domain XML is malformed at line/],
    ['before_vm_start', '', ON, /domain XML is empty/],
    ['before_vm_start', e1000, ON, /cannot give eBPF RSS to interface 0 .*model e1000 is not virtio-net \(XML_UNSUPPORTED_NIC\)/],
    ['before_nic_hotplug', VDSM_DOMAIN, ON, /root element is <domain>, not <interface> \(XML_INVALID\)/],
    ['before_nic_hotplug', VDSM_NIC.replace('<model type="virtio"/>', '<model type="e1000"/>').replace('queues="7"', 'queues="7" rss="on"'), ON, /model e1000 is not virtio-net \(XML_UNSUPPORTED_NIC\)/],
  ];
  for (const [point, xml, env, re] of cases) {
    withFile(xml, (file) => {
      const ino = statSync(file).ino;
      const r = runVdsmHook([point], { ...env, _hook_domxml: file });
      assert.equal(r.code, 1, `${point} ${re}: ${r.stderr}`);
      assert.match(r.stderr, re);
      assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
      assert.equal(readFileSync(file, 'utf8'), xml);
      assert.equal(statSync(file).ino, ino);
    });
  }
});

test('a failed write leaves the file as it was (exit 1), and nothing of ours behind', () => {
  // A name that fits while the temporary name beside it does not (ENAMETOOLONG): the write fails before anything is renamed.
  const scratch = tempDir('vebpf-vdsm-long-');
  try {
    const file = join(scratch.path, 'x'.repeat(240));
    writeFileSync(file, vdsmMultiqueue(4), { mode: 0o640 });
    const r = runVdsmHook(['before_vm_start'], { ...ON, _hook_domxml: file });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /^virt-ebpf: cannot write the new XML over .*: ENAMETOOLONG \(MANAGER_INPUT\); the hook needs to create a file beside \$_hook_domxml/);
    assert.equal(r.stderr.trimEnd().split('\n').length, 1);
    assert.equal(readFileSync(file, 'utf8'), vdsmMultiqueue(4));
    assert.deepEqual(readdirSync(scratch.path), ['x'.repeat(240)], 'nothing of ours behind');
  } finally {
    scratch.remove();
  }
});

test("the rewritten file keeps its owner and mode (VDSM reads it back as its own user), whatever the umask", () => {
  withFile(vdsmMultiqueue(4), (file) => {
    chownSync(file, 65534, 65534);
    chmodSync(file, 0o664);
    const umask = process.umask(0o077);
    try {
      const r = runVdsmHook(['before_vm_start'], { ...ON, _hook_domxml: file });
      assert.equal(r.code, 0, r.stderr);
    } finally {
      process.umask(umask);
    }
    const st = statSync(file);
    assert.deepEqual([st.uid, st.gid, st.mode & 0o7777], [65534, 65534, 0o664]);
    assert.match(readFileSync(file, 'utf8'), /rss='on'/);
  });
});

test('$_hook_domxml that is a symlink or not a regular file is never read or replaced: exit 2', () => {
  const scratch = tempDir('vebpf-vdsm-link-');
  try {
    const target = join(scratch.path, 'target');
    writeFileSync(target, vdsmMultiqueue(4));
    const link = join(scratch.path, 'link');
    symlinkSync(target, link);
    const r = runVdsmHook(['before_vm_start'], { ...ON, _hook_domxml: link });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /cannot read \$_hook_domxml .*: ELOOP/);
    assert.ok(lstatSync(link).isSymbolicLink(), 'the link is not replaced');
    assert.equal(readFileSync(target, 'utf8'), vdsmMultiqueue(4));
    const dirAsFile = runVdsmHook(['before_vm_start'], { ...ON, _hook_domxml: scratch.path });
    assert.equal(dirAsFile.code, 2, dirAsFile.stderr);
    assert.match(dirAsFile.stderr, /is not a regular file/);
  } finally {
    scratch.remove();
  }
});

test('not run as VDSM runs hooks: exit 2 (stop the later hooks) with the reason', () => {
  const cases: Array<[string[], Record<string, string>, RegExp]> = [
    [['before_vm_start'], ON, /\$_hook_domxml is not set \(USAGE\); run it as VDSM runs hooks/],
    [['before_vm_start'], { ...ON, _hook_domxml: '/nonexistent/vebpf-hook-data' }, /cannot read \$_hook_domxml \/nonexistent\/vebpf-hook-data: ENOENT/],
    [['after_vm_start'], ON, /unknown hook point "after_vm_start" \(one of before_vm_start, before_nic_hotplug\)/],
    [[], ON, /no hook point given/],
    [['before_vm_start', 'extra'], ON, /unexpected argument "extra"/],
    [['before_vm_start', '--policy', 'strict'], ON, /unknown option --policy/],
  ];
  for (const [argv, env, re] of cases) {
    const r = runVdsmHook(argv, env);
    assert.equal(r.code, 2, `${argv.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, re);
    assert.equal(r.stderr.trimEnd().split('\n').length, 1);
  }
});

/**
 * VDSM's lib/vdsm/common/hooks.py _runHooksDir, step for step: the data in a mkstemp file named
 * by $_hook_domxml, the environment plus the custom properties, every executable of the
 * directory in sorted order, a stop at exit code 2, the file read back at the end.
 */
function runHooksDir(dir: string, data: string, custom: Record<string, string>, path: string): { final: string; codes: number[]; errors: string[] } {
  const scratch = tempDir('vebpf-vdsm-run-');
  try {
    const file = dataFile(scratch.path, data);
    const env = { PATH: path, ...custom, _hook_domxml: file };
    const codes: number[] = [];
    const errors: string[] = [];
    for (const s of readdirSync(dir).sort()) {
      const p = runExecutable(join(dir, s), [], env);
      codes.push(p.status ?? -1);
      if (p.status !== 0) errors.push(p.stderr);
      if (p.status === 2) break;
    }
    return { final: readFileSync(file, 'utf8'), codes, errors };
  } finally {
    scratch.remove();
  }
}

test('the shipped hook files in a VDSM hook directory: later hooks see our XML; after a refusal they still run on the unchanged XML; exit 2 stops them', () => {
  const d = tempDir('vebpf-vdsm-hooks-');
  try {
    const path = cliOnPath(d.path);
    for (const point of ['before_vm_start', 'before_nic_hotplug']) {
      const dir = join(d.path, point);
      mkdirSync(dir);
      copyFileSync(join(REPO, 'templates', 'vdsm', point, '50_virt_ebpf'), join(dir, '50_virt_ebpf'));
      chmodSync(join(dir, '50_virt_ebpf'), statSync(join(REPO, 'templates', 'vdsm', point, '50_virt_ebpf')).mode);
      // a later hook that reports the XML it was given
      writeFileSync(join(dir, '60_later'), `#!/bin/sh\n/bin/cp "$_hook_domxml" ${JSON.stringify(join(d.path, `${point}.seen`))}\n`, { mode: 0o755 });
    }
    const seen = (point: string) => readFileSync(join(d.path, `${point}.seen`), 'utf8');

    const start = runHooksDir(join(d.path, 'before_vm_start'), vdsmMultiqueue(4), ON, path);
    assert.deepEqual(start.codes, [0, 0], start.errors.join('\n'));
    assert.equal(start.final, beforeVmStart(vdsmMultiqueue(4), ON, OPTS).xml);
    assert.equal(seen('before_vm_start'), start.final, 'the later hook got our XML');

    const plug = runHooksDir(join(d.path, 'before_nic_hotplug'), VDSM_NIC, ON, path);
    assert.deepEqual(plug.codes, [0, 0], plug.errors.join('\n'));
    assert.match(plug.final, /<driver name="vhost" queues="7" rss="on"\/>/);

    const refused = runHooksDir(join(d.path, 'before_vm_start'), VDSM_DOMAIN, { virt_ebpf: 'maybe' }, path);
    assert.deepEqual(refused.codes, [1, 0]);
    assert.equal(refused.final, VDSM_DOMAIN);
    assert.equal(seen('before_vm_start'), VDSM_DOMAIN);
    assert.match(refused.errors[0], /^virt-ebpf: the VM custom property virt_ebpf is "maybe"/);

    const untouched = runHooksDir(join(d.path, 'before_vm_start'), VDSM_DOMAIN, {}, path);
    assert.deepEqual(untouched.codes, [0, 0]);
    assert.equal(untouched.final, VDSM_DOMAIN);
    // A VM without the property runs even where virt-ebpf is not on PATH (the hook file alone decides).
    const noCli = runHooksDir(join(d.path, 'before_vm_start'), VDSM_DOMAIN, {}, '/nonexistent');
    assert.deepEqual(noCli.codes, [0, 0], noCli.errors.join('\n'));

    // a hook file copied to the wrong directory names a point we do not serve: exit 2, and VDSM stops there
    const wrong = join(d.path, 'before_vm_start', '50_virt_ebpf');
    writeFileSync(wrong, readFileSync(wrong, 'utf8').replace('vdsm before_vm_start', 'vdsm after_vm_start'));
    writeFileSync(join(d.path, 'before_vm_start.seen'), 'not run');
    const stopped = runHooksDir(join(d.path, 'before_vm_start'), vdsmMultiqueue(4), ON, path);
    assert.deepEqual(stopped.codes, [2]);
    assert.equal(stopped.final, vdsmMultiqueue(4));
    assert.equal(seen('before_vm_start'), 'not run', 'the later hook was not run');
    assert.match(stopped.errors[0], /unknown hook point "after_vm_start".*\(USAGE\)/);
  } finally {
    d.remove();
  }
});

test("before_vm_start's output is a domain libvirt's own schema accepts (virt-xml-validate), as the recorded input is", () => {
  const d = tempDir('vebpf-vdsm-validate-');
  try {
    for (const [name, xml] of [['recorded', VDSM_DOMAIN], ['enabled', beforeVmStart(VDSM_DOMAIN, ON, OPTS).xml], ['enabled-multiqueue', beforeVmStart(vdsmMultiqueue(4), ON, OPTS).xml]]) {
      const file = join(d.path, `${name}.xml`);
      writeFileSync(file, xml);
      const r = spawnSync('virt-xml-validate', [file, 'domain'], { encoding: 'utf8', timeout: 30_000 });
      if (r.error) assert.fail(`cannot run virt-xml-validate (${r.error.message}); install libvirt-clients and libxml2-utils (scripts/setup.sh does)`);
      assert.equal(r.status, 0, `${name}: ${r.stdout}${r.stderr}`);
    }
  } finally {
    d.remove();
  }
});
