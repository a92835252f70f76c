/**
 * The KubeVirt hook sidecar, replayed with KubeVirt's own inputs: the example VMI that declares a
 * hook sidecar and the domain XML virt-launcher's converter writes (test/fixtures/managers).
 * Pure apart from the last test, which runs the shipped `onDefineDomain` as the sidecar-shim does.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { REPO, tempDir } from '../harness';
import { HOOK_SIDECARS_ANNOTATION, onDefineDomain, readVmi, runKubevirtSidecar, VIRT_LAUNCHER_EMULATOR } from '../../src/managers';
import { disableDomain, isEnabled, readConfig, rssNics } from '../../src/xml';
import { cliOnPath, KUBEVIRT_DOMAIN, KUBEVIRT_VMI, kubevirtMultiqueue, runExecutable, vmiWith, withTabs } from './recorded';

const OPTS = { wrapperDir: '/usr/libexec/virt-ebpf', defaultEmulator: VIRT_LAUNCHER_EMULATOR };
const RSS_ON = { 'virt-ebpf.io/rss': 'on' };
const sidecar = (vmi: string, domain: string, ...extra: string[]) => runKubevirtSidecar(['onDefineDomain', '--vmi', vmi, '--domain', domain, ...extra]);

test('the recorded VMI declares its sidecar with the annotation KubeVirt reads, and asks for nothing of ours', () => {
  const vmi = JSON.parse(KUBEVIRT_VMI);
  assert.ok(Array.isArray(JSON.parse(vmi.metadata.annotations[HOOK_SIDECARS_ANNOTATION])));
  assert.deepEqual(readVmi(KUBEVIRT_VMI), { label: 'vmi-with-sidecar-hook', multiqueue: false });
});

test('a VMI without virt-ebpf.io/rss gets its domain back byte for byte', () => {
  const r = sidecar(KUBEVIRT_VMI, KUBEVIRT_DOMAIN);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, KUBEVIRT_DOMAIN);
  assert.match(r.stderr, /virt-ebpf\.io\/rss is not set; domain unchanged/);
  const off = sidecar(vmiWith({ 'virt-ebpf.io/rss': 'off', 'virt-ebpf.io/policy': 'fallback' }), KUBEVIRT_DOMAIN);
  assert.equal(off.code, 0, off.stderr);
  assert.equal(off.stdout, KUBEVIRT_DOMAIN);
  assert.match(off.stderr, /policy has no effect without virt-ebpf\.io\/rss/);
});

test('rss on without networkInterfaceMultiqueue: no NIC has 2 queues, the domain is unchanged and the warning names the VMI field', () => {
  const r = onDefineDomain(vmiWith(RSS_ON), KUBEVIRT_DOMAIN, OPTS);
  assert.equal(r.changed, false);
  assert.equal(r.xml, KUBEVIRT_DOMAIN);
  assert.ok(r.warnings.some((w) => /interface 0 \(ua-default\): skipped, it has no multiqueue/.test(w)), r.warnings.join('\n'));
  assert.ok(r.warnings.some((w) => /networkInterfaceMultiqueue is not true/.test(w)), r.warnings.join('\n'));
  assert.ok(!r.warnings.some((w) => /only the emulator is switched/.test(w)), 'the emulator is not switched, so the warning must not say so');
});

test('rss on with multi-queue: the NIC gets rss, <emulator> names the wrapper of virt-launcher\'s QEMU, and disable gives the input back', () => {
  const input = kubevirtMultiqueue(4);
  const r = sidecar(vmiWith(RSS_ON, true), input);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /<driver name="vhost" queues="4" rss="on"><\/driver>/);
  assert.match(r.stdout, /^ {4}<emulator>\/usr\/libexec\/virt-ebpf\/qemu-kvm<\/emulator>$/m);
  assert.ok(isEnabled(r.stdout));
  const cfg = readConfig(r.stdout)!;
  assert.deepEqual([cfg.policy, cfg.emulator.original, cfg.emulator.elementCreated], ['strict', '/usr/libexec/qemu-kvm', true]);
  assert.deepEqual(rssNics(r.stdout), [{ index: 0, alias: 'ua-default', type: 'ethernet', queues: 4 }]);
  // KubeVirt's own metadata stays where it was; ours is a second element beside it
  assert.match(r.stdout, /<kubevirt xmlns="http:\/\/kubevirt\.io">\n\s*<uid><\/uid>\n\s*<\/kubevirt>\n\s*<virt-ebpf:config /);
  assert.equal(disableDomain(r.stdout).xml, input, 'every edit is recorded and reversible');
  assert.match(r.stderr, /^virt-ebpf: vmi-with-sidecar-hook: eBPF RSS on for 1 NIC\(s\)$/m);
});

test('the tab-indented XML virt-launcher really sends: what we add is indented the same way', () => {
  const input = withTabs(kubevirtMultiqueue(2));
  assert.match(input, /^\t\t<interface type="ethernet">$/m);
  const r = onDefineDomain(vmiWith({ ...RSS_ON, 'virt-ebpf.io/policy': 'fallback' }, true), input, OPTS);
  assert.equal(r.changed, true);
  assert.match(r.xml, /^\t\t<emulator>\/usr\/libexec\/virt-ebpf\/qemu-kvm<\/emulator>$/m);
  assert.match(r.xml, /^\t\t<virt-ebpf:config .* policy="fallback">$/m);
  assert.equal(disableDomain(r.xml).xml, input);
});

test('--wrapper-dir and --default-emulator say where the launcher image has them', () => {
  const r = sidecar(vmiWith(RSS_ON, true), kubevirtMultiqueue(4), '--wrapper-dir', '/opt/virt-ebpf/bin', '--default-emulator=/usr/bin/qemu-system-x86_64');
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(readConfig(r.stdout)!.emulator, { original: '/usr/bin/qemu-system-x86_64', wrapper: '/opt/virt-ebpf/bin/qemu-system-x86_64', elementCreated: true });
});

test('every bad input: exit 1 (2 for usage), nothing on stdout, one line on stderr that says what to do', () => {
  const vmiOn = vmiWith(RSS_ON, true);
  const cases: Array<[string[], number, RegExp]> = [
    [['onDefineDomain', '--vmi', '{"metadata":', '--domain', KUBEVIRT_DOMAIN], 1, /--vmi value is not JSON.*\(MANAGER_INPUT\); pass the VirtualMachineInstance as JSON/],
    [['onDefineDomain', '--vmi', '[1]', '--domain', KUBEVIRT_DOMAIN], 1, /not a JSON object \(MANAGER_INPUT\)/],
    [['onDefineDomain', '--vmi', '{"kind":"VirtualMachine"}', '--domain', KUBEVIRT_DOMAIN], 1, /is a VirtualMachine, not a VirtualMachineInstance \(MANAGER_INPUT\); pass the VMI/],
    [['onDefineDomain', '--vmi', '{"metadata":{"annotations":["a"]}}', '--domain', KUBEVIRT_DOMAIN], 1, /metadata\.annotations is not an object/],
    [['onDefineDomain', '--vmi', vmiWith({ 'virt-ebpf.io/rss': 'yes' }), '--domain', KUBEVIRT_DOMAIN], 1, /vmi-with-sidecar-hook: annotation virt-ebpf\.io\/rss is "yes", not one of "on", "off" \(MANAGER_INPUT\); set virt-ebpf\.io\/rss to "on" or "off", or remove it/],
    [['onDefineDomain', '--vmi', vmiWith({ ...RSS_ON, 'virt-ebpf.io/policy': 'lenient' }), '--domain', KUBEVIRT_DOMAIN], 1, /policy is "lenient", not one of "strict", "fallback"/],
    [['onDefineDomain', '--vmi', vmiOn, '--domain', '<interface type="ethernet"/>'], 1, /root element is <interface>, not <domain> \(XML_INVALID\)/],
    [['onDefineDomain', '--vmi', vmiOn, '--domain', KUBEVIRT_DOMAIN.slice(0, 400)], 1, /domain XML is malformed at line/],
    [['onDefineDomain', '--vmi', vmiOn, '--domain', ''], 1, /domain XML is empty/],
    [['onDefineDomain', '--vmi', vmiOn, '--domain', KUBEVIRT_DOMAIN.replace('<domain type="kvm"', '<domain type="xen"')], 1, /type "xen".*\(XML_UNSUPPORTED_DOMAIN\)/],
    [['onDefineDomain', '--vmi', vmiOn], 2, /onDefineDomain needs --vmi and --domain \(USAGE\); run it as KubeVirt's sidecar-shim does/],
    [['onDefineDomain', '--domain', KUBEVIRT_DOMAIN], 2, /needs --vmi and --domain/],
    [['onDefineDomain', '--vmi'], 2, /--vmi needs a value/],
    [['onDefineDomain', '--vmi', vmiOn, '--domain', KUBEVIRT_DOMAIN, 'extra'], 2, /unexpected argument "extra"/],
    [['onDefineDomain', '--vmi', vmiOn, '--domain', KUBEVIRT_DOMAIN, '--cloud-init', '{}'], 2, /unknown option --cloud-init/],
    [['preCloudInitIso', '--vmi', vmiOn, '--cloud-init', '{}'], 2, /unknown hook point "preCloudInitIso" \(only onDefineDomain/],
    [[], 2, /kubevirt-sidecar: no hook point given \(USAGE\)/],
  ];
  for (const [argv, code, re] of cases) {
    const r = runKubevirtSidecar(argv);
    const out = r.stderr;
    assert.equal(r.code, code, `${argv.slice(0, 3).join(' ')}: ${r.stderr}`);
    assert.match(out, re);
    if (argv.length) {
      assert.equal(r.stdout, '', 'nothing on stdout: the shim would hand it to virt-launcher');
      assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
      assert.match(r.stderr.trimEnd(), /^virt-ebpf: .* \([A-Z_]+\); .+$/);
    }
  }
});

test("the shipped onDefineDomain, run as KubeVirt's sidecar-shim runs it: stdout is exactly the domain XML; a refusal exits non-zero with nothing on stdout", () => {
  const d = tempDir('vebpf-kubevirt-');
  try {
    const env = { PATH: cliOnPath(d.path) };
    const hook = join(REPO, 'templates', 'kubevirt', 'onDefineDomain');
    const input = withTabs(kubevirtMultiqueue(8));
    // sidecar_shim.go: exec.Command("onDefineDomain", "--vmi", string(vmiJSON), "--domain", string(domainXML)).Output()
    const ok = runExecutable(hook, ['--vmi', vmiWith(RSS_ON, true), '--domain', input], env);
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(ok.stdout, onDefineDomain(vmiWith(RSS_ON, true), input, OPTS).xml);
    assert.equal(disableDomain(ok.stdout).xml, input);
    assert.match(ok.stderr, /eBPF RSS on for 1 NIC/);
    const plain = runExecutable(hook, ['--vmi', KUBEVIRT_VMI, '--domain', input], env);
    assert.equal(plain.status, 0, plain.stderr);
    assert.equal(plain.stdout, input);
    const refused = runExecutable(hook, ['--vmi', vmiWith({ 'virt-ebpf.io/rss': 'true' }), '--domain', input], env);
    assert.equal(refused.status, 1);
    assert.equal(refused.stdout, '');
    assert.match(refused.stderr, /^virt-ebpf: .*annotation virt-ebpf\.io\/rss is "true".*\(MANAGER_INPUT\)/);
  } finally {
    d.remove();
  }
});
