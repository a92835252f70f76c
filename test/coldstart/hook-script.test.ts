/**
 * The installed hook is on the path of every `virsh start` of every domain: libvirt runs it at
 * prepare, start, started, stopped and release. It is a text file whose `#!` line names the C
 * hook shim (no shell): events the hook does not act on end there at once; prepare/release go to
 * the broker (here: down, so the domain's policy decides, test/shims); migrate/restore start Node
 * only for domains with our metadata, with the XML exactly as libvirt sent it. The hook file is
 * rendered by the real install plan for a scratch prefix holding the real shim, with a recorder
 * as `node`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { installPlan } from '../../src/install/plan';
import { hostFacts, SHIM_FILES } from '../../src/install/host';
import { enableDomain, wrapperInDir, XML_NAMESPACE } from '../../src/xml';
import { QEMU, REPO, tempDir } from '../harness';
import { domainXml } from './libvirt';

const plain = domainXml({ name: 'vm', nics: [{ rss: true }] });
const enabled = enableDomain(plain, { wrapperFor: wrapperInDir('/usr/libexec/virt-ebpf') }).xml;

test('the hook file runs the C hook shim without a shell: it ends at once for other events, Node runs only for migrate/restore of enabled domains, with the XML intact', () => {
  const d = tempDir();
  try {
    const record = join(d.path, 'record');
    const fakeNode = join(d.path, 'node');
    const prefix = join(d.path, 'prefix');
    for (const part of ['templates', 'hooks']) cpSync(join(REPO, part), join(prefix, part), { recursive: true });
    mkdirSync(join(prefix, 'dist/shims'), { recursive: true });
    for (const f of Object.values(SHIM_FILES)) copyFileSync(join(REPO, f), join(prefix, f));
    writeFileSync(fakeNode, `#!/bin/sh\nprintf '%s %s\\n' "$0" "$*" > '${record}.argv'\ncat > '${record}.stdin'\nexit 7\n`);
    chmodSync(fakeNode, 0o755);
    const facts = { ...hostFacts({ prefix, emulators: [QEMU] }), node: fakeNode };
    const hook = installPlan(facts).find((a) => a.kind === 'hook')!;
    assert.equal(hook.content.split('\n')[0], `#!${join(prefix, SHIM_FILES.hook)}`, 'the kernel runs the shim: no shell');
    const script = join(d.path, 'hook');
    writeFileSync(script, hook.content, { mode: 0o755 });
    const env = { PATH: '/usr/bin:/bin', VIRT_EBPF_BROKER_SOCKET: join(d.path, 'no-broker.sock'), VIRT_EBPF_DOMAIN_STATE_DIR: join(d.path, 'domains') };

    const call = (xml: string, ...args: string[]) => {
      rmSync(`${record}.argv`, { force: true });
      rmSync(`${record}.stdin`, { force: true });
      const r = spawnSync(script, args, { input: xml, encoding: 'utf8', timeout: 10_000, env });
      return { status: r.status, node: existsSync(`${record}.argv`), stderr: r.stderr };
    };

    for (const ev of [['start', 'begin'], ['started', 'begin'], ['stopped', 'end'], ['reconnect', 'begin'], ['attach', 'begin'], ['prepare', 'end'], ['release', 'begin']]) {
      assert.deepEqual(call(enabled, 'vm', ...ev, '-'), { status: 0, node: false, stderr: '' }, `${ev.join(' ')}: nothing to do`);
    }
    for (const ev of [['migrate', 'begin'], ['restore', 'begin']]) {
      assert.deepEqual(call(plain, 'vm', ...ev, '-'), { status: 0, node: false, stderr: '' }, `${ev.join(' ')} of a domain without our metadata: nothing to do`);
      const r = call(enabled, 'vm', ...ev, '-');
      assert.deepEqual(r, { status: 7, node: true, stderr: '' }, `${ev.join(' ')} of an enabled domain: Node runs and its exit status is the hook's`);
      assert.equal(readFileSync(`${record}.argv`, 'utf8'), `${fakeNode} ${join(prefix, 'dist/src/hook/main.js')} vm ${ev.join(' ')} -\n`);
      assert.equal(readFileSync(`${record}.stdin`, 'utf8'), enabled, 'Node reads the XML exactly as libvirt sent it');
    }
    // Node gone (a half-removed install): migrate/restore go on with the XML unchanged, saying why.
    rmSync(fakeNode);
    for (const ev of [['migrate', 'begin'], ['restore', 'begin']]) {
      const r = spawnSync(script, ['vm', ...ev, '-'], { input: enabled, encoding: 'utf8', timeout: 10_000, env });
      assert.equal(r.status, 0, `${ev.join(' ')} without Node: a broken hook does not stop it`);
      assert.equal(r.stdout, '', 'no replacement XML: libvirt keeps its own');
      assert.match(r.stderr, /^virt-ebpf: cannot run .*: No such file or directory; the domain XML goes on unchanged/);
    }
    // prepare/release: the shim itself (broker down: a plain domain is done, ours follows its policy).
    for (const ev of [['prepare', 'begin'], ['release', 'end']]) {
      assert.deepEqual(call(plain, 'vm', ...ev, '-'), { status: 0, node: false, stderr: '' }, `${ev.join(' ')} of a domain without our metadata`);
    }
    // Only a host-wide opt-out of ours (no config): the domain never asked for eBPF, never refused.
    const optOut = plain.replace('<devices>', `<metadata><virt-ebpf:host-wide xmlns:virt-ebpf="${XML_NAMESPACE}" mode="off"/></metadata>\n  <devices>`);
    assert.equal(call(optOut, 'vm', 'prepare', 'begin', '-').status, 0, 'an opted-out domain starts with the broker down');
    const prepare = call(enabled, 'vm', 'prepare', 'begin', '-');
    assert.equal(prepare.status, 1, 'strict, broker down: the start is refused');
    assert.match(prepare.stderr, /^virt-ebpf: cannot reach the virt-ebpf broker at .*\n$/);
    assert.equal(prepare.node, false);
  } finally {
    d.remove();
  }
});
