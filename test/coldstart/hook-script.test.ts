/**
 * The installed hook script is on the path of every `virsh start` of every domain: libvirt runs
 * it at prepare, start, started, stopped and release. Events the hook does not act on end in sh;
 * prepare/release (the start path) go straight to the C hook shim with the XML unchanged (it
 * leaves at once for a domain without our metadata: test/shims); migrate/restore start Node only
 * for domains with our metadata. The template
 * is rendered by the real install plan for a scratch prefix whose `node` and hook shim are
 * recorders.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { installPlan } from '../../src/install/plan';
import { hostFacts } from '../../src/install/host';
import { enableDomain, wrapperInDir } from '../../src/xml';
import { QEMU, REPO, tempDir } from '../harness';
import { domainXml } from './libvirt';

const plain = domainXml({ name: 'vm', nics: [{ rss: true }] });
const enabled = enableDomain(plain, { wrapperFor: wrapperInDir('/usr/libexec/virt-ebpf') }).xml;

test('the hook script runs the C hook shim for prepare/release, Node only for migrate/restore of enabled domains, with the XML intact', () => {
  const d = tempDir();
  try {
    const record = join(d.path, 'record');
    const fakeNode = join(d.path, 'node');
    const prefix = join(d.path, 'prefix');
    cpSync(join(REPO, 'templates'), join(prefix, 'templates'), { recursive: true });
    mkdirSync(join(prefix, 'dist/shims'), { recursive: true });
    const fakeHook = join(prefix, 'dist/shims/vebpf-hook');
    for (const fake of [fakeNode, fakeHook]) {
      writeFileSync(fake, `#!/bin/sh\nprintf '%s %s\\n' "$0" "$*" > '${record}.argv'\ncat > '${record}.stdin'\nexit 7\n`);
      chmodSync(fake, 0o755);
    }
    const facts = { ...hostFacts({ prefix, emulators: [QEMU] }), node: fakeNode };
    const hook = installPlan(facts).find((a) => a.kind === 'hook')!;
    const script = join(d.path, 'hook');
    writeFileSync(script, hook.content, { mode: 0o755 });

    const call = (xml: string, ...args: string[]) => {
      rmSync(`${record}.argv`, { force: true });
      rmSync(`${record}.stdin`, { force: true });
      const r = spawnSync(script, args, { input: xml, encoding: 'utf8', timeout: 10_000 });
      return { status: r.status, node: existsSync(`${record}.argv`) };
    };

    for (const ev of [['start', 'begin'], ['started', 'begin'], ['stopped', 'end'], ['reconnect', 'begin'], ['attach', 'begin']]) {
      const r = call(enabled, 'vm', ...ev, '-');
      assert.deepEqual(r, { status: 0, node: false }, `${ev.join(' ')}: decided in sh`);
    }
    for (const ev of [['migrate', 'begin'], ['restore', 'begin']]) {
      assert.deepEqual(call(plain, 'vm', ...ev, '-'), { status: 0, node: false }, `${ev.join(' ')} of a domain without our metadata: decided in sh`);
      const r = call(enabled, 'vm', ...ev, '-');
      assert.deepEqual(r, { status: 7, node: true }, `${ev.join(' ')} of an enabled domain: Node runs and its exit status is the hook's`);
      assert.equal(readFileSync(`${record}.argv`, 'utf8'), `${fakeNode} ${join(prefix, 'dist/src/hook/main.js')} vm ${ev.join(' ')} -\n`);
      assert.equal(readFileSync(`${record}.stdin`, 'utf8').trimEnd(), enabled.trimEnd(), 'Node reads the XML libvirt sent');
    }
    // prepare/release go straight to the C hook shim, which reads the XML itself (no `cat`).
    for (const ev of [['prepare', 'begin'], ['release', 'end']]) {
      for (const xml of [plain, enabled]) {
        assert.deepEqual(call(xml, 'vm', ...ev, '-'), { status: 7, node: true }, `${ev.join(' ')}: the hook shim runs`);
        assert.equal(readFileSync(`${record}.argv`, 'utf8'), `${fakeHook} vm ${ev.join(' ')} -\n`);
        assert.equal(readFileSync(`${record}.stdin`, 'utf8'), xml, 'it reads the XML exactly as libvirt sent it');
      }
    }
  } finally {
    d.remove();
  }
});
